"""Models from files: a :class:`~XrayWorldModel.models.WorldModel` built from a model file, a
training checkpoint or a registered name, and a training checkpoint exported as a model file.

The file format itself (card, digest, tensors) is :mod:`.model_file`; which file a model name
means is :mod:`.registry`; this module joins them to the model and training code.
"""
from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Tuple

from ..config import TrainConfig
from ..errors import InputError
from ..models import WorldModel
from ..train.checkpoint import load_checkpoint
from ..train.evaluate import load_world_model as load_checkpoint_model
from ..version import __version__
from .model_file import ModelFileError, PathLike, is_model_file, load_model_file, save_model_file
from .registry import resolve_model

if TYPE_CHECKING:
    import torch


def build_model(tensors: Mapping[str, "torch.Tensor"], card: Mapping[str, Any],
                where=None) -> WorldModel:
    """A WorldModel built from ``card["config"]`` with the ``model.*`` tensors loaded;
    ``where`` (a path) names the source in errors."""
    if not isinstance(card.get("config"), Mapping):
        raise ModelFileError("the model card has no training config", where)
    try:
        cfg = TrainConfig.from_dict(card["config"])
    except InputError as exc:
        raise ModelFileError(f"the model card's config is invalid: {exc}", where) from None
    model = WorldModel(cfg.model)
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    except RuntimeError as exc:
        raise ModelFileError(f"weights do not fit the model config in the card: "
                             f"{str(exc).splitlines()[0]}", where) from None
    return model


def load_world_model(spec=None, device="cpu") -> Tuple[WorldModel, Dict[str, Any]]:
    """(WorldModel in eval mode, card) from a model file, a training checkpoint (weights
    file, card or run folder) or a model name known to the registry (None: the default)."""
    path = resolve_model(spec)
    if path.is_file() and path.suffix == ".safetensors" and is_model_file(path):
        tensors, card = load_model_file(path)
        return build_model(tensors, card, path).to(device).eval(), card
    model, _, card = load_checkpoint_model(path, device)
    return model, card


def export_checkpoint(checkpoint_spec: PathLike, out_path: PathLike,
                      card_updates: Optional[Mapping[str, Any]] = None):
    """A training checkpoint (file or run folder) -> a model file with only the ``model.*``
    weights (the EMA target encoder is for training only) and a card for users."""
    tensors, ck, _ = load_checkpoint(checkpoint_spec)
    model = {k: v for k, v in tensors.items() if k.startswith("model.")}
    if not model:
        raise ModelFileError("checkpoint holds no model.* weights", checkpoint_spec)
    card = {"name": ck.get("model", "xray2xray-world-model"),
            "version": f"step{int(ck.get('step', 0))}",
            "config": ck.get("config"), "metrics": ck.get("metrics", {}),
            "training_data": ck.get("training_data"),
            "package_version": ck.get("package_version", __version__),
            "created": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
            "source_checkpoint": {"step": ck.get("step"), "sha256": ck.get("sha256")}}
    card.update(card_updates or {})
    build_model(model, card, checkpoint_spec)   # refuse to export weights that do not load
    return save_model_file(out_path, model, card)

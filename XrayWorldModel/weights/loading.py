"""Models from files: a :class:`~XrayWorldModel.models.WorldModel` built from a model file, a
training checkpoint or a registered name, and a training checkpoint exported as a model file.
:func:`resolve_model_ref` says which of those a user's ``--model`` string names, from the
cards alone, so that a command can refuse a bad one before it loads anything.

The file format itself (card, digest, tensors) is :mod:`.model_file`; which file a model name
means is :mod:`.registry`; this module joins them to the model and training code.
"""
from __future__ import annotations

import datetime
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Tuple

from ..config import TrainConfig
from ..errors import FileNotFoundInputError, InputError, XrayWorldModelError
from ..models import WorldModel
from ..train.checkpoint import load_checkpoint, read_checkpoint_card
from ..train.evaluate import load_world_model as load_checkpoint_model
from ..train.mean_views import CARD_KEY as MEAN_VIEWS_KEY, TENSOR_KEY as MEAN_VIEWS_TENSOR
from ..train.mean_views import MeanViews, STORED_ANGLES
from ..version import __version__
from .model_file import (ModelFileError, PathLike, is_model_file, load_model_file, read_card,
                         save_model_file)
from .registry import DEFAULT_MODEL, SUFFIX, list_models, load_registry, resolve_model

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
                      card_updates: Optional[Mapping[str, Any]] = None,
                      mean_views: bool = True):
    """A training checkpoint (file or run folder) -> a model file with only the ``model.*``
    weights (the EMA target encoder is for training only) and a card for users; with
    ``mean_views``, also the mean training views (:func:`mean_training_views`) so the
    model file keeps the mean-view baseline when its training data stays behind."""
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
    if mean_views:
        try:
            means = mean_training_views(card)
        except XrayWorldModelError as exc:      # training data not on this machine
            warnings.warn(f"{out_path}: exported without the mean training views, so "
                          f"eval-views will have no mean-view baseline for it: {exc}",
                          MeanViewsWarning, stacklevel=2)
        else:
            model.update(means.tensors())
            card[MEAN_VIEWS_KEY] = means.card_entry()
    return save_model_file(out_path, model, card)


class MeanViewsWarning(UserWarning):
    """A model file exported without its mean training views (the data was unreadable)."""


def mean_training_views(card: Mapping[str, Any], source: Optional[str] = None) -> MeanViews:
    """The mean views at :data:`~XrayWorldModel.train.mean_views.STORED_ANGLES` over the
    training data of ``card``'s config (or over ``source``)."""
    cfg = TrainConfig.from_dict(card["config"])
    if source:
        return MeanViews.from_source(source, cfg, STORED_ANGLES)
    return MeanViews.from_training(cfg, STORED_ANGLES)


def add_mean_views(model_file: PathLike, out_path: PathLike,
                   source: Optional[str] = None) -> Path:
    """A copy of ``model_file`` (``out_path`` may be the same file) that carries the mean
    training views, rendered from the training data its card names (or ``source``)."""
    tensors, card = load_model_file(model_file)
    means = mean_training_views(card, source)
    tensors = {k: v for k, v in tensors.items() if k != MEAN_VIEWS_TENSOR}
    card = dict(card, **{MEAN_VIEWS_KEY: means.card_entry()})
    return save_model_file(out_path, {**tensors, **means.tensors()}, card)


# ----------------------------------------------------------------------------- --model strings
@dataclass(frozen=True)
class ModelRef:
    """What a ``--model`` string names: ``kind`` is "model file" or "checkpoint" (``path``
    is the weights file; a run folder resolves to its latest step), with the card."""

    spec: str
    path: Path
    kind: str
    card: Dict[str, Any]

    def identity(self) -> Dict[str, Any]:
        """The fields a result names its model by."""
        card = self.card
        out = {"model": self.spec, "model_kind": self.kind, "model_path": str(self.path),
               "name": card.get("name", card.get("model")), "version": card.get("version")}
        if self.kind == "checkpoint":
            out.update(step=card.get("step"), sha256=card.get("sha256"))
        else:
            out["sha256"] = card.get("content_sha256")
        return out


def _known_names():
    return sorted(set(load_registry()) | {m["name"] for m in list_models()})


def resolve_model_ref(spec: Optional[PathLike] = None) -> ModelRef:
    """The model ``spec`` names, reading cards only: a registry or imported model name (None:
    the default model), a model file, a checkpoint (weights or card file) or a run folder.
    Anything else is one :class:`InputError` line saying what was looked for."""
    text = DEFAULT_MODEL if spec is None else str(spec)
    path = Path(text).expanduser()
    if text in _known_names():
        found = resolve_model(text)
        return ModelRef(text, found, "model file", read_card(found))
    if path.is_dir() or path.suffix == ".json":
        weights, card = read_checkpoint_card(path)
        return ModelRef(text, weights, "checkpoint", card)
    if path.is_file():
        if path.suffix != SUFFIX:
            raise InputError(f"not a model file ({SUFFIX}), a checkpoint or a run folder", path)
        if is_model_file(path):
            return ModelRef(text, path, "model file", read_card(path))
        weights, card = read_checkpoint_card(path)
        return ModelRef(text, weights, "checkpoint", card)
    if isinstance(spec, Path) or os.sep in text or "/" in text or text.endswith(SUFFIX):
        raise FileNotFoundInputError("no such checkpoint, model file or run folder", path)
    raise InputError(f"unknown model {text!r}: no such checkpoint, model file or run folder, "
                     f"and no model of that name (known: {', '.join(_known_names()) or 'none'})")

"""Checkpoints: safetensors weights + a JSON card (config, step, metrics, version, SHA256
of the weights), and the optimiser/scheduler/RNG state in a separate file so ``--resume``
continues exactly. Every file is written atomically (temp file, fsync, rename), so a crash
never leaves a half-written checkpoint under a final name."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..conventions import CHECKPOINT_FORMAT as CARD_FORMAT
from ..errors import UnreadableFileError
from ..fileutil import atomic_path, sha256_file
from ..models import EMAEncoder, WorldModel

_STEP_RE = re.compile(r"^step-(\d+)\.safetensors$")


class CheckpointError(UnreadableFileError):
    """A checkpoint that is missing, truncated, tampered with or from another model."""


def _atomic_write(path: Path, write) -> None:
    with atomic_path(path) as tmp:
        write(str(tmp))


def _paths(directory: Path, name: str) -> Tuple[Path, Path, Path]:
    return (directory / f"{name}.safetensors", directory / f"{name}.json",
            directory / f"{name}.state.pt")


def save_checkpoint(directory, step: int, tensors: Dict[str, torch.Tensor], card: Dict[str, Any],
                    state: Optional[Dict[str, Any]] = None, keep_last: int = 3,
                    best: bool = False) -> Path:
    """Write ``step-NNNNNNN`` (weights, card, state); keep the last ``keep_last``; copy to
    ``best`` when asked. Returns the weights path."""
    directory = Path(directory)
    weights, card_path, state_path = _paths(directory, f"step-{step:07d}")
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    _atomic_write(weights, lambda tmp: save_file(flat, tmp))
    if state is not None:
        _atomic_write(state_path, lambda tmp: torch.save(state, tmp))
    full = dict(card, format=CARD_FORMAT, step=step, weights=weights.name,
                sha256=sha256_file(weights), state=state_path.name if state is not None else None)
    _atomic_write(card_path, lambda tmp: Path(tmp).write_text(json.dumps(full, indent=1)))
    if best:
        for src, dst in zip(_paths(directory, f"step-{step:07d}"), _paths(directory, "best")):
            if src.exists():
                _atomic_write(dst, lambda tmp, s=src: shutil.copyfile(s, tmp))
        best_card = dict(full, weights="best.safetensors",
                         state="best.state.pt" if state is not None else None)
        _atomic_write(directory / "best.json", lambda tmp: Path(tmp).write_text(json.dumps(best_card, indent=1)))
    for old in list_checkpoints(directory)[:-keep_last] if keep_last > 0 else []:
        for p in _paths(directory, old.stem):
            p.unlink(missing_ok=True)
    return weights


def list_checkpoints(directory) -> List[Path]:
    """Step checkpoints (weights files) in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(spec) -> Path:
    """A weights/card file, or a run folder (its latest step checkpoint)."""
    p = Path(spec)
    if p.is_dir():
        found = list_checkpoints(p) or list_checkpoints(p / "checkpoints")
        if not found:
            raise CheckpointError("no checkpoint (step-*.safetensors) in this folder", p)
        return found[-1]
    if p.suffix == ".json":
        p = p.with_suffix(".safetensors")
    if not p.exists():
        raise CheckpointError("no such checkpoint", p)
    return p


def read_checkpoint_card(spec) -> Tuple[Path, Dict[str, Any]]:
    """(weights path, card) of a checkpoint file or run folder, reading only the card (a
    few kB): what a command checks before it loads anything."""
    weights = resolve_checkpoint(spec)
    card_path = weights.with_suffix(".json")
    if not card_path.exists():
        raise CheckpointError(f"the card {card_path.name} is missing beside the weights", weights)
    try:
        card = json.loads(card_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"card is not valid JSON ({exc})", card_path) from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT or "sha256" not in card:
        raise CheckpointError("not an xray2xray checkpoint card", card_path)
    return weights, card


def load_checkpoint(spec, with_state: bool = False):
    """(tensors, card, state or None) after checking the weights against the card's SHA256."""
    weights, card = read_checkpoint_card(spec)
    digest = sha256_file(weights)
    if digest != card["sha256"]:
        raise CheckpointError("weights do not match the SHA256 in their card (truncated or "
                              "modified file)", weights)
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read the weights: {exc}", weights) from None
    state = None
    if with_state:
        state_path = weights.parent / (card.get("state") or "")
        if not card.get("state") or not state_path.is_file():
            raise CheckpointError("the training state file is missing; cannot resume exactly", weights)
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a damaged pickle-free archive
            raise CheckpointError(f"cannot read the training state: {str(exc).splitlines()[0]}",
                                  state_path) from None
    return tensors, card, state


def model_tensors(model: WorldModel, ema: EMAEncoder) -> Dict[str, torch.Tensor]:
    """The checkpoint's tensors: ``model.*`` (the world model) and ``ema.*`` (the EMA
    target encoder)."""
    t = {f"model.{k}": v for k, v in model.state_dict().items()}
    t.update({f"ema.{k}": v for k, v in ema.encoder.state_dict().items()})
    return t


def load_model_tensors(model: WorldModel, ema: Optional[EMAEncoder], tensors, where) -> None:
    """Load :func:`model_tensors` into ``model`` (and ``ema`` unless None);
    :class:`CheckpointError` naming ``where`` when they do not fit the model config."""
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if ema is not None:
            ema.encoder.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    except RuntimeError as exc:
        raise CheckpointError(f"weights do not fit this model config: {str(exc).splitlines()[0]}",
                              where) from None

"""What ``xray2xray train`` settles before any work starts: the run folder can be written and
holds no other run (unless resuming), the data sources exist, and, on ``--resume``, the
config to continue with.

Resuming continues the run as it was recorded in its checkpoint: its step budget and every
other setting are kept, and only the ``section.key=value`` overrides given now change them
(the run's ``config.json`` then says what changed). Values of the ``--config`` file that
differ from the record are not taken silently: a note names them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from ..config import TrainConfig, apply_overrides
from ..errors import InputError
from ..fileutil import check_output_folder
from .checkpoint import list_checkpoints, read_checkpoint_card
from .trainer import config_changes, list_sources


@dataclass
class RunPlan:
    """The config to train with, the checkpoint to resume (None: a new run), what to tell
    the user, and whether the run has nothing left to do."""

    config: TrainConfig
    checkpoint: Optional[str] = None
    notes: List[str] = field(default_factory=list)
    done: bool = False


def _new_run(cfg: TrainConfig, out: Path, found: List[Path], notes: List[str]) -> RunPlan:
    if found:
        raise InputError(f"already holds a training run (checkpoints up to step "
                         f"{int(found[-1].stem.split('-')[1])}); add --resume to continue it, "
                         "or choose another run.out_dir", out)
    list_sources(cfg)
    return RunPlan(cfg, None, notes)


def _as_trained(recorded: dict) -> dict:
    """A recorded config with the settings it trained under made explicit: runs recorded
    before ``data.centre_on`` existed trained on cubes centred on the scan, and a resumed run
    must go on seeing the same data (evaluation, by contrast, centres on the body)."""
    data = dict(recorded.get("data") or {})
    data.setdefault("centre_on", "scan")
    return {**recorded, "data": data}


def prepare_run(cfg: TrainConfig, overrides: Sequence[str], resume: Optional[str]) -> RunPlan:
    """Check the run ``cfg`` describes and settle what ``--resume`` (None, ``"auto"`` or a
    checkpoint/run folder) continues; reads nothing heavier than a checkpoint's card."""
    out = check_output_folder(cfg.run.out_dir, "run.out_dir", "the training run")
    found = list_checkpoints(out / "checkpoints")
    if resume is None:
        return _new_run(cfg, out, found, [])
    if resume == "auto" and not found:
        return _new_run(cfg, out, found, [f"nothing to resume in {out / 'checkpoints'}; "
                                          "starting a new run"])
    weights, card = read_checkpoint_card(found[-1] if resume == "auto" else resume)
    recorded = card.get("config")
    if not isinstance(recorded, dict):
        raise InputError("the checkpoint's card records no config to resume with", weights)
    merged = TrainConfig.from_dict(apply_overrides(_as_trained(recorded), overrides))
    merged.run.out_dir = cfg.run.out_dir     # where the run is now, wherever it was before
    step = int(card.get("step", 0))
    notes = [f"resuming {out} from step {step} of {merged.optim.steps} ({weights.name})"]
    ignored = [c.split(" ", 1)[0] for c in config_changes(merged.to_dict(), cfg.to_dict())]
    if ignored:
        more = f" and {len(ignored) - 6} more" if len(ignored) > 6 else ""
        notes.append("kept the run's recorded " + ", ".join(ignored[:6]) + more + " (the "
                     "--config file differs; give section.key=value to change a value)")
    list_sources(merged)
    if step >= merged.optim.steps:
        notes.append(f"the run has reached optim.steps={merged.optim.steps}; nothing to do "
                     "(give optim.steps=N to train further)")
        return RunPlan(merged, str(weights), notes, done=True)
    return RunPlan(merged, str(weights), notes)

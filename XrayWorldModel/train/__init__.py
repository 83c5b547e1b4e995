"""World-model training: the loop (:mod:`.trainer`), the optimiser shared with the study's
baselines (:mod:`.optim`), novel-view evaluation over any data mode (:mod:`.evaluate`) and
checkpoints (:mod:`.checkpoint`). The training config lives one layer down, in
:mod:`XrayWorldModel.config` (the contract a model card carries)."""
from __future__ import annotations

from ..lazy import lazy_exports

# Lazy, so that the command line (train/cli.py) is built without importing torch.
__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), {
    "checkpoint": ("CheckpointError", "list_checkpoints", "load_checkpoint", "save_checkpoint"),
    ".config": ("TrainConfig", "apply_overrides", "load_config"),   # XrayWorldModel.config
})

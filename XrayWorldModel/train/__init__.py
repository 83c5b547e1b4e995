"""World-model training: configuration, checkpoints, the training loop, view metrics."""
from .checkpoint import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
from ..config import TrainConfig, apply_overrides, load_config

__all__ = ["CheckpointError", "TrainConfig", "apply_overrides", "list_checkpoints",
           "load_checkpoint", "load_config", "save_checkpoint"]

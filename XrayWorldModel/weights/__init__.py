"""Trained models for users: the distributable model file (safetensors + JSON card in its
header, :mod:`.model_file`), the registry of known models and the local download cache
(:mod:`.registry`), and models built from those files or from training checkpoints
(:mod:`.loading`).

Names are imported lazily so that ``import XrayWorldModel.weights`` (and the ``xray2xray``
command line) does not pull in torch until a model is actually read or written.
"""
from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "model_file": ["CARD_KEY", "MODEL_FORMAT", "ModelFileError", "save_model_file",
                   "load_model_file", "read_card", "is_model_file"],
    "loading": ["ModelRef", "add_mean_views", "build_model", "export_checkpoint",
                "load_world_model", "resolve_model_ref"],
    "registry": ["DEFAULT_MODEL", "MODELS_ENV", "REGISTRY_ENV", "cache_dir", "load_registry",
                 "fetch", "import_model", "remove", "list_models", "resolve_model"],
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), _EXPORTS)

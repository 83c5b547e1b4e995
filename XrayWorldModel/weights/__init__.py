"""Trained models for users: the distributable model file (safetensors + JSON card in its
header), the registry of known models, and the local download cache.

Names are imported lazily so that ``import XrayWorldModel.weights`` (and the ``xray2xray``
command line) does not pull in torch until a model is actually read or written.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "model_file": ["CARD_KEY", "MODEL_FORMAT", "ModelFileError", "save_model_file",
                   "load_model_file", "read_card", "export_checkpoint", "load_world_model"],
    "registry": ["DEFAULT_MODEL", "MODELS_ENV", "REGISTRY_ENV", "cache_dir", "load_registry",
                 "fetch", "import_model", "remove", "list_models", "resolve_model"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))

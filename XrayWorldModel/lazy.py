"""Lazy package exports: names resolved from their submodule on first use.

Packages whose submodules pull in torch (weights, probe, infer) export through this so that
importing the package, or building the command line, stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Dict, Iterable, Mapping


def lazy_exports(package: str, namespace: dict, exports: Mapping[str, Iterable[str]]):
    """``(__getattr__, __dir__, __all__)`` for ``package`` whose ``exports`` map submodule
    names to the names they provide; a resolved name is cached in ``namespace``."""
    where: Dict[str, str] = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{where[name]}", package), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__, sorted(where)

"""Inference from one chest radiograph: the DRR-domain mapping (:mod:`.domain`), the views,
volume, scores and consistency check (:mod:`.pipeline`), and the files written (:mod:`.outputs`).

Names are imported lazily so that building the command line does not import torch."""
from __future__ import annotations

import importlib

_WHERE = {"ModelInput": "domain", "domain_reference": "domain", "to_model_input": "domain",
          "InferenceResult": "pipeline", "run_inference": "pipeline",
          "write_outputs": "outputs"}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value

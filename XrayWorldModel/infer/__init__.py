"""Inference from one chest radiograph: the DRR-domain mapping (:mod:`.domain`), the views,
volume, scores and consistency check (:mod:`.pipeline`), the trust verdict that gates the
scores (:mod:`.trust`), and the files written (:mod:`.outputs`).

Names are imported lazily so that building the command line does not import torch."""
from __future__ import annotations

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), {
    "domain": ["ModelInput", "domain_reference", "to_model_input"],
    "pipeline": ["InferenceResult", "isocentric_geometry", "load_inference_model",
                 "run_inference"],
    "outputs": ["input_info", "write_outputs"],
    "trust": ["assess_trust", "output_scores", "verdict"]})

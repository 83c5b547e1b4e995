"""Inference from one chest radiograph: the DRR-domain mapping (:mod:`.domain`), the views,
volume, scores and consistency check (:mod:`.pipeline`), and the files written (:mod:`.outputs`)."""
from .domain import ModelInput, domain_reference, to_model_input
from .pipeline import InferenceResult, run_inference

__all__ = ["ModelInput", "domain_reference", "to_model_input", "InferenceResult", "run_inference",
           "write_outputs"]


def __getattr__(name):
    if name == "write_outputs":
        from .outputs import write_outputs
        return write_outputs
    raise AttributeError(name)

"""Tomographic reconstruction in the package geometry: cone-beam FDK plus optional SIRT
refinement through the differentiable renderer (:mod:`.reconstruct`), and the ``recon``
command (:mod:`.cli`).

Names are imported lazily, so that building the command line does not import torch."""
from __future__ import annotations

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), {
    "reconstruct": ("FILTERS", "default_grid", "fdk", "mu_to_hu", "ramp_filter", "refine",
                    "support_extent", "support_grid"),
})

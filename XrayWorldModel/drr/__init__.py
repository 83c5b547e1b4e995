"""DRR engine: exact (Siddon) and fast (Joseph) line-integral renderers (:mod:`.render`), and
the resumable, sharded batch job behind ``xray2xray drr`` (:mod:`.batch`, :mod:`.cli`).

Names are imported lazily, so that building the command line does not import torch."""
from __future__ import annotations

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), {
    "render": ("DEFAULT_MU_WATER", "METHODS", "DRRRenderer", "hu_to_mu", "project", "render_drr",
               "resolve_device"),
})

"""DRR engine: exact (Siddon) and fast (Joseph) line-integral renderers."""
from .render import DEFAULT_MU_WATER, METHODS, DRRRenderer, hu_to_mu, project, render_drr, resolve_device

__all__ = ["DEFAULT_MU_WATER", "METHODS", "DRRRenderer", "resolve_device", "hu_to_mu", "project", "render_drr"]

"""Synthetic phantoms: exact ellipsoid phantoms (the renderer's oracle), procedural chests (the
default ``chest`` and the realistic variant ``chest2``), and a labelled synthetic cohort
(findings, calcium, a known outcome) built on them.

Names are imported lazily: the generators import scipy, and building the command line (which
every ``xray2xray`` command does) needs only :mod:`.names`."""
from __future__ import annotations

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), {
    "chest": ("CHEST_LABELS", "chest_parameters", "procedural_chest"),
    "cohort": ("CSV_COLUMNS", "CohortConfig", "cohort_case", "sample_case", "sample_case_labels",
               "write_cohort"),
    "ellipsoid": ("Ellipsoid", "EllipsoidPhantom", "default_ellipsoid_phantom", "rotation_matrix"),
    "findings": ("MASK_BITS",),
    "names": ("CHEST_KINDS", "FINDINGS", "PHANTOM_KINDS"),
    "realistic": ("REALISTIC_LABELS", "realistic_chest"),
    "risk": ("CalciumModel", "RiskModel"),
    "variants": ("chest_volume",),
})

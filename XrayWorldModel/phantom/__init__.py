"""Synthetic phantoms: exact ellipsoid phantoms (the renderer's oracle), procedural chests (the
default ``chest`` and the realistic variant ``chest2``), and a labelled synthetic cohort
(findings, calcium, a known outcome) built on them."""
from .chest import CHEST_LABELS, chest_parameters, procedural_chest
from .cohort import (CSV_COLUMNS, CohortConfig, cohort_case, sample_case, sample_case_labels,
                     write_cohort)
from .ellipsoid import Ellipsoid, EllipsoidPhantom, default_ellipsoid_phantom, rotation_matrix
from .findings import FINDINGS, MASK_BITS
from .realistic import REALISTIC_LABELS, realistic_chest
from .risk import CalciumModel, RiskModel
from .variants import CHEST_KINDS, chest_volume

__all__ = ["Ellipsoid", "EllipsoidPhantom", "default_ellipsoid_phantom", "rotation_matrix",
           "procedural_chest", "chest_parameters", "CHEST_LABELS", "FINDINGS", "MASK_BITS",
           "CohortConfig", "CalciumModel", "RiskModel", "cohort_case", "sample_case",
           "sample_case_labels", "write_cohort", "CSV_COLUMNS", "realistic_chest",
           "REALISTIC_LABELS", "CHEST_KINDS", "chest_volume"]

"""Synthetic phantoms: exact ellipsoid phantoms (the renderer's oracle), procedural chests, and
a labelled synthetic cohort (findings, calcium, a known outcome) built on them."""
from .chest import CHEST_LABELS, chest_parameters, procedural_chest
from .cohort import (CSV_COLUMNS, CohortConfig, cohort_case, sample_case, sample_case_labels,
                     write_cohort)
from .ellipsoid import Ellipsoid, EllipsoidPhantom, default_ellipsoid_phantom, rotation_matrix
from .findings import FINDINGS, MASK_BITS
from .risk import CalciumModel, RiskModel

__all__ = ["Ellipsoid", "EllipsoidPhantom", "default_ellipsoid_phantom", "rotation_matrix",
           "procedural_chest", "chest_parameters", "CHEST_LABELS", "FINDINGS", "MASK_BITS",
           "CohortConfig", "CalciumModel", "RiskModel", "cohort_case", "sample_case",
           "sample_case_labels", "write_cohort", "CSV_COLUMNS"]

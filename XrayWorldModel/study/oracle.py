"""The oracle: the same probes on the true 3D quantities the cohort was drawn from, read
from the labels CSV: coronary and aortic calcium volumes, the volume of each finding (mL,
measured on the voxels) and the heart scale. These are what the risk model and the findings
are made of, so the oracle bounds what any image-based method can reach on this cohort."""
from __future__ import annotations

import numpy as np

from ..probe import PATHOLOGIES

#: Label columns the oracle sees, and whether each is a volume (log1p-transformed).
ORACLE_COLUMNS = (("coronary_calcium_mm3", True), ("aortic_calcium_mm3", True),
                  *((f"{f}_ml", True) for f in PATHOLOGIES), ("heart_scale", False))


def oracle_features(cohort, rows=None) -> np.ndarray:
    """Features [N, F] of the cases ``rows`` (all when None): ``log1p`` of each volume and
    the heart scale, in :data:`ORACLE_COLUMNS` order."""
    cols = []
    for name, is_volume in ORACLE_COLUMNS:
        v = np.nan_to_num(cohort.column(name, rows), nan=0.0)
        cols.append(np.log1p(np.maximum(v, 0.0)) if is_volume else v)
    return np.stack(cols, axis=1).astype(np.float64)


__all__ = ["ORACLE_COLUMNS", "oracle_features"]

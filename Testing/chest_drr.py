"""The frontal DRR the radiograph tests feed the input path (one definition for all of them)."""
from __future__ import annotations

import numpy as np

from XrayWorldModel.data import ViewSampling
from XrayWorldModel.drr import DRRRenderer
from XrayWorldModel.geometry import ProjectionGeometry

#: The demo model's detector: SDD 1800, SOD 1500.
SAMPLING = ViewSampling()


def frontal_drr(volume, pitch: float, width_mm: float, moved_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    """The frontal DRR of ``volume`` on a square detector, the beam's axis ``moved_mm`` (LPS)
    from its centre."""
    n = int(round(width_mm / pitch))
    centre = np.asarray(volume.center, dtype=np.float64) + np.asarray(moved_mm, dtype=np.float64)
    g = ProjectionGeometry(angles=(0.0,), detector_shape=(n, n), pixel_spacing=(pitch, pitch),
                           sdd=SAMPLING.sdd, sod=SAMPLING.sod, isocenter=tuple(centre))
    return np.asarray(DRRRenderer(volume, "fast", "cpu", SAMPLING.mu_water).render(g)[0])

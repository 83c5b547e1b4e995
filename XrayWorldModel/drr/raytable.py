"""Rays of a projection geometry in a volume's continuous voxel-index space, as a few
vectors per angle (:class:`RayTable`); numpy only, so the PyTorch renderer and the
command line can use it without importing numba (the numba kernels that build rays from it
live in :mod:`.rays`).

Every renderer works in index space (voxel centres at integer coordinates), so oblique or
sheared affines need no special case. A ray runs from ``start`` to the pixel centre
``P``; ``p(t) = start + t (P - start)``, ``t`` in [0, 1], and ``dt`` is ``dt * |P - start|``
mm long (the length is taken in LPS, so anisotropic voxels are handled).

Instead of materialising [A, H, W, 3] arrays, each angle is described by a few vectors
(:class:`RayTable`) from which a kernel builds any ray on the fly:
``P = det0 + j * col + i * row`` and ``start = src + beam * P``
(cone beam: ``beam = 0`` and ``src`` the source; parallel: ``beam = 1`` and ``src`` the
offset back along the beam).
"""
from __future__ import annotations

import numpy as np

# rows of RayTable.index / RayTable.lps
SRC, DET0, COL, ROW = 0, 1, 2, 3


class RayTable:
    """Per-angle ray generators in index space (``index``) and LPS (``lps``), each [A, 4, 3]."""

    def __init__(self, volume_affine, geometry, angle_indices=None):
        g = geometry
        if angle_indices is not None:
            from dataclasses import replace
            g = replace(g, angles=tuple(g.angles[i] for i in angle_indices))
        e, u, v = g.frames()
        H, W = g.detector_shape
        dv, du = g.pixel_spacing
        det0 = g.detector_centers() - (W - 1) / 2 * du * u - (H - 1) / 2 * dv * v
        if g.beam == "cone":
            src, beam = g.source_positions(), 0.0
        else:
            src, beam = g.sdd * e, 1.0
        lps = np.stack([src, det0, du * u, dv * v], axis=1)          # [A, 4, 3]
        inv = np.linalg.inv(np.asarray(volume_affine, dtype=np.float64))
        index = lps @ inv[:3, :3].T
        index[:, :2] += inv[:3, 3]                                   # points, not vectors
        if beam:
            index[:, SRC] -= inv[:3, 3]                              # parallel offset is a vector
        self.index = np.ascontiguousarray(index)
        self.lps = np.ascontiguousarray(lps)
        self.beam = beam
        self.shape = (g.n_angles, H, W)

    def subset(self, lo: int, hi: int) -> "RayTable":
        """The table restricted to angles ``lo:hi``."""
        sub = RayTable.__new__(RayTable)
        sub.index, sub.lps, sub.beam = self.index[lo:hi], self.lps[lo:hi], self.beam
        sub.shape = (hi - lo,) + tuple(self.shape[1:])
        return sub

    def dense(self):
        """Materialised rays, flattened in (angle, row, column) order: start [N,3],
        delta [N,3] in index space and length [N] in mm (for the PyTorch renderer)."""
        A, H, W = self.shape
        jj, ii = np.meshgrid(np.arange(W), np.arange(H))
        out = []
        for t in (self.index, self.lps):
            p = (t[:, None, None, DET0] + jj[None, :, :, None] * t[:, None, None, COL]
                 + ii[None, :, :, None] * t[:, None, None, ROW])
            s = t[:, None, None, SRC] + self.beam * p
            out.append((s.reshape(-1, 3), (p - s).reshape(-1, 3)))
        (s_idx, d_idx), (_, d_lps) = out
        return s_idx, d_idx, np.linalg.norm(d_lps, axis=1)


def columns_share_paths(table: RayTable, tol: float = 1e-9) -> bool:
    """True when every angle's detector rows step purely along index axis 2 (axial volume,
    no tilt): the rays of one detector column then share their path in the (0, 1) plane,
    the case the column kernels (:func:`.joseph.joseph_project_columns`,
    :func:`.joseph_torch.joseph_project_columns_torch`) need."""
    row = table.index[:, ROW, :]
    return bool(np.all(np.abs(row[:, :2]) <= tol * (1.0 + np.abs(row[:, 2:3]))))

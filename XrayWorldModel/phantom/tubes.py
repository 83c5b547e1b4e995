"""Tubes with partial volume, and random space-filling branching trees, for the realistic chest.

A tube is a capsule around a segment whose radius tapers linearly. It is painted as a voxel
occupancy (0..1) with a one-voxel ramp at its surface, so a tube thinner than a voxel still
carries its true cross-section area: what a projection sums is the tube's mass, not the voxel
grid's staircase. Occupancies are max-accumulated into a float array and blended into the HU
once, so joints between segments are not counted twice.
"""
from __future__ import annotations

from typing import List, NamedTuple, Sequence, Tuple

import numpy as np


class Grid(NamedTuple):
    """The chest grid: broadcastable LPS coordinates (mm), origin and spacing."""

    x: np.ndarray          # [nx, 1, 1]
    y: np.ndarray          # [1, ny, 1]
    z: np.ndarray          # [1, 1, nz]
    origin: np.ndarray     # (3,)
    spacing: np.ndarray    # (3,)
    shape: Tuple[int, int, int]


class Segment(NamedTuple):
    """One tube: from ``p0`` (radius ``r0``) to ``p1`` (radius ``r1``), its branching order."""

    p0: np.ndarray
    p1: np.ndarray
    r0: float
    r1: float
    generation: int


def _box(grid: Grid, lo_mm, hi_mm):
    lo = np.floor((np.asarray(lo_mm) - grid.origin) / grid.spacing).astype(int)
    hi = np.ceil((np.asarray(hi_mm) - grid.origin) / grid.spacing).astype(int) + 1
    lo, hi = np.clip(lo, 0, grid.shape), np.clip(hi, 0, grid.shape)
    if np.any(hi <= lo):
        return None
    return tuple(slice(a, b) for a, b in zip(lo, hi))


def add_tube(occ: np.ndarray, grid: Grid, p0, p1, r0: float, r1: float) -> None:
    """Max-accumulate the occupancy of the tapered capsule ``p0 -> p1`` into ``occ``.

    Below half a voxel the tube is drawn half a voxel wide with its occupancy scaled by the
    area ratio, so its summed occupancy stays about ``pi r^2`` per unit length."""
    p0, p1 = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
    h = float(np.mean(grid.spacing))
    reach = max(r0, r1, 0.5 * h) + h
    box = _box(grid, np.minimum(p0, p1) - reach, np.maximum(p0, p1) + reach)
    if box is None:
        return
    x, y, z = grid.x[box[0]], grid.y[:, box[1]], grid.z[:, :, box[2]]
    d = p1 - p0
    rel_x, rel_y, rel_z = x - p0[0], y - p0[1], z - p0[2]
    t = np.clip((rel_x * d[0] + rel_y * d[1] + rel_z * d[2]) / max(float(d @ d), 1e-9), 0.0, 1.0)
    dist = np.sqrt((rel_x - t * d[0]) ** 2 + (rel_y - t * d[1]) ** 2 + (rel_z - t * d[2]) ** 2)
    r = r0 + t * (r1 - r0)
    r_draw = np.maximum(r, 0.5 * h)
    o = np.clip((r_draw - dist) / h + 0.5, 0.0, 1.0) * (r / r_draw) ** 2
    region = occ[box]
    np.maximum(region, o.astype(occ.dtype), out=region)


def add_polyline(occ: np.ndarray, grid: Grid, points: Sequence, radii: Sequence[float]) -> None:
    """Tubes through consecutive ``points`` with the given radius at each point."""
    for a, b, ra, rb in zip(points[:-1], points[1:], radii[:-1], radii[1:]):
        add_tube(occ, grid, a, b, ra, rb)


def blend(hu: np.ndarray, occ: np.ndarray, value: float, where=None) -> np.ndarray:
    """Mix ``value`` into ``hu`` by occupancy (in place, only where ``where``); returns the
    mask of the voxels it changed."""
    touched = occ > 0.0 if where is None else (occ > 0.0) & where
    o = occ[touched]
    hu[touched] = (hu[touched] + o * (np.float32(value) - hu[touched])).astype(np.float32)
    return touched


def space_filling_tree(rng: np.random.Generator, root, points: np.ndarray, radius: float,
                       generations: int, reach: float = 0.55,
                       taper: float = 0.79) -> List[Segment]:
    """A random branching tree from ``root`` that fills the cloud ``points`` [n, 3] (mm).

    Each branch heads for the centroid of the points it serves, stops ``reach`` of the way
    there and splits them in two across their longest axis (at a random quantile, so the
    branching is asymmetric, as in real airways and vessels); a branch's children are
    ``taper`` times its radius (Murray's law gives 0.79 for a symmetric split). After
    ``generations`` splits, or when few points are left, a terminal branch runs on to its
    centroid and thins to half its radius.
    """
    segments: List[Segment] = []
    stack = [(np.asarray(root, dtype=np.float64), np.asarray(points, dtype=np.float64),
              float(radius), 0)]
    while stack:
        start, pts, r, gen = stack.pop()
        centre = pts.mean(axis=0)
        leaf = gen >= generations or len(pts) < 6
        end = start + (1.0 if leaf else reach * rng.uniform(0.8, 1.2)) * (centre - start)
        r_end = 0.5 * r if leaf else 0.92 * r
        segments.append(Segment(start, end, r, r_end, gen))
        if leaf:
            continue
        spread = pts - centre
        axis = np.linalg.eigh(spread.T @ spread)[1][:, -1]
        axis = axis * np.sign(axis[np.argmax(np.abs(axis))])    # one sign on every LAPACK
        axis = axis + 0.25 * rng.standard_normal(3)
        proj = spread @ axis
        cut = np.quantile(proj, rng.uniform(0.35, 0.65))
        for part in (pts[proj <= cut], pts[proj > cut]):
            if len(part):
                stack.append((end, part, taper * r, gen + 1))
    return segments


__all__ = ["Grid", "Segment", "add_tube", "add_polyline", "blend", "space_filling_tree"]

"""Exact line integrals through a piecewise-constant voxel volume (Siddon / Jacobs).

The reference renderer: every ray is traversed voxel boundary by voxel boundary and each
voxel contributes its value times the exact intersection length, so the result is the
true line integral of the voxelised volume (up to float64 rounding).
"""
from __future__ import annotations

import numba
import numpy as np

from .rays import ray_at


@numba.njit(cache=True, nogil=True, inline="always")
def _axis_start(p, d, a, n):
    """Voxel index (clamped), step, parameter of the next boundary and its increment along
    one axis, for the ray ``p + t d`` entering at parameter ``a``."""
    i = int(np.floor(p + a * d + 0.5))
    i = min(max(i, 0), n - 1)
    if d > 1e-12:
        return i, 1, (i + 0.5 - p) / d, 1.0 / d
    if d < -1e-12:
        return i, -1, (i - 0.5 - p) / d, -1.0 / d
    return i, 0, np.inf, np.inf


@numba.njit(cache=True, nogil=True)
def _siddon_ray(vol, p0, d, length):
    n0, n1, n2 = vol.shape
    shape = (n0, n1, n2)
    amin = 0.0
    amax = 1.0
    for ax in range(3):
        if abs(d[ax]) > 1e-12:
            a1 = (-0.5 - p0[ax]) / d[ax]
            a2 = (shape[ax] - 0.5 - p0[ax]) / d[ax]
            lo = min(a1, a2)
            hi = max(a1, a2)
            if lo > amin:
                amin = lo
            if hi < amax:
                amax = hi
        elif p0[ax] < -0.5 or p0[ax] > shape[ax] - 0.5:
            return 0.0
    if amin >= amax:
        return 0.0
    # voxel containing the midpoint of the first (small) stretch inside the box
    amid = amin + min(1e-9, 0.5 * (amax - amin))
    i0, s0, t0, u0 = _axis_start(p0[0], d[0], amid, n0)
    i1, s1, t1, u1 = _axis_start(p0[1], d[1], amid, n1)
    i2, s2, t2, u2 = _axis_start(p0[2], d[2], amid, n2)
    acc = 0.0
    a = amin
    while a < amax:
        v = vol[i0, i1, i2]
        if t0 <= t1 and t0 <= t2:           # the x boundary comes first
            an = min(t0, amax)
            if an > a:
                acc += v * (an - a)
                a = an
            i0 += s0
            t0 += u0
            if i0 < 0 or i0 >= n0:
                break
        elif t1 <= t2:
            an = min(t1, amax)
            if an > a:
                acc += v * (an - a)
                a = an
            i1 += s1
            t1 += u1
            if i1 < 0 or i1 >= n1:
                break
        else:
            an = min(t2, amax)
            if an > a:
                acc += v * (an - a)
                a = an
            i2 += s2
            t2 += u2
            if i2 < 0 or i2 >= n2:
                break
    return acc * length


@numba.njit(parallel=True, cache=True, nogil=True)
def siddon_project(vol, index, lps, beam, out):
    """``out[a, i, j]`` = exact line integral of the ray of angle ``a``, pixel (i, j)."""
    A, H, W = out.shape
    for aj in numba.prange(A * W):
        a = aj // W
        j = aj % W
        p0 = np.empty(3)
        d = np.empty(3)
        for i in range(H):
            length = ray_at(index, lps, beam, a, i, j, p0, d)
            out[a, i, j] = _siddon_ray(vol, p0, d, length)

"""Exact line integrals through a piecewise-constant voxel volume (Siddon / Jacobs).

The reference renderer: every ray is traversed voxel boundary by voxel boundary and each
voxel contributes its value times the exact intersection length, so the result is the
true line integral of the voxelised volume (up to float64 rounding).
"""
from __future__ import annotations

import numba
import numpy as np

from .rays import ray_at


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
    idx = np.empty(3, np.int64)
    step = np.empty(3, np.int64)
    anext = np.empty(3, np.float64)
    ainc = np.empty(3, np.float64)
    # voxel containing the midpoint of the first (small) stretch inside the box
    amid = amin + min(1e-9, 0.5 * (amax - amin))
    for ax in range(3):
        x = p0[ax] + amid * d[ax]
        i = int(np.floor(x + 0.5))
        if i < 0:
            i = 0
        elif i > shape[ax] - 1:
            i = shape[ax] - 1
        idx[ax] = i
        if d[ax] > 1e-12:
            step[ax] = 1
            anext[ax] = (i + 0.5 - p0[ax]) / d[ax]
            ainc[ax] = 1.0 / d[ax]
        elif d[ax] < -1e-12:
            step[ax] = -1
            anext[ax] = (i - 0.5 - p0[ax]) / d[ax]
            ainc[ax] = -1.0 / d[ax]
        else:
            step[ax] = 0
            anext[ax] = np.inf
            ainc[ax] = np.inf
    acc = 0.0
    a = amin
    while a < amax:
        ax = 0
        if anext[1] < anext[ax]:
            ax = 1
        if anext[2] < anext[ax]:
            ax = 2
        an = anext[ax]
        if an > amax:
            an = amax
        if an > a:
            acc += vol[idx[0], idx[1], idx[2]] * (an - a)
            a = an
        idx[ax] += step[ax]
        anext[ax] += ainc[ax]
        if idx[ax] < 0 or idx[ax] >= shape[ax]:
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

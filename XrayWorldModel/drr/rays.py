"""numba kernels on the rays of a :class:`~.raytable.RayTable`: the ray of one pixel
(:func:`ray_at`, inlined into every renderer) and the index axes the rays run along
(:func:`dominant_axes`). :class:`RayTable` and the row constants are re-exported from
:mod:`.raytable`, which does not import numba.
"""
from __future__ import annotations

import numba
import numpy as np

from .raytable import COL, DET0, ROW, SRC, RayTable  # noqa: F401  (re-exported)


@numba.njit(cache=True, inline="always")
def ray_at(index, lps, beam, a, i, j, p0, d):
    """Fill ``p0``/``d`` (index space) for pixel (row i, column j) of angle ``a``; return the
    ray's length in mm."""
    l2 = 0.0
    for x in range(3):
        p = index[a, 1, x] + j * index[a, 2, x] + i * index[a, 3, x]
        s = index[a, 0, x] + beam * p
        p0[x] = s
        d[x] = p - s
        pl = lps[a, 1, x] + j * lps[a, 2, x] + i * lps[a, 3, x]
        dl = pl - (lps[a, 0, x] + beam * pl)
        l2 += dl * dl
    return np.sqrt(l2)


@numba.njit(cache=True)
def _dominant_counts(index, lps, beam, H, W):
    counts = np.zeros(3, np.int64)
    p0 = np.empty(3)
    d = np.empty(3)
    for a in range(index.shape[0]):
        for i in range(H):
            for j in range(W):
                ray_at(index, lps, beam, a, i, j, p0, d)
                ad0, ad1, ad2 = abs(d[0]), abs(d[1]), abs(d[2])
                if ad0 >= ad1 and ad0 >= ad2:
                    counts[0] += 1
                elif ad1 >= ad2:
                    counts[1] += 1
                else:
                    counts[2] += 1
    return counts


def dominant_axes(table: RayTable) -> set:
    """Index axes along which at least one ray of the table runs mostly."""
    A, H, W = table.shape
    counts = _dominant_counts(table.index, table.lps, table.beam, H, W)
    return {a for a in range(3) if counts[a] > 0}

"""The box of voxels that attenuate at all, so renderers can skip the zeros around it."""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(parallel=True, cache=True)
def _support_extent(src, scale, offset, clip):
    n0, n1, n2 = src.shape
    lo = np.full((n0, 3), 1 << 30, np.int64)
    hi = np.full((n0, 3), -1, np.int64)
    for x in numba.prange(n0):
        for y in range(n1):
            for z in range(n2):
                v = src[x, y, z] * scale + offset
                if (v > 0.0) if clip else (v != 0.0):
                    lo[x, 0] = min(lo[x, 0], x)
                    hi[x, 0] = max(hi[x, 0], x)
                    lo[x, 1] = min(lo[x, 1], y)
                    hi[x, 1] = max(hi[x, 1], y)
                    lo[x, 2] = min(lo[x, 2], z)
                    hi[x, 2] = max(hi[x, 2], z)
    out = np.empty((2, 3), np.int64)
    for k in range(3):
        out[0, k] = lo[:, k].min()
        out[1, k] = hi[:, k].max()
    return out


def support_box(array: np.ndarray, scale=1.0, offset=0.0, clip=False):
    """Index slices of the smallest box holding every voxel of non-zero attenuation
    (``array * scale + offset``, clipped at 0 when ``clip``), or None if there is none.

    Rendering the cropped box with its shifted affine gives identical line integrals,
    since voxels outside contribute nothing. Real CTs gain little (air noise is above
    -1000 HU) but padded volumes and phantoms gain a lot.
    """
    ext = _support_extent(np.asarray(array), np.float32(scale), np.float32(offset), clip)
    if ext[1, 0] < 0:
        return None
    return tuple(slice(int(ext[0, k]), int(ext[1, k]) + 1) for k in range(3))

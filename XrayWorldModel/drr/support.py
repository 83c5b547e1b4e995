"""The box of voxels that attenuate at all, so renderers can skip the zeros around it."""
from __future__ import annotations

import numpy as np

#: Volumes up to this many voxels (about 160^3) get their box from numpy, in a few
#: milliseconds; larger ones from the parallel numba kernel (:func:`.joseph.support_extent`),
#: which only then is imported, so small work (``infer``'s 128^3 volume) never pays numba's
#: start-up.
NUMPY_MAX_VOXELS = 1 << 22


def _numpy_extent(src: np.ndarray, scale, offset, clip: bool) -> np.ndarray:
    """:func:`.joseph.support_extent` in numpy, in the precision the kernel computes in
    (float32 scale and offset, promoted with the volume's dtype), so the box is the same."""
    kind = np.result_type(src.dtype, np.float32).type
    v = src.astype(kind, copy=False) * kind(np.float32(scale)) + kind(np.float32(offset))
    mask = v > 0 if clip else v != 0
    ext = np.array([[1 << 30] * 3, [-1] * 3], np.int64)
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if hit.size:
            ext[:, axis] = hit[0], hit[-1]
    return ext


def support_box(array: np.ndarray, scale=1.0, offset=0.0, clip=False):
    """Index slices of the smallest box holding every voxel of non-zero attenuation
    (``array * scale + offset``, clipped at 0 when ``clip``), or None if there is none.

    Rendering the cropped box with its shifted affine gives identical line integrals,
    since voxels outside contribute nothing. Real CTs gain little (air noise is above
    -1000 HU) but padded volumes and phantoms gain a lot.
    """
    src = np.asarray(array)
    if src.size <= NUMPY_MAX_VOXELS:
        ext = _numpy_extent(src, scale, offset, clip)
    else:
        from .joseph import support_extent
        ext = support_extent(src, np.float32(scale), np.float32(offset), clip)
    if ext[1, 0] < 0:
        return None
    return tuple(slice(int(ext[0, k]), int(ext[1, k]) + 1) for k in range(3))

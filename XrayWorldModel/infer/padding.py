"""Padding is not image: edge rows and columns of a single value are cut off first.

Letterboxing a radiograph to a square, a common step when datasets are prepared for
training, adds bands of one value that no detector recorded. The input path would take them
for image: they widen the working copy the lung fields are measured on (so the scale comes
out a few per cent different), and they count as covered pixels in the consistency score,
where uniform bands are matched almost for free. A recorded image has noise in every row
and column, so only rows and columns holding exactly one value are cut, from each edge
inwards. DRRs given in line-integral units are the model's own geometry and stay whole.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Tuple

import numpy as np

from ..radiograph import LINE_INTEGRAL, Radiograph

#: Below this many rows or columns of content the image is left as it is (the radiograph
#: checks refuse what is blank or tiny with their own message).
MIN_CONTENT_PX = 8


def content_box(image: np.ndarray) -> Tuple[slice, slice]:
    """Rows and columns of ``image`` left once edge rows and columns of one value are cut."""
    img = np.asarray(image)
    varied_rows = np.flatnonzero(np.ptp(img, axis=1) > 0)
    varied_cols = np.flatnonzero(np.ptp(img, axis=0) > 0)
    if varied_rows.size == 0 or varied_cols.size == 0:
        return slice(0, img.shape[0]), slice(0, img.shape[1])
    return (slice(int(varied_rows[0]), int(varied_rows[-1]) + 1),
            slice(int(varied_cols[0]), int(varied_cols[-1]) + 1))


def without_padding(rad: Radiograph, notes: list) -> Radiograph:
    """``rad`` with its padding cut off (and a note saying how much); line integrals as they are."""
    if rad.metadata.get("units") == LINE_INTEGRAL:
        return rad
    rows, cols = content_box(rad.image)
    h, w = rad.image.shape
    kept = (rows.stop - rows.start, cols.stop - cols.start)
    if kept == (h, w) or min(kept) < MIN_CONTENT_PX:
        return rad
    notes.append(f"padding cut off: {rows.start} rows at the top, {h - rows.stop} at the bottom, "
                 f"{cols.start} columns on the left and {w - cols.stop} on the right held a "
                 f"single value: padding, not image")
    return replace(rad, image=rad.image[rows, cols])

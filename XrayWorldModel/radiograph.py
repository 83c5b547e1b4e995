"""A 2D radiograph in display convention: bone bright, patient's right on the left for PA."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .blocks import block_mean
from .errors import NotARadiographError


@dataclass
class Radiograph:
    image: np.ndarray                      # float32 [rows, cols], attenuating = bright
    spacing: Tuple[float, float]           # (row, column) pixel spacing in mm at the detector
    view_position: Optional[str] = None    # DICOM ViewPosition (PA, AP, LL, ...) when known
    metadata: Dict[str, Any] = field(default_factory=dict)
    spacing_is_default: bool = False       # True when the header had no usable spacing

    def __post_init__(self):
        self.image = np.asarray(self.image, dtype=np.float32)
        if self.image.ndim != 2:
            raise ValueError(f"Radiograph image must be 2D, got shape {self.image.shape}")
        self.spacing = (float(self.spacing[0]), float(self.spacing[1]))

    @property
    def shape(self):
        return self.image.shape


#: ``Radiograph.metadata`` keys that change how inference reads the image (its units, detector
#: spacing and magnification: ``infer.domain``), which a copy of a radiograph (a Slicer node)
#: must keep.
INPUT_METADATA_KEYS = ("units", "imager_pixel_spacing", "magnification", "source_to_detector_mm",
                       "spacing_source")

#: ``Radiograph.metadata["units"]`` of an image that is already a DRR (line integrals): its
#: values are the model's, so readers keep them and inference skips the intensity mapping.
LINE_INTEGRAL = "line_integral"

#: A radiograph needs at least this many pixels on its short side to show a chest.
MIN_RADIOGRAPH_SIDE = 32
#: Mean correlation of neighbouring pixels below which an image is noise, not anatomy.
MIN_NEIGHBOUR_CORRELATION = 0.5
#: Mean colour difference between channels (0..1) above which an image is a colour photograph.
MAX_CHROMA = 0.05


def _neighbour_correlation(image: np.ndarray, max_side: int = 256) -> float:
    """Mean of the horizontal and vertical lag-1 correlations, on a block-mean reduction to at
    most ``max_side`` pixels (cheap; anatomy is smooth at that scale, noise is not)."""
    f = max(1, int(np.ceil(max(image.shape) / max_side)))
    f = max(1, min(f, min(image.shape) // 2))     # a very long, thin image keeps 2 lines
    small = block_mean(image, f)
    corr = []
    for a, b in ((small[:, :-1], small[:, 1:]), (small[:-1], small[1:])):
        a, b = a - a.mean(), b - b.mean()
        den = np.sqrt((a * a).sum() * (b * b).sum())
        corr.append(float((a * b).sum() / den) if den > 0 else 0.0)
    return float(np.mean(corr))


def implausibility(rad: Radiograph) -> Optional[str]:
    """Why ``rad`` cannot be a radiograph (too small, blank, colour, noise), or None.

    A cheap screen before any model runs; whether a real radiograph is in the model's
    domain is the trust verdict's job."""
    rows, cols = rad.image.shape
    if min(rows, cols) < MIN_RADIOGRAPH_SIDE:
        return (f"is too small for a radiograph ({cols}x{rows} pixels; at least "
                f"{MIN_RADIOGRAPH_SIDE} on each side)")
    if float(rad.image.max() - rad.image.min()) <= 0:
        return "is blank (one value everywhere), not a radiograph"
    chroma = float(rad.metadata.get("chroma", 0.0))
    if chroma > MAX_CHROMA:
        return f"is a colour image (mean channel difference {chroma:.2f}), not a radiograph"
    correlation = _neighbour_correlation(rad.image)
    if correlation < MIN_NEIGHBOUR_CORRELATION:
        return (f"looks like noise, not a radiograph (neighbouring pixels correlate "
                f"{correlation:.2f}; anatomy gives > {MIN_NEIGHBOUR_CORRELATION})")
    return None


def check_radiograph(rad: Radiograph) -> None:
    """Raise :class:`NotARadiographError`, naming the source file, when :func:`implausibility`
    finds a reason; run before any model is loaded."""
    problem = implausibility(rad)
    if problem:
        raise NotARadiographError(problem, rad.metadata.get("source"))

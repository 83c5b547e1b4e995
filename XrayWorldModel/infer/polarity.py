"""Is the radiograph a negative? Lungs bright and bone dark, and then turned back.

A MONOCHROME1 image saved to PNG or JPEG without its photometric interpretation (some
archives and dataset exports do this), or a DICOM whose photometric interpretation is wrong,
reaches the input path as a negative. The model then meets an image unlike any it trained
on; the lung finder takes bright regions for lungs and the laterality check calls it
mirrored. Two anatomical facts hold for any frontal chest radiograph in display convention,
at any framing the other checks accept, and both reverse in a negative:

* across the mid-thorax, the mediastinum (spine, heart) is brighter than either lung field;
* down the lung fields' columns, the lower image (diaphragm, abdomen) is brighter than the
  lung zone.

Only when both say "negative", each by :data:`NEGATIVE_MARGIN` of the image's robust range,
is the image inverted, with a note. Either alone misleads: a chest standing 15 % of the field
aside puts a lung at the centre (first test -0.37 to -0.64 on held-out phantoms, second still
+0.21 or more: ``python Testing/test_polarity.py`` prints both), and a CT too short to reach
the abdomen (the shared ``lidc_idri_0314``) has air at the bottom of its DRR. Missing a
negative costs no more than before this check; inverting an upright image would.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..radiograph import LINE_INTEGRAL, Radiograph
from .scale import working_copy

#: Each test must say "negative" by this fraction of the image's robust range.
NEGATIVE_MARGIN = 0.1
#: Rows (fractions of the image height) of the mid-thorax and of the lower image.
MID_ROWS = (0.30, 0.60)
LOWER_ROWS = (0.82, 0.95)
#: Columns (fractions of the width) of the mediastinum and of the two lung fields.
CENTRE_COLUMNS = (0.44, 0.56)
LUNG_COLUMNS = ((0.20, 0.38), (0.62, 0.80))


@dataclass(frozen=True)
class PolarityEvidence:
    """The two tests, in fractions of the image's robust range; positive means upright."""

    mediastinum_over_lungs: float    # centre band minus the brighter lung band, mid-thorax
    lower_over_lungs: float          # lower rows minus the mid-thorax, in the lung columns

    @property
    def negative(self) -> bool:
        return max(self.mediastinum_over_lungs, self.lower_over_lungs) <= -NEGATIVE_MARGIN


def _span(n: int, fractions) -> slice:
    return slice(int(fractions[0] * n), max(int(fractions[1] * n), int(fractions[0] * n) + 1))


def polarity_evidence(image: np.ndarray) -> PolarityEvidence:
    """Both tests on a frontal chest image in display convention (any intensity units)."""
    small, _, _ = working_copy(np.asarray(image), None)
    h, w = small.shape
    mid = small[_span(h, MID_ROWS)]
    profile = np.median(mid, axis=0)
    centre = float(np.median(profile[_span(w, CENTRE_COLUMNS)]))
    lungs = [float(np.median(profile[_span(w, c)])) for c in LUNG_COLUMNS]
    lung_columns = np.r_[tuple(_span(w, c) for c in LUNG_COLUMNS)]
    lower = float(np.median(small[_span(h, LOWER_ROWS)][:, lung_columns]))
    return PolarityEvidence(centre - max(lungs),
                            lower - float(np.median(mid[:, lung_columns])))


def upright(rad: Radiograph, notes: list) -> Radiograph:
    """``rad``, inverted (with a note) when it looks like a negative; line integrals as they are."""
    if rad.metadata.get("units") == LINE_INTEGRAL:
        return rad
    evidence = polarity_evidence(rad.image)
    if not evidence.negative:
        return rad
    notes.append(f"the radiograph looks like a negative (lungs brighter than the mediastinum by "
                 f"{-evidence.mediastinum_over_lungs:.2f} and than the lower image by "
                 f"{-evidence.lower_over_lungs:.2f} of its range), as a MONOCHROME1 image "
                 f"saved without its photometric interpretation is: inverted back")
    lo, hi = float(rad.image.min()), float(rad.image.max())
    return replace(rad, image=(lo + hi) - rad.image)

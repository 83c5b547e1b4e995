"""Bringing a real radiograph into the model's DRR domain.

The world model is trained on DRRs: line integrals at a fixed detector pitch, field of view
and orientation (PA, patient's right on the image's left). A real chest radiograph differs
in all of these, so :func:`to_model_input` does three things, in order:

1. **Orientation**: the model takes frontal views. PA is the trained pose; an AP image in
   display convention looks like a PA one apart from magnification, so it is accepted with a
   note; a lateral view is refused. When the model carries a reference frontal view, an image
   that matches the reference better mirrored than as is gets a warning (a flipped export).
2. **Geometry**: the image is resampled from its own pixel spacing at the detector (DICOM
   ImagerPixelSpacing when present, since PixelSpacing may be calibrated at the patient) to
   the model's detector pitch and centred in the model's field of view, padded with air. The
   physical scale is thus kept. The anatomy checks it (:mod:`.scale`: the lung fields' width
   against the training chests'): a note when the header disagrees by over 30 %, and the
   anatomy's estimate instead of a missing spacing or of one that is implausible (2.5x off).
3. **Intensity**: display values are not line integrals (a DRR given as a Radiograph with
   ``metadata["units"] == "line_integral"`` keeps its values). Inside the body (above 5 % of
   the image's range, the rule the training DRRs' statistics used), the radiograph's
   quantiles are mapped onto the quantiles of the training DRRs (histogram matching, stored in
   the model card as ``domain``); below it values ramp linearly to air (0).

What remains of the domain gap: scatter, the detector's own processing (unsharp masking,
look-up tables), breast and soft-tissue shadows absent from the phantoms, and inspiration
and positioning that differ from the training set. The consistency score in
:mod:`.pipeline` is there to show when this gap is too wide.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np
from skimage.transform import resize

from ..blocks import block_mean
from ..config import TrainConfig
from ..conventions import LATERAL_VIEW_POSITIONS
from ..data import ViewSampling
from ..errors import InputError
from ..radiograph import Radiograph
from .scale import (PA_MAGNIFICATION, SpacingEstimate, card_reference, compare_spacing,
                    estimate_spacing)

FRONTAL_POSITIONS = {"PA", "AP", "APS", "APV", ""}
LATERAL_POSITIONS = LATERAL_VIEW_POSITIONS
N_QUANTILES = 101
#: ``Radiograph.metadata["units"]`` of an image that is already a DRR (line integrals),
#: which skips the intensity mapping.
LINE_INTEGRAL = "line_integral"
#: Fraction of the image's range above its air level where the body starts: the rule
#: :func:`domain_reference` applies to the training DRRs (5 % of their maximum).
BODY_FRACTION = 0.05


class FlippedImageWarning(UserWarning):
    """The radiograph matches the model's reference frontal view better when mirrored."""


@dataclass
class ModelInput:
    """A radiograph in the model's DRR units, with what was done to get there."""

    image: np.ndarray            # [H, W] float32, DRR line-integral units
    covered: np.ndarray          # [H, W] bool: pixels that came from the radiograph (not padding)
    scale: float                 # model pixels per radiograph pixel (columns)
    notes: list
    #: what puts the input outside the model's domain (also in ``notes``): the trust
    #: verdict withholds the scores for any of them (:mod:`.trust`)
    problems: list = field(default_factory=list)
    #: the detector spacing used and where it came from: header, anatomy or default (:mod:`.scale`)
    spacing: Optional[Dict] = None

    def to_dict(self) -> Dict:
        out = {"scale": self.scale, "covered_fraction": float(self.covered.mean()),
               "notes": list(self.notes), "problems": list(self.problems)}
        if self.spacing is not None:
            out["spacing"] = dict(self.spacing)
        return out


def domain_reference(frontal_drrs: np.ndarray) -> Dict:
    """What :func:`to_model_input` needs to know of the training domain, from frontal DRRs
    ``[N, H, W]``: quantiles of the body pixels, the body threshold and the mean view.
    Stored in a model's card under ``domain``."""
    d = np.asarray(frontal_drrs, dtype=np.float64)
    if d.ndim != 3 or d.shape[0] < 1:
        raise InputError(f"frontal DRRs must be [N, H, W], got shape {d.shape}")
    threshold = BODY_FRACTION * float(d.max())
    body = d[d > threshold]
    q = np.quantile(body, np.linspace(0.0, 1.0, N_QUANTILES))
    return {"quantiles": [float(v) for v in q], "body_threshold": threshold,
            "mean_frontal": np.round(d.mean(0), 5).tolist(), "n_views": int(d.shape[0])}


def _check_orientation(rad: Radiograph, notes: list) -> None:
    vp = (rad.view_position or "").strip().upper()
    if vp in LATERAL_POSITIONS:
        raise InputError(f"the model takes a frontal (PA or AP) chest radiograph; this one's "
                         f"view position is {vp}")
    if vp.startswith("AP"):
        notes.append("AP view: treated as PA (same display orientation; heart magnified more)")
    elif not vp:
        notes.append("no view position in the header: assumed PA")


def detector_spacing(rad: Radiograph):
    """(row, column) pixel spacing at the detector, the plane the model's pitch is measured
    in: DICOM ImagerPixelSpacing when the header has it (PixelSpacing may be calibrated at
    the patient, smaller by the magnification), else the radiograph's own spacing."""
    imager = rad.metadata.get("imager_pixel_spacing")
    try:
        pair = tuple(float(v) for v in imager) if imager is not None else ()
    except (TypeError, ValueError):
        pair = ()
    if len(pair) == 2 and all(np.isfinite(v) and v > 0 for v in pair):
        return pair
    return rad.spacing


def _resample(rad: Radiograph, sampling: ViewSampling, spacing=None):
    """The radiograph at the model's detector pitch, centred on an image_size canvas;
    ``spacing``: (row, column) mm at the detector (default :func:`detector_spacing`)."""
    n = sampling.image_size
    pitch = sampling.pixel_spacing
    spacing = spacing or detector_spacing(rad)
    rows = max(1, int(round(rad.image.shape[0] * spacing[0] / pitch)))
    cols = max(1, int(round(rad.image.shape[1] * spacing[1] / pitch)))
    img = rad.image
    # most of a large reduction as block means (fast, and itself an anti-aliasing filter),
    # the remaining fraction by an anti-aliased resize
    fr, fc = img.shape[0] // (2 * rows), img.shape[1] // (2 * cols)
    if fr >= 2 or fc >= 2:
        img = block_mean(img, (max(fr, 1), max(fc, 1)))   # whole blocks: no padding at edges
    else:
        img = img.astype(np.float64)
    small = resize(img, (rows, cols), order=1, anti_aliasing=True, preserve_range=True)
    canvas = np.zeros((n, n))
    covered = np.zeros((n, n), dtype=bool)
    # centred crop of the source and centred placement on the canvas
    r0, c0 = max(0, (rows - n) // 2), max(0, (cols - n) // 2)
    src = small[r0:r0 + n, c0:c0 + n]
    R0, C0 = (n - src.shape[0]) // 2, (n - src.shape[1]) // 2
    canvas[R0:R0 + src.shape[0], C0:C0 + src.shape[1]] = src
    covered[R0:R0 + src.shape[0], C0:C0 + src.shape[1]] = True
    return canvas, covered, cols / rad.image.shape[1]


def _body_threshold(vals: np.ndarray) -> float:
    """Where the body starts in a radiograph's covered pixels, by the rule the reference
    used on the training DRRs: ``BODY_FRACTION`` of the range above the air level (robust
    ends: the 0.5th and 99.5th percentiles). Not Otsu: on a chest, Otsu splits the lungs
    from the mediastinum, and the lungs (body, in the reference) would be mapped as air."""
    lo, hi = np.percentile(vals, [0.5, 99.5])
    return float(lo + BODY_FRACTION * (hi - lo))


def _match_intensity(canvas: np.ndarray, covered: np.ndarray, reference: Optional[Dict]) -> np.ndarray:
    vals = canvas[covered]
    if vals.size < 4 or float(vals.max() - vals.min()) <= 0:
        raise InputError("the radiograph is blank after resampling (one value everywhere)")
    if reference is None:   # no domain statistics in the card: a plain range mapping
        q_ref = np.linspace(0.0, 5.0, N_QUANTILES)
        thr_ref = 0.0
    else:
        q_ref = np.asarray(reference["quantiles"], dtype=np.float64)
        thr_ref = float(reference["body_threshold"])
    thr = _body_threshold(vals)
    body = vals[vals > thr]
    if body.size < 2:
        body = vals
    q_src = np.quantile(body, np.linspace(0.0, 1.0, len(q_ref)))
    q_src = np.maximum.accumulate(q_src + np.arange(len(q_src)) * 1e-9)   # strictly rising
    out = np.interp(canvas, q_src, q_ref)
    low = canvas < q_src[0]                              # outside the body: ramp to air
    lo = float(vals.min())
    ramp = (canvas - lo) / max(q_src[0] - lo, 1e-9)
    out[low] = np.clip(ramp[low], 0.0, 1.0) * max(q_ref[0], thr_ref)
    out[~covered] = 0.0
    return out.astype(np.float32)


def _laterality(image: np.ndarray, reference: Optional[Dict], notes: list,
                problems: list) -> None:
    if not reference or "mean_frontal" not in reference:
        return
    ref = np.asarray(reference["mean_frontal"], dtype=np.float64)
    if ref.shape != image.shape:
        return

    def ncc(a, b):
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-12))
    # asymmetric parts only: the heart, the aortic knob, the liver
    asym = lambda x: x - x[:, ::-1]
    as_is, mirrored = ncc(asym(image), asym(ref)), ncc(asym(image[:, ::-1]), asym(ref))
    if mirrored > as_is + 0.2:
        msg = (f"the radiograph looks mirrored (asymmetry correlates {mirrored:.2f} with the "
               f"reference when flipped vs {as_is:.2f} as is): is the patient's right on the "
               f"image's left?")
        notes.append(msg)
        problems.append(msg)
        warnings.warn(msg, FlippedImageWarning, stacklevel=3)


def to_model_input(rad: Radiograph, sampling: ViewSampling,
                   reference: Optional[Dict] = None, check_spacing: bool = True) -> ModelInput:
    """The radiograph as the model's frontal DRR-like input (see the module docstring).
    ``check_spacing=False`` trusts a header spacing without measuring the anatomy: for
    simulated acquisitions, whose spacing is exact by construction (saves ~50 ms each)."""
    if not np.all(np.isfinite(rad.image)):
        raise InputError("the radiograph holds NaN or infinite values")
    notes: list = []
    _check_orientation(rad, notes)
    if check_spacing or rad.spacing_is_default:
        spacing, spacing_record = choose_spacing(rad, sampling, reference, notes)
    else:
        spacing = detector_spacing(rad)
        spacing_record = {"source": "header", "used_mm": [float(v) for v in spacing],
                          "header_mm": [float(v) for v in spacing], "estimate": None}
    canvas, covered, scale = _resample(rad, sampling, spacing)
    if rad.metadata.get("units") == LINE_INTEGRAL:
        # already a DRR (e.g. the demo's phantom): its values are the model's units
        image = np.where(covered, canvas, 0.0).astype(np.float32)
    else:
        image = _match_intensity(canvas, covered, reference)
        if reference is None:
            notes.append("the model card has no domain statistics: plain range mapping used")
    problems: list = []
    _laterality(image, reference, notes, problems)
    return ModelInput(image, covered, scale, notes, problems, spacing_record)


def choose_spacing(rad: Radiograph, sampling: ViewSampling, reference: Optional[Dict],
                   notes: list):
    """((row, column) detector spacing to resample with, a record of the choice): the
    header's, checked against the anatomy (:mod:`.scale`, a note when they disagree by over
    30 %); the anatomy's estimate when the header has no spacing or one that makes the chest
    implausibly sized (over 2.5x off); the default when neither is there."""
    header = detector_spacing(rad)
    drr = rad.metadata.get("units") == LINE_INTEGRAL
    to_domain = None if drr else (lambda img: _match_intensity(img, np.ones(img.shape, bool),
                                                               reference))
    magnification = sampling.sdd / sampling.sod if drr else PA_MAGNIFICATION
    try:
        est = estimate_spacing(rad.image, card_reference(reference), to_domain, magnification)
    except InputError as exc:     # too small or blank to measure; the mapping says if it matters
        est = SpacingEstimate.failed(str(exc), magnification=magnification)
    verdict = None if rad.spacing_is_default else compare_spacing(header[1], est)
    used, source = header, "default" if rad.spacing_is_default else "header"
    if rad.spacing_is_default and est.spacing_mm is None:
        notes.append(f"pixel spacing missing from the header: {header[1]:g} mm assumed "
                     f"({est.describe()})")
    elif rad.spacing_is_default:
        used, source = (est.spacing_mm, est.spacing_mm), "anatomy"
        notes.append(f"pixel spacing missing from the header: estimated from the anatomy "
                     f"instead of the {header[1]:g} mm default, {est.describe()}")
    elif verdict == "implausible":
        used, source = (est.spacing_mm * header[0] / header[1], est.spacing_mm), "anatomy"
        notes.append(f"the header's pixel spacing ({header[1]:g} mm) makes this chest "
                     f"implausibly sized; estimated from the anatomy instead, {est.describe()}")
    elif verdict == "disagrees":
        notes.append(f"the header's pixel spacing ({header[1]:g} mm) differs by "
                     f"{100 * abs(header[1] / est.spacing_mm - 1):.0f} % from the anatomy's "
                     f"estimate ({est.describe()}); the header's is used")
    record = {"source": source, "used_mm": [float(v) for v in used],
              "header_mm": None if rad.spacing_is_default else [float(v) for v in header],
              "estimate": est.to_dict()}
    return used, record


def radiograph_input(rad: Radiograph, card: Dict) -> ModelInput:
    """The input the model of ``card`` gets for ``rad``: :func:`to_model_input` with the
    card's view settings and domain statistics. ``infer`` encodes this, and ``probe`` on a
    radiograph dataset computes its features from it, so heads fitted on radiographs mean
    the same thing at inference."""
    return to_model_input(rad, TrainConfig.from_dict(card["config"]).views, card.get("domain"))

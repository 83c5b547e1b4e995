"""Bringing a real radiograph into the model's DRR domain.

The world model is trained on DRRs: line integrals at a fixed detector pitch, field of view
and orientation (PA, patient's right on the image's left). A real chest radiograph differs
in all of these, so :func:`to_model_input` does three things, in order:

1. **Orientation**: the model takes frontal views. PA is the trained pose; an AP image in
   display convention looks like a PA one apart from magnification, so it is accepted with a
   note; a lateral view is refused. When the model carries a reference frontal view, an image
   that matches the reference better mirrored than as is gets a warning (a flipped export),
   and a negative (lungs bright, bone dark: a MONOCHROME1 image saved without its
   photometric interpretation) is inverted back with a note (:mod:`.polarity`). Before
   anything else, padding (edge rows and columns of one value) is cut off (:mod:`.padding`).
2. **Geometry**: the image is resampled from its own pixel spacing at the detector (DICOM
   ImagerPixelSpacing when present, since PixelSpacing may be calibrated at the patient) to
   the model's detector pitch and placed in the model's field of view, padded with air. The
   two detectors magnify differently: the model's DRRs by ``sdd / sod`` (1.2 for the demo
   models), a PA chest radiograph by about ``PA_MAGNIFICATION`` (1.08; from the header's
   magnification factor or source-to-detector distance when given, :func:`magnification`),
   so a radiograph pixel covers ``spacing / 1.08`` mm of patient and a model pixel ``pitch /
   1.2`` (:func:`model_detector_spacing`); mapping detector spacing straight onto the pitch
   made real chests 10 % smaller than the training chests and cost a PA-geometry DRR 5-11 dB
   at 90 deg (``tools/magnification_check.py``). The physical scale is thus kept. The
   anatomy checks it (:mod:`.scale`: the lung fields' width against the training chests'):
   a note when the header disagrees by over 30 %, and the anatomy's estimate instead of a
   missing spacing or of one that is implausible (2.5x off).
   **Position**: every training chest is centred left-right on its body
   (``data.centre_on``), and its lung fields lie at some height in the field, so the
   radiograph is placed by its chest, not its own centre (:mod:`.scale` finds the lung
   fields): their midline at the field's centre, and their apices no higher than those of
   three quarters of the training chests (the card's ``domain.anatomy``, else the
   phantoms'), each axis moved when it is more than ``CENTRE_TOLERANCE_PX`` off. Never up:
   apices cut off by the image's top edge are found too low. A patient standing aside,
   or a radiograph framed high or low, then meets the model where it was trained. The move
   is recorded (``ModelInput.centring``); the views and volume are of the moved chest.
   Without lung fields the image stays as it is, and a note says so.
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
from dataclasses import dataclass, field, replace
from typing import Dict, Optional, Tuple

import numpy as np
from skimage.transform import resize

from ..blocks import block_mean
from ..config import TrainConfig
from ..conventions import (LATERAL_VIEW_POSITIONS, PLAUSIBLE_MAGNIFICATION, check_stated_geometry,
                           number_within)
from ..data import ViewSampling
from ..errors import InputError
from ..radiograph import LINE_INTEGRAL, Radiograph
from .padding import without_padding
from .polarity import upright
from .scale import (PA_MAGNIFICATION, PA_SOURCE_TO_DETECTOR_MM, SpacingEstimate,
                    card_reference, chest_magnification, compare_spacing, estimate_spacing,
                    lung_top_target)

#: Changes whenever the model input made from the same file changes, so that stores of what
#: the model saw (the probe's cached radiograph features) are not reused across the change.
#: 2: radiographs brought to the model's magnification (before, their chests were 10 % small).
#: 3: padding cut off (:mod:`.padding`); negatives (lungs bright) inverted back (:mod:`.polarity`).
INPUT_PATH_VERSION = 3
FRONTAL_POSITIONS = {"PA", "AP", "APS", "APV", ""}
LATERAL_POSITIONS = LATERAL_VIEW_POSITIONS
N_QUANTILES = 101
#: Fraction of the image's range above its air level where the body starts: the rule
#: :func:`domain_reference` applies to the training DRRs (5 % of their maximum).
BODY_FRACTION = 0.05
#: Largest offset (model pixels) of the chest from where the training chests lie that is
#: left as it is: the midlines of centred chests lie within 0.65 px of the centre
#: (body-centred DRRs of the three shared real CTs, 16 training phantoms,
#: ``Testing/test_scale.py``'s held-out one), and a one-pixel move aside cost the first
#: leave-one-patient-out model 0.07 dB at 90 deg on its held-out patient.
CENTRE_TOLERANCE_PX = 1.0
#: An offset larger than this fraction of the field is more likely a mistaken lung finding
#: than a chest that far off: the image is then left as it is.
MAX_CENTRING_FRACTION = 0.25
#: Fewer of the model's pixels than this from the radiograph: no chest at that spacing.
MIN_COVERED_PIXELS = 4
#: ``Radiograph.metadata["spacing_source"]`` of a spacing its user stated (:func:`stated_geometry`).
USER_STATED = "stated by the user"
#: Source-to-detector distances (mm) taken from a header: (low, high]; magnifications:
#: :data:`~XrayWorldModel.conventions.PLAUSIBLE_MAGNIFICATION`.
PLAUSIBLE_SOURCE_TO_DETECTOR_MM = (700.0, 2500.0)
#: Share of an edge row's (or column's) pixels that must hold its median value for
#: :func:`collimator_bands` to call it a band.
BAND_UNIFORMITY = 0.9


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
    #: how the image was placed in the field (:func:`centring_shift`)
    centring: Optional[Dict] = None
    #: [H, W] bool: bright collimator bands along the image's edges (:func:`collimator_bands`),
    #: uniform and as dense as bone in model units, which no re-projection draws
    bands: Optional[np.ndarray] = None

    @property
    def anatomy(self) -> np.ndarray:
        """The covered pixels that show the patient: ``covered`` less the bands."""
        return self.covered if self.bands is None else self.covered & ~self.bands

    def to_dict(self) -> Dict:
        out = {"scale": self.scale, "covered_fraction": float(self.covered.mean()),
               "notes": list(self.notes), "problems": list(self.problems)}
        if self.spacing is not None:
            out["spacing"] = dict(self.spacing)
        if self.centring is not None:
            out["centring"] = dict(self.centring)
        if self.bands is not None and self.bands.any():
            out["collimator_band_fraction"] = float(self.bands.mean())
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


def magnification(rad: Radiograph, sampling: ViewSampling) -> Tuple[float, str]:
    """(how much the detector magnifies this image's chest, where that figure comes from).
    In order: a DRR in line integrals is the model's own (``sdd / sod``); a stated factor
    (``metadata["magnification"]``: DICOM EstimatedRadiographicMagnificationFactor, which
    ``xray2xray drr --dicom`` writes; a plain 1.0 is taken for a placeholder); the
    source-to-detector distance (``metadata["source_to_detector_mm"]``, with the chest's
    mid-plane ``MIDPLANE_TO_DETECTOR_MM`` in front of the detector); else a PA chest's."""
    if rad.metadata.get("units") == LINE_INTEGRAL:
        return sampling.sdd / sampling.sod, "the model's geometry (line integrals)"
    stated = number_within(rad.metadata.get("magnification"), *PLAUSIBLE_MAGNIFICATION)
    if stated is not None:
        return stated, ("user" if rad.metadata.get("magnification_source") == "user"
                        else "stated in the header")
    sid = number_within(rad.metadata.get("source_to_detector_mm"),
                        *PLAUSIBLE_SOURCE_TO_DETECTOR_MM)
    if sid is not None:
        return chest_magnification(sid), f"source-to-detector distance {sid:g} mm"
    return PA_MAGNIFICATION, f"assumed: a PA chest at {PA_SOURCE_TO_DETECTOR_MM:g} mm"


def stated_geometry(rad: Radiograph, pixel_spacing: Optional[float] = None,
                    magnification_factor: Optional[float] = None) -> Radiograph:
    """``rad`` with what its user knows of its geometry (``infer --pixel-spacing``,
    ``--magnification``) put over what its header says: the spacing (mm at the detector)
    replaces both of the header's, the factor the header's; refused when implausible."""
    check_stated_geometry(pixel_spacing, magnification_factor)
    meta = dict(rad.metadata)
    spacing, default = rad.spacing, rad.spacing_is_default
    if pixel_spacing is not None:
        spacing, default = (float(pixel_spacing),) * 2, False
        meta.update(imager_pixel_spacing=None, spacing_source=USER_STATED)
    if magnification_factor is not None:
        meta.update(magnification=float(magnification_factor), magnification_source="user")
    return replace(rad, spacing=spacing, metadata=meta, spacing_is_default=default)


def model_detector_spacing(spacing, image_magnification: float, sampling: ViewSampling):
    """(row, column) mm that a pixel at ``spacing`` (mm at its own detector, which magnifies
    the chest ``image_magnification``: :func:`magnification`) spans at the model's detector:
    the same stretch of patient, magnified as the model's DRRs are."""
    ratio = (sampling.sdd / sampling.sod) / image_magnification
    return tuple(float(v) * ratio for v in spacing)


def _resample(rad: Radiograph, sampling: ViewSampling, spacing, shift=(0, 0)):
    """The radiograph at the model's detector pitch, centred on an image_size canvas, then
    moved ``shift`` = (rows up, columns left) model pixels (negative: down, right);
    ``spacing``: (row, column) mm of a radiograph pixel at the model's detector
    (:func:`model_detector_spacing`)."""
    n = sampling.image_size
    pitch = sampling.pixel_spacing
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
    canvas, covered = _place(small, n, shift)
    return canvas, covered, cols / rad.image.shape[1]


def _place(small: np.ndarray, n: int, shift=(0, 0)):
    """(canvas, covered) ``n`` x ``n``: ``small`` centred on it (cropped where larger, air
    around where smaller), then moved ``shift`` = (rows up, columns left) pixels."""
    def first(size):        # source index of canvas index 0, centred
        return (size - n) // 2 if size >= n else -((n - size) // 2)
    r_off = first(small.shape[0]) + int(shift[0])
    c_off = first(small.shape[1]) + int(shift[1])
    i0, i1 = max(0, -r_off), min(n, small.shape[0] - r_off)
    j0, j1 = max(0, -c_off), min(n, small.shape[1] - c_off)
    canvas = np.zeros((n, n))
    covered = np.zeros((n, n), dtype=bool)
    if i1 > i0 and j1 > j0:
        canvas[i0:i1, j0:j1] = small[i0 + r_off:i1 + r_off, j0 + c_off:j1 + c_off]
        covered[i0:i1, j0:j1] = True
    return canvas, covered


def centring_shift(rad: Radiograph, sampling: ViewSampling, spacing,
                   estimate: Optional[SpacingEstimate], reference: Optional[Dict],
                   notes: list) -> Dict:
    """How far to move the radiograph so that its chest lies where the training chests lie:
    the lung fields' midline at the field's centre, their apices down to the reference's
    height (:func:`.scale.lung_top_target`; down only: cut-off apices are found low).
    ``{"source", "midline_offset_mm", "lung_top_offset_mm", "lung_top_target_mm",
    "shift_px", "shift_mm"}``: offsets in mm at the model's detector from the image's centre
    (positive: right, down); ``shift_px`` = (rows up, columns left) in model pixels, 0 on an
    axis within ``CENTRE_TOLERANCE_PX``. ``spacing``: mm of a radiograph pixel at the model's
    detector (:func:`model_detector_spacing`), the plane the target is measured in."""
    target, target_source = lung_top_target(reference)
    record = {"source": "none", "midline_offset_mm": None, "lung_top_offset_mm": None,
              "lung_top_target_mm": target, "lung_top_target_source": target_source,
              "shift_px": [0, 0], "shift_mm": [0.0, 0.0]}
    widths = estimate.widths if estimate is not None else None
    if widths is None or widths.lung_top_row_px is None:
        if estimate is not None:
            notes.append("lung fields not found: the image is placed by its own centre, "
                         "not the chest's")
        return record
    rows, cols = rad.image.shape
    down = (widths.lung_top_row_px - (rows - 1) / 2) * float(spacing[0])
    right = (None if widths.midline_px is None
             else (widths.midline_px - (cols - 1) / 2) * float(spacing[1]))
    record.update(source="lung fields", lung_top_offset_mm=round(float(down), 2),
                  midline_offset_mm=None if right is None else round(float(right), 2))
    pitch = sampling.pixel_spacing
    # mm from where the training chests lie. Apices found low may be cut off by the image's
    # top edge (found too low, never too high), and lower apices are within the training
    # chests' range anyway: a chest is moved down, never up.
    offsets = (min(down - target, 0.0), right or 0.0)
    if max(abs(v) for v in offsets) > MAX_CENTRING_FRACTION * sampling.image_size * pitch:
        notes.append(f"the chest seems {offsets[0]:+.0f} mm down and {offsets[1]:+.0f} mm "
                     f"right of where the training chests lie, too far to trust: the image "
                     f"is not moved")
        return record
    shift = [int(round(v / pitch)) if abs(v / pitch) > CENTRE_TOLERANCE_PX else 0
             for v in offsets]
    record.update(shift_px=shift, shift_mm=[round(v * pitch, 2) for v in shift])
    said = []
    if shift[1]:
        said.append(f"the lung fields' midline lay {abs(offsets[1]):.0f} mm "
                    f"{'right' if offsets[1] > 0 else 'left'} of the centre: moved "
                    f"{abs(shift[1])} px {'left' if shift[1] > 0 else 'right'}")
    if shift[0]:
        said.append(f"the lung apices lay {abs(offsets[0]):.0f} mm higher than three "
                    f"quarters of the training chests': moved {abs(shift[0])} px down")
    if said:
        notes.append("chest placed where the training chests lie (mm at the model's detector): "
                     + "; ".join(said))
    return record


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


def collimator_bands(image: np.ndarray, covered: np.ndarray, air: float) -> np.ndarray:
    """The rows and columns along the covered region's edges that hold one value above
    ``air`` (``BAND_UNIFORMITY`` of their pixels within 2 % of the image's range of it, so a
    burned-in marker on the band does not end it; each side walked inward up to a quarter
    of the region): a white collimator shutter, which the intensity mapping makes as dense
    as bone. A re-projection never draws it, so the consistency score leaves it out. Uniform
    dark edges are left in: at the image's edge they cannot be told from air."""
    bands = np.zeros(covered.shape, bool)
    vals = image[covered]
    if vals.size == 0:
        return bands
    tol = 0.02 * float(vals.max() - vals.min())
    for view in (lambda a: a, lambda a: a.T):          # rows, then columns
        img, cov, out = view(image), view(covered), view(bands)
        lines = np.flatnonzero(cov.any(1))
        if lines.size == 0:
            continue
        depth = max(1, lines.size // 4)
        for order in (lines[:depth], lines[::-1][:depth]):     # from each end inward
            for r in order:
                v = img[r, cov[r]]
                level = float(np.median(v)) if v.size >= 4 else air
                if level <= air or np.mean(np.abs(v - level) <= tol) < BAND_UNIFORMITY:
                    break
                out[r, cov[r]] = True
    return bands


def _laterality(image: np.ndarray, covered: np.ndarray, reference: Optional[Dict],
                notes: list, problems: list) -> None:
    """A problem when ``image`` matches the reference's asymmetry better mirrored. Only
    pixels covered on both sides of the midline count: padding on one side (a chest moved
    by its placement, an image narrower than the field) is not anatomy."""
    if not reference or "mean_frontal" not in reference:
        return
    ref = np.asarray(reference["mean_frontal"], dtype=np.float64)
    if ref.shape != image.shape:
        return

    def ncc(a, b):
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-12))
    # asymmetric parts only: the heart, the aortic knob, the liver
    both_sides = covered & covered[:, ::-1]
    asym = lambda x: (x - x[:, ::-1]) * both_sides
    as_is, mirrored = ncc(asym(image), asym(ref)), ncc(asym(image[:, ::-1]), asym(ref))
    if mirrored > as_is + 0.2:
        msg = (f"the radiograph looks mirrored (asymmetry correlates {mirrored:.2f} with the "
               f"reference when flipped vs {as_is:.2f} as is): is the patient's right on the "
               f"image's left?")
        notes.append(msg)
        problems.append(msg)
        warnings.warn(msg, FlippedImageWarning, stacklevel=3)


def to_model_input(rad: Radiograph, sampling: ViewSampling,
                   reference: Optional[Dict] = None, check_spacing: bool = True,
                   place: bool = True) -> ModelInput:
    """The radiograph as the model's frontal DRR-like input (see the module docstring).
    ``check_spacing=False`` uses a header spacing without checking it against the anatomy:
    for simulated acquisitions, whose spacing is exact by construction. ``place=False``
    places the image by its own centre, not by its chest (for comparisons; ``infer`` and
    ``probe`` place it). With both off the anatomy is not measured (~50 ms saved)."""
    if not np.all(np.isfinite(rad.image)):
        raise InputError("the radiograph holds NaN or infinite values")
    notes: list = []
    _check_orientation(rad, notes)
    rad = upright(without_padding(rad, notes), notes)
    if check_spacing or rad.spacing_is_default:
        spacing, spacing_record, estimate = choose_spacing(rad, sampling, reference, notes)
    else:
        spacing = detector_spacing(rad)
        spacing_record = {"source": "header", "used_mm": [float(v) for v in spacing],
                          "header_mm": [float(v) for v in spacing], "estimate": None}
        estimate = anatomy_estimate(rad, sampling, reference) if place else None
    mag, mag_source = magnification(rad, sampling)
    at_model = model_detector_spacing(spacing, mag, sampling)
    if (rad.view_position or "").strip().upper().startswith("AP") and \
            mag_source.startswith("assumed"):
        notes.append(f"AP view without a source distance in the header: magnified {mag:.2f} "
                     f"as a PA chest is assumed; a portable AP at 1000 mm is about "
                     f"{chest_magnification(1000.0):.2f} (infer --magnification)")
    spacing_record.update(magnification=float(mag), magnification_source=mag_source,
                          model_detector_mm=[round(v, 6) for v in at_model])
    centring = centring_shift(rad, sampling, at_model, estimate if place else None,
                              reference, notes)
    canvas, covered, scale = _resample(rad, sampling, at_model, centring["shift_px"])
    if covered.sum() < MIN_COVERED_PIXELS:
        rows, cols = rad.image.shape
        raise InputError(f"at {spacing[1]:g} mm per pixel ({spacing_record['source']}) the "
                         f"image's {cols} x {rows} pixels span {cols * spacing[1]:.0f} x "
                         f"{rows * spacing[0]:.0f} mm, {int(covered.sum())} of the model's "
                         f"pixels: too small for a chest; give its pixel spacing "
                         f"(infer --pixel-spacing MM)")
    if rad.metadata.get("units") == LINE_INTEGRAL:
        # already a DRR (e.g. the demo's phantom): its values are the model's units
        image = np.where(covered, canvas, 0.0).astype(np.float32)
    else:
        image = _match_intensity(canvas, covered, reference)
        if reference is None:
            notes.append("the model card has no domain statistics: plain range mapping used")
    problems: list = []
    _laterality(image, covered, reference, notes, problems)
    bands = collimator_bands(image, covered, _air_level(reference, image))
    if bands.any():
        notes.append(f"bright collimator bands along the image's edges ({100 * bands.mean():.0f} % "
                     f"of the field) left out of the consistency score")
    return ModelInput(image, covered, scale, notes, problems, spacing_record, centring, bands)


def _air_level(reference: Optional[Dict], image: np.ndarray) -> float:
    """Values up to this are air or thin tissue for :func:`collimator_bands`: the body
    threshold of the training DRRs, else 5 % of the image's maximum."""
    if reference and "body_threshold" in reference:
        return float(reference["body_threshold"])
    return BODY_FRACTION * float(image.max())


def anatomy_estimate(rad: Radiograph, sampling: ViewSampling,
                     reference: Optional[Dict]) -> SpacingEstimate:
    """The anatomy measured on ``rad`` (:mod:`.scale`): the spacing it implies, its lung
    fields' midline and apices; in DRR units through the card's mapping, at the model's
    magnification of :func:`magnification`."""
    drr = rad.metadata.get("units") == LINE_INTEGRAL
    to_domain = None if drr else (lambda img: _match_intensity(img, np.ones(img.shape, bool),
                                                               reference))
    mag = magnification(rad, sampling)[0]
    try:
        return estimate_spacing(rad.image, card_reference(reference), to_domain, mag)
    except InputError as exc:     # too small or blank to measure; the mapping says if it matters
        return SpacingEstimate.failed(str(exc), magnification=mag)


def choose_spacing(rad: Radiograph, sampling: ViewSampling, reference: Optional[Dict],
                   notes: list):
    """((row, column) detector spacing to resample with, a record of the choice, the
    anatomy's :class:`~.scale.SpacingEstimate`): the header's (or the user's,
    :func:`stated_geometry`), checked against the anatomy (:mod:`.scale`, a note when they
    disagree by over 30 %); the anatomy's estimate when the header has no spacing or one that
    makes the chest implausibly sized (over 2.5x off; a user's stands, with a note); the
    default when neither is there."""
    header = detector_spacing(rad)
    est = anatomy_estimate(rad, sampling, reference)
    verdict = None if rad.spacing_is_default else compare_spacing(header[1], est)
    given = rad.metadata.get("spacing_source") == USER_STATED
    whose = "the given" if given else "the header's"
    used, source = header, "default" if rad.spacing_is_default else "user" if given else "header"
    if rad.spacing_is_default and est.spacing_mm is None:
        notes.append(f"pixel spacing missing from the header: {header[1]:g} mm assumed "
                     f"({est.describe()})")
    elif rad.spacing_is_default:
        used, source = (est.spacing_mm, est.spacing_mm), "anatomy"
        notes.append(f"pixel spacing missing from the header: estimated from the anatomy "
                     f"instead of the {header[1]:g} mm default, {est.describe()}")
    elif given and verdict is None:
        notes.append(f"pixel spacing as given: {header[1]:g} mm (the anatomy's estimate: "
                     f"{est.describe()})")
    elif verdict == "implausible" and given:    # the user's word stands, with a warning
        notes.append(f"the given pixel spacing ({header[1]:g} mm) makes this chest "
                     f"implausibly sized ({est.describe()}); used as given")
    elif verdict == "implausible":
        used, source = (est.spacing_mm * header[0] / header[1], est.spacing_mm), "anatomy"
        notes.append(f"the header's pixel spacing ({header[1]:g} mm) makes this chest "
                     f"implausibly sized; estimated from the anatomy instead, {est.describe()}")
    elif verdict == "disagrees":
        notes.append(f"{whose} pixel spacing ({header[1]:g} mm) differs by "
                     f"{100 * abs(header[1] / est.spacing_mm - 1):.0f} % from the anatomy's "
                     f"estimate ({est.describe()}); it is used")
    record = {"source": source, "used_mm": [float(v) for v in used],
              "header_mm": None if rad.spacing_is_default else [float(v) for v in header],
              "estimate": est.to_dict()}
    return used, record, est


def radiograph_input(rad: Radiograph, card: Dict) -> ModelInput:
    """The input the model of ``card`` gets for ``rad``: :func:`to_model_input` with the
    card's view settings and domain statistics. ``infer`` encodes this, and ``probe`` on a
    radiograph dataset computes its features from it, so heads fitted on radiographs mean
    the same thing at inference."""
    return to_model_input(rad, TrainConfig.from_dict(card["config"]).views, card.get("domain"))

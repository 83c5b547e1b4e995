"""How large is a pixel? The scale of a frontal chest radiograph estimated from its anatomy.

A radiograph's pixel spacing is often missing or wrong (a zero PixelSpacing, a PNG export,
an image downsampled without its header being updated). The model was trained on chests of a
known size at its detector, so the widths of the anatomy in pixels, against the same widths
in millimetres in the training DRRs, give the spacing that brings this chest to the size the
model saw. Two widths are measured, on a working copy of about ``WORK_SIZE`` pixels:

* **lung fields**: the two largest dark regions inside the body (after the domain mapping,
  when the caller gives one): basins of the image below the level at which they would spill
  to the image's border (grey-level hole filling), kept by a hysteresis threshold on that
  depth. On each row where both lungs are found, the lateral lung edge is the steepest rise
  of the row's profile (smoothed along the columns' direction, which averages the ribs out)
  between the lung and the chest wall; the lung-field width is the 90th percentile over
  those rows of the distance between the two lateral edges: the widest level, the inner
  thoracic diameter of the cardiothoracic ratio.
* **thorax**: the extent of the body (above ``BODY_FRACTION`` of the range) on the same rows,
  the same percentile; not measurable when the body reaches the image's side edges
  (collimated or cropped), as in most clinical radiographs.

The same lateral lung edges also give the **midline**: the median over those rows of the
point halfway between them, where the chest's middle lies in the image (:mod:`.domain`
centres the radiograph on it, as every training chest is centred on its body); and the lung
fields give their **height in the image**: the row of their apices (the 1st percentile of
their pixels' rows). Not their centroid or extent: the lower lungs, behind the heart and the
diaphragm domes, are found less completely on a processed radiograph than on a DRR, which
put the real CR's lung centroid 38 mm higher than the phantoms' while its apices lie 8 mm
from theirs. :mod:`.domain` brings the apices to where the training chests' lie, which the
reference stores as ``lung_top_mm``.

The lung-field width is used when found (the body's width depends more on habitus and is
usually cut off); the thorax width otherwise. The reference widths are measured on frontal
DRRs of the training CTs at the model's detector (:func:`anatomy_reference`), stored in the
model card (``domain.anatomy``), else :data:`FALLBACK_REFERENCE` is used. They include the
model's magnification (``sdd / sod``, 1.2); a real PA chest is less magnified (the chest
against the detector at 180 cm: about ``PA_MAGNIFICATION`` = 1.08), so the estimate is the
detector spacing that gives the radiograph a chest of the training chests' size at that
magnification: directly comparable with a header's (imager) spacing, and used the same way.
A DRR of the model's own geometry is estimated with the model's magnification instead.
Anatomy varies (the reference's spread is reported), so the estimate is good to about
10-15 %: a sanity check and a stand-in, not a calibration.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import apply_hysteresis_threshold
from skimage.morphology import reconstruction
from skimage.transform import resize

from ..blocks import block_mean
from ..data import ViewSampling
from ..data.views import render_views
from ..errors import InputError

#: Long side (pixels) of the working copy every measurement is made on.
WORK_SIZE = 256
#: Body: above this fraction of the robust range (the rule of :mod:`.domain`).
BODY_FRACTION = 0.05
#: Hysteresis on the lung basins' depth, as fractions of its 95th percentile in the body.
DEPTH_HIGH, DEPTH_LOW = 0.3, 0.1
#: Vertical smoothing of the row profiles, as a fraction of the image height (about a rib
#: spacing on a chest radiograph), so that ribs crossing a row do not make false edges.
ROW_SMOOTHING = 0.04
#: How far outwards from the lung mask the lateral edge is looked for, as a fraction of
#: the way to the body's edge: far enough for a shallow lung rim, short of a collimator.
EDGE_REACH = 0.6
#: Rows with both lungs needed for a width, as a fraction of the working height.
MIN_ROW_FRACTION = 0.08
#: Percentile of the per-row widths taken as the width (the widest level, robustly).
WIDTH_PERCENTILE = 90.0
#: Header spacing kept, but noted, when the anatomy disagrees by more than this fraction;
#: replaced by the estimate when it disagrees by more than ``IMPLAUSIBLE_FACTOR``.
DISAGREEMENT = 0.30
IMPLAUSIBLE_FACTOR = 2.5
#: How far the lungs' widest level (the mid-coronal plane) of a chest lies in front of the
#: detector, about the same PA erect or AP supine (mm).
MIDPLANE_TO_DETECTOR_MM = 135.0
#: Source-to-image distance of a PA chest radiograph, assumed when the header gives none.
PA_SOURCE_TO_DETECTOR_MM = 1800.0


def chest_magnification(source_to_detector_mm: float) -> float:
    """How much a chest's mid-coronal plane is magnified at the detector, ``source_to_
    detector_mm`` from the source: 1.08 for a PA chest at 1800 mm, 1.16 at a portable's 1000."""
    return source_to_detector_mm / (source_to_detector_mm - MIDPLANE_TO_DETECTOR_MM)


#: Magnification of the lungs' widest level in a PA chest radiograph (1800 mm, 1.08).
PA_MAGNIFICATION = chest_magnification(PA_SOURCE_TO_DETECTOR_MM)
#: Pixels of the reference DRRs across the model's field of view (finer than the model's
#: own 64 px, so the reference widths are not quantised to its 7.5 mm pixels).
REFERENCE_IMAGE_SIZE = 256

#: The reference for model cards without ``domain.anatomy``: widths and the lung fields'
#: apices (mm at the detector of the demo model's geometry: SDD 1800, SOD 1500, 400 mm
#: field at the isocentre) measured by ``python tools/scale_reference.py --phantoms 64`` on
#: frontal DRRs of the first 64 training phantoms of ``cpu-small`` (``phantom:264``,
#: preprocessed 96^3 at 3.5 mm). The three shared real CTs, body-centred, give lung fields
#: of 283, 259 and 313 mm the same way, their apices -150.9, -119.1 and -70.3 mm from the
#: field's centre (their thorax widths, 415-443 mm, are those of the CT's field of view or the
#: training cube, not of the body, which both cut).
FALLBACK_REFERENCE: Dict = {
    "lung_width_mm": 306.6, "lung_width_quartiles_mm": [294.4, 315.0],
    "thorax_width_mm": 390.0, "thorax_width_quartiles_mm": [382.5, 397.5],
    "lung_top_mm": -135.9, "lung_top_quartiles_mm": [-139.7, -130.3],
    "n_views": 64, "n_lungs_found": 64, "pixel_spacing_mm": 1.875, "magnification": 1.2,
    "source": "fallback: 64 procedural phantoms (tools/scale_reference.py --phantoms 64)",
}


@dataclass
class AnatomyWidths:
    """Widths measured on one image, in the image's own column pixels (None: not found),
    the lung fields' midline: the column (from the image's left edge, pixel centres at 0, 1,
    ...) halfway between their lateral edges, and the row of their apices: the 1st
    percentile of the two lung fields' pixels' rows (image rows, from the top). Apices cut
    off by the image's top edge are found too low (lung near an edge spills into it and is
    lost), never too high."""

    lung_px: Optional[float] = None
    thorax_px: Optional[float] = None
    midline_px: Optional[float] = None
    lung_top_row_px: Optional[float] = None
    rows: int = 0                       # rows (of the original image) the widths come from
    reason: Optional[str] = None        # why the lung fields were not measured


@dataclass
class SpacingEstimate:
    """The detector pixel spacing (mm) the anatomy implies at ``magnification``."""

    spacing_mm: Optional[float]
    measure: Optional[str]              # "lung fields" or "thorax"
    width_px: Optional[float]
    reference_mm: Optional[float]       # the training chests' width at the patient
    spread: Optional[float]             # reference's interquartile range / median
    widths: AnatomyWidths
    reference_source: str
    magnification: float = PA_MAGNIFICATION   # assumed for this image
    reason: Optional[str] = None        # why there is no estimate

    @classmethod
    def failed(cls, reason: str, reference_source: str = "",
               magnification: float = PA_MAGNIFICATION) -> "SpacingEstimate":
        """No estimate, and why."""
        return cls(None, None, None, None, None, AnatomyWidths(reason=reason), reference_source,
                   magnification, reason)

    def to_dict(self) -> Dict:
        w = self.widths
        return {"spacing_mm": self.spacing_mm, "measure": self.measure,
                "width_px": self.width_px, "reference_width_mm": self.reference_mm,
                "reference_spread": self.spread, "lung_width_px": w.lung_px,
                "thorax_width_px": w.thorax_px, "magnification": self.magnification,
                "reference": self.reference_source, "reason": self.reason}

    def describe(self) -> str:
        """One line for the preprocessing notes."""
        if self.spacing_mm is None:
            return f"no spacing estimate from anatomy: {self.reason}"
        spread = (f"; the middle half of the training chests is within +-{50 * self.spread:.0f} %"
                  if self.spread else "")
        return (f"{self.measure} {self.width_px:.0f} px wide vs {self.reference_mm:.0f} mm in "
                f"the training chests (at the patient), magnified {self.magnification:.2f} at "
                f"the detector: {self.spacing_mm:.3g} mm per pixel{spread}")


# ------------------------------------------------------------------------------ measuring
def working_copy(image: np.ndarray, to_domain: Optional[Callable]):
    """(image resized to about WORK_SIZE on its long side, in [0, 1] over its robust range;
    original column pixels per working pixel; original row pixels per working pixel)."""
    img = np.asarray(image)
    block = max(1, max(img.shape) // (2 * WORK_SIZE))    # most of a big reduction as block means
    rows, cols = img.shape[0] // block * block, img.shape[1] // block * block
    img = block_mean(img, block) if block > 1 else img.astype(np.float64)
    f = WORK_SIZE / max(img.shape)
    shape = tuple(max(8, int(round(n * f))) for n in img.shape)
    small = resize(img, shape, order=1, anti_aliasing=f < 1, preserve_range=True)
    if to_domain is not None:
        small = np.asarray(to_domain(small), dtype=np.float64)
    lo, hi = np.percentile(small, [0.5, 99.5])
    small = np.clip((small - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return small, cols / shape[1], rows / shape[0]


def _largest(mask: np.ndarray, k: int) -> List[np.ndarray]:
    """The ``k`` largest connected components of ``mask``, largest first."""
    lab, n = ndi.label(mask)
    if n == 0:
        return []
    sizes = ndi.sum(mask, lab, range(1, n + 1))
    return [lab == 1 + int(i) for i in np.argsort(sizes)[::-1][:k]]


def _body_and_lungs(small: np.ndarray):
    """(body mask, [image-left lung, image-right lung] or None, why not), found on a copy of
    half the working size (the grey-level reconstruction is the costly step) and returned
    at the working size."""
    h, w = small.shape
    half = block_mean(np.pad(small, ((0, h % 2), (0, w % 2)), mode="edge"), 2)
    body, lungs, why = _half_size_masks(half)
    full = lambda m: None if m is None else np.kron(m, np.ones((2, 2), bool))[:h, :w]
    return full(body), None if lungs is None else tuple(full(m) for m in lungs), why


def _half_size_masks(small: np.ndarray):
    smooth = ndi.gaussian_filter(small, 1.0)
    found = _largest(smooth > BODY_FRACTION, 1)
    if not found or found[0].mean() < 0.1:
        return None, None, "no body found (less than a tenth of the image above air)"
    body = ndi.binary_fill_holes(found[0])
    seed = smooth.copy()
    seed[1:-1, 1:-1] = smooth.max()
    depth = (reconstruction(seed, smooth, method="erosion") - smooth) * body
    if not np.any(depth > 0):
        return body, None, "no dark regions inside the body"
    top = float(np.percentile(depth[depth > 0], 95))
    dark = apply_hysteresis_threshold(depth, DEPTH_LOW * top, DEPTH_HIGH * top)
    lungs = _largest(ndi.binary_opening(dark), 2)
    if len(lungs) < 2:
        return body, None, "fewer than two dark regions (lung fields) inside the body"
    a, b = sorted(lungs, key=lambda m: np.nonzero(m.any(0))[0].mean())
    if min(a.sum(), b.sum()) < 0.2 * max(a.sum(), b.sum()):
        return body, None, "the two darkest regions differ too much in size to be lungs"
    if np.nonzero(a.any(0))[0].max() >= np.nonzero(b.any(0))[0].min():
        top, low = sorted(lungs, key=lambda m: np.nonzero(m.any(1))[0].mean())
        if np.nonzero(top.any(1))[0].max() < np.nonzero(low.any(1))[0].min():
            return body, None, ("the two darkest regions lie one above the other, not side by "
                                "side: is the image turned by 90 degrees?")
        return body, None, "the two darkest regions are not side by side"
    return body, (a, b), None


def _lateral_edge(profile: np.ndarray, centre: int, mask_edge: int,
                  body_edge: int) -> Optional[float]:
    """Column of the steepest rise of ``profile`` going out from the lung's ``centre`` to
    ``EDGE_REACH`` of the way from its mask's edge to the body's edge."""
    step = 1 if body_edge >= centre else -1
    stop = int(round(mask_edge + step * EDGE_REACH * abs(body_edge - mask_edge)))
    seg = profile[centre:stop + 1] if step > 0 else profile[stop:centre + 1][::-1]
    if seg.size < 3:
        return None
    rise = np.diff(seg)
    k = int(np.argmax(rise))
    return centre + step * (k + 0.5) if rise[k] > 0 else None


def _extent(mask: np.ndarray):
    """First and last True column of each row of ``mask`` (rows with any True)."""
    return mask.argmax(1), mask.shape[1] - 1 - mask[:, ::-1].argmax(1)


def _row_widths(small, body, a, b):
    """Per row with both lungs: (lung-field widths, their midpoints, body widths, body cut
    at a side edge)."""
    rows = np.nonzero(a.any(1) & b.any(1))[0]
    profiles = ndi.gaussian_filter(small, (ROW_SMOOTHING * small.shape[0], 1.0))[rows]
    (a0, a1), (b0, b1), (c0, c1) = (_extent(m[rows]) for m in (a, b, body))
    lung, mid = [], []
    for k in range(rows.size):
        left = _lateral_edge(profiles[k], int(a0[k] + a1[k]) // 2, int(a0[k]), int(c0[k]))
        right = _lateral_edge(profiles[k], int(b0[k] + b1[k]) // 2, int(b1[k]), int(c1[k]))
        if left is not None and right is not None:
            lung.append(right - left)
            mid.append(0.5 * (left + right))
    cut = np.count_nonzero(body[rows, 0] | body[rows, -1]) > 0.1 * max(rows.size, 1)
    return np.asarray(lung), np.asarray(mid), (c1 - c0 + 1).astype(np.float64), bool(cut)


def measure_widths(image: np.ndarray, to_domain: Optional[Callable] = None) -> AnatomyWidths:
    """Lung-field and thorax widths of a frontal chest image (display convention, any
    intensity units), in its column pixels. ``to_domain``: an intensity mapping applied to
    the working copy first (the inference's mapping into DRR units)."""
    img = np.asarray(image)
    if img.ndim != 2 or min(img.shape) < 8 or not np.all(np.isfinite(img)):
        raise InputError(f"a 2D finite image of at least 8x8 pixels is needed, got shape "
                         f"{img.shape}")
    small, fc, fr = working_copy(img, to_domain)
    body, lungs, why = _body_and_lungs(small)
    if lungs is None:
        return AnatomyWidths(reason=why)
    lung, mid, thorax, cut = _row_widths(small, body, *lungs)
    need = max(4, int(MIN_ROW_FRACTION * small.shape[0]))
    out = AnatomyWidths(rows=int(round(len(thorax) * fr)))
    # a working pixel spans fr original rows: its centre sits at (k + 0.5) fr - 0.5
    lung_rows = np.nonzero(lungs[0] | lungs[1])[0]
    out.lung_top_row_px = float((np.percentile(lung_rows, 1) + 0.5) * fr - 0.5)
    if len(thorax) >= need and not cut:
        out.thorax_px = float(np.percentile(thorax, WIDTH_PERCENTILE) * fc)
    if len(lung) >= need:
        out.lung_px = float(np.percentile(lung, WIDTH_PERCENTILE) * fc)
        # a working pixel spans fc original columns: its centre sits at (k + 0.5) fc - 0.5
        out.midline_px = float((np.median(mid) + 0.5) * fc - 0.5)
    else:
        out.reason = (f"lung edges found on {len(lung)} rows of the working copy, fewer than "
                      f"the {need} needed")
    return out


# ------------------------------------------------------------------------------ reference
def _summary(values: Sequence[float], prefix: str) -> Dict:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return {f"{prefix}_mm": None, f"{prefix}_quartiles_mm": None}
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {f"{prefix}_mm": round(float(med), 1),
            f"{prefix}_quartiles_mm": [round(float(q1), 1), round(float(q3), 1)]}


def anatomy_reference(frontal_drrs: np.ndarray, pixel_spacing_mm: float,
                      magnification: float = 1.2, source: str = "training frontal DRRs") -> Dict:
    """The reference widths (mm at the detector) of frontal DRRs ``[N, H, W]`` rendered at
    ``pixel_spacing_mm`` with ``magnification`` (``sdd / sod``) at the isocentre: medians
    and quartiles over the views, for the model card's ``domain.anatomy``; and where the
    lung fields' apices lie (``lung_top_mm``: mm at the detector below the image's centre,
    negative above)."""
    d = np.asarray(frontal_drrs)
    if d.ndim != 3 or d.shape[0] < 1 or not pixel_spacing_mm > 0:
        raise InputError(f"frontal DRRs must be [N, H, W] with a positive spacing, got shape "
                         f"{d.shape} and {pixel_spacing_mm}")
    widths = [measure_widths(view) for view in d]
    lung = [w.lung_px * pixel_spacing_mm if w.lung_px else None for w in widths]
    thorax = [w.thorax_px * pixel_spacing_mm if w.thorax_px else None for w in widths]
    top = [(w.lung_top_row_px - (d.shape[1] - 1) / 2) * pixel_spacing_mm
           if w.lung_top_row_px is not None else None for w in widths]
    return {**_summary(lung, "lung_width"), **_summary(thorax, "thorax_width"),
            **_summary(top, "lung_top"),
            "n_views": int(d.shape[0]), "n_lungs_found": sum(v is not None for v in lung),
            "pixel_spacing_mm": float(pixel_spacing_mm), "magnification": float(magnification),
            "source": source}


def reference_frontals(volumes, sampling: ViewSampling,
                       image_size: int = REFERENCE_IMAGE_SIZE):
    """(frontal DRRs [N, S, S] of ``volumes`` at the model's detector and field of view,
    with ``image_size`` pixels across; their pixel spacing in mm)."""
    fine = replace(sampling, image_size=int(image_size))
    return render_views(volumes, fine, [0.0])[:, 0], fine.pixel_spacing


def volumes_reference(volumes, sampling: ViewSampling, source: str) -> Dict:
    """:func:`anatomy_reference` of ``volumes`` (preprocessed training CTs) as ``sampling``
    (the model's views) sees them: what ``tools/build_demo.py`` stores in the card."""
    drrs, spacing = reference_frontals(volumes, sampling)
    return anatomy_reference(drrs, spacing, sampling.sdd / sampling.sod, source)


def lung_top_target(domain: Optional[Dict]):
    """(mm at the detector below the field's centre that a chest's lung apices should lie at
    least, where that figure comes from): the upper quartile of the training chests' apices
    (three quarters of them lie lower), from the model card's reference, else the phantoms'
    of :data:`FALLBACK_REFERENCE` (cards written before it was measured). Apices higher than
    that are framed as few training chests were."""
    ref = (domain or {}).get("anatomy")
    if isinstance(ref, dict) and ref.get("lung_top_quartiles_mm"):
        return float(ref["lung_top_quartiles_mm"][0]), "model card"
    return float(FALLBACK_REFERENCE["lung_top_quartiles_mm"][0]), "fallback: procedural phantoms"


def card_reference(domain: Optional[Dict]) -> Dict:
    """The anatomy reference of a model card's ``domain`` section, else the fallback."""
    ref = (domain or {}).get("anatomy")
    return ref if isinstance(ref, dict) and ref.get("lung_width_mm") else FALLBACK_REFERENCE


# ------------------------------------------------------------------------------ estimating
def _spread(reference: Dict, key: str) -> Optional[float]:
    q = reference.get(f"{key}_quartiles_mm")
    med = reference.get(f"{key}_mm")
    return float((q[1] - q[0]) / med) if q and med else None


def estimate_spacing(image: np.ndarray, reference: Optional[Dict] = None,
                     to_domain: Optional[Callable] = None,
                     magnification: float = PA_MAGNIFICATION) -> SpacingEstimate:
    """The detector pixel spacing (mm) that gives this chest, at ``magnification``, the width
    of the training chests: from the lung fields when found, else from the thorax.
    ``reference``: :func:`anatomy_reference` numbers (default :data:`FALLBACK_REFERENCE`)."""
    ref = reference or FALLBACK_REFERENCE
    source = str(ref.get("source", "model card"))
    ref_mag = float(ref.get("magnification") or 1.2)
    widths = measure_widths(image, to_domain)
    for measure, px, key in (("lung fields", widths.lung_px, "lung_width"),
                             ("thorax", widths.thorax_px, "thorax_width")):
        mm = ref.get(f"{key}_mm")
        if px and mm:
            at_patient = float(mm) / ref_mag
            return SpacingEstimate(at_patient * magnification / px, measure, px, at_patient,
                                   _spread(ref, key), widths, source, magnification)
    why = widths.reason or "the thorax reaches the image's edges and no lung fields were found"
    return replace(SpacingEstimate.failed(why, source, magnification), widths=widths)


def compare_spacing(header_mm: float, estimate: SpacingEstimate) -> Optional[str]:
    """None when the header's spacing agrees with the anatomy (within ``DISAGREEMENT``),
    ``"disagrees"`` beyond that, ``"implausible"`` beyond ``IMPLAUSIBLE_FACTOR``."""
    if estimate.spacing_mm is None or not header_mm > 0:
        return None
    ratio = header_mm / estimate.spacing_mm
    if max(ratio, 1.0 / ratio) > IMPLAUSIBLE_FACTOR:
        return "implausible"
    return "disagrees" if abs(ratio - 1.0) > DISAGREEMENT else None

"""Chest radiographs in: DICOM CR/DX (pydicom), PNG/JPEG (Pillow), 2D ITK images.

The result is a :class:`Radiograph` in display convention, because the world model is trained
on DRRs in that convention: the modality LUT (rescale) and the VOI LUT or window the
acquisition chose are applied, the result is scaled to [0, 1], and MONOCHROME1 images are
inverted so that bone is bright. Compressed DICOM (JPEG, JPEG-LS, JPEG 2000, RLE) is decoded
by pydicom's plugins (pylibjpeg). Bad input raises typed :mod:`XrayWorldModel.errors`
exceptions naming the file.
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from ..conventions import PNG_MAGNIFICATION_KEY, number_within
from ..errors import NonFiniteDataError, NotARadiographError, PathLike, UnreadableFileError
from ..radiograph import INPUT_METADATA_KEYS, LINE_INTEGRAL, Radiograph, check_radiograph
from .ct import (RADIOGRAPH_MODALITIES, _first_line, dicom_failure, format_from_suffix, itk_reason,
                 looks_like_dicom, native_output_silenced, read_dicom_header, require_exists)

log = logging.getLogger(__name__)

#: Pixel pitch (mm) assumed when a radiograph has no usable spacing: a typical CR plate.
DEFAULT_CXR_SPACING_MM = 0.143
#: Key in a 2D NRRD/MHA header (ITK metadata) saying its pixel spacing was assumed, not read
#: from the source: :func:`write_radiograph` records it, :func:`read_cxr` honours it, so a
#: radiograph handed to a background ``infer`` still gets its scale estimated from anatomy.
SPACING_ASSUMED_KEY = "xray2xray_spacing_is_default"
#: Key in the same header holding the radiograph's :data:`INPUT_METADATA_KEYS` as JSON (its
#: units, detector spacing, magnification): without them a background ``infer`` would read a
#: DICOM's or a DRR's copy as a plain display image at a PA chest's magnification.
INPUT_METADATA_KEY = "xray2xray_input_metadata"

#: DICOM modalities accepted besides true radiographs: OT is what secondary captures use.
_ACCEPTED_MODALITIES = RADIOGRAPH_MODALITIES | {"OT", ""}


class DefaultSpacingWarning(UserWarning):
    """The radiograph had no usable pixel spacing; DEFAULT_CXR_SPACING_MM was assumed."""


def read_cxr(path: PathLike, check: bool = False) -> Radiograph:
    """Read one chest radiograph as a display-convention :class:`Radiograph` (values in [0, 1]).

    DICOM spacing comes from PixelSpacing, else ImagerPixelSpacing; when neither is usable
    (missing, zero, non-finite) ``DEFAULT_CXR_SPACING_MM`` is assumed with a
    :class:`DefaultSpacingWarning` and ``spacing_is_default=True``. PNG/JPEG carry no spacing,
    so they always get the default. ``check``: also refuse what cannot be a radiograph (too
    small, blank, colour, noise; :func:`~XrayWorldModel.radiograph.check_radiograph`), and
    then without the warnings the reading gave, which would only distract from the error.
    """
    if not check:
        return _read_cxr(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rad = _read_cxr(path)
        check_radiograph(rad)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return rad


def _read_cxr(path: PathLike) -> Radiograph:
    p = require_exists(path)
    if p.is_dir():
        raise NotARadiographError("is a folder; a radiograph is one file (DICOM, PNG or JPEG)",
                                  p)
    if looks_like_dicom(p):
        rad = _read_dicom(p)
    elif format_from_suffix(p) is not None:
        rad = _read_itk(p)
    else:
        rad = _read_bitmap(p)
    if rad is None:
        raise UnreadableFileError("not a recognised radiograph format (expected DICOM, PNG or "
                                  "JPEG)", p)
    return rad


# ---------------------------------------------------------------------------------- helpers
def _spacing_pair(value) -> Optional[Tuple[float, float]]:
    try:
        vals = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if len(vals) != 2 or not all(np.isfinite(v) and v > 0 for v in vals):
        return None
    return vals[0], vals[1]


def _default_spacing(p: Path, why: str) -> Tuple[float, float]:
    msg = (f"{p}: {why}; assuming the default pixel spacing of {DEFAULT_CXR_SPACING_MM} mm "
           "(a typical CR pixel pitch), so distances in mm are approximate")
    warnings.warn(msg, DefaultSpacingWarning, stacklevel=4)
    return DEFAULT_CXR_SPACING_MM, DEFAULT_CXR_SPACING_MM


def _unit_range(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``arr`` mapped linearly from [lo, hi] onto [0, 1] and clipped, as float32: computed in
    float32 in place (one copy instead of five float64 passes over a CR's millions of pixels;
    the result is float32 either way)."""
    if not hi > lo:
        return np.zeros(arr.shape, dtype=np.float32)
    out = np.array(arr, dtype=np.float32)
    out -= np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


def _check_finite(arr: np.ndarray, p: Path) -> None:
    if arr.dtype.kind == "f":
        bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise NonFiniteDataError(f"{bad} of {arr.size} pixels are NaN or infinite", p)


def _chroma(im) -> float:
    """Mean absolute difference between colour channels, 0..1 (0 for a grey image)."""
    rgb = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
    return float(np.mean(np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])) / 2)


def _to_gray(arr: np.ndarray) -> np.ndarray:
    """Luminance of an RGB(A) array (ITU-R BT.601 weights), for colour secondary captures."""
    return arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])


# ------------------------------------------------------------------------------------ DICOM
def _pixel_functions():
    try:  # pydicom 3
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    return apply_modality_lut, apply_voi_lut


def _read_dicom(p: Path) -> Radiograph:
    ds = _dcmread(p)
    modality, rows, cols = _check_dicom_radiograph(ds, p)
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    ts_name = getattr(ts, "name", str(ts))
    try:
        raw = ds.pixel_array
    except Exception as exc:  # missing decoder, truncated or corrupt pixel data
        raise UnreadableFileError(
            f"could not decode the pixel data (transfer syntax {ts_name}); the file may be "
            f"truncated or corrupt, or its compression needs a decoder that is not installed: "
            f"{_first_line(exc)}", p) from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    image, window, inverted = _dicom_display_image(raw, ds, photometric, p)
    if image.ndim != 2:
        raise NotARadiographError(f"pixel data has shape {image.shape}; expected one 2D image", p)

    spacing, source = _dicom_spacing(ds)
    if spacing is None:   # warned here, so that the warning's stack level points at the caller
        found = ", ".join(f"{t}={ds.get(t)!s}" for t in ("PixelSpacing", "ImagerPixelSpacing")
                          if t in ds) or "neither PixelSpacing nor ImagerPixelSpacing present"
        spacing = _default_spacing(p, f"no usable pixel spacing in the DICOM header ({found})")

    view = str(ds.get("ViewPosition", "") or "").strip().upper() or None
    meta = {
        "source": str(p), "format": "dicom", "modality": modality or None,
        "photometric_interpretation": photometric, "inverted": inverted, "window": window,
        "view_position": view, "rows": int(rows) if rows else image.shape[0],
        "columns": int(cols) if cols else image.shape[1],
        "bits_stored": int(ds.get("BitsStored", 0) or 0) or None,
        "manufacturer": str(ds.get("Manufacturer", "") or "") or None,
        "transfer_syntax": ts_name, "spacing_source": source,
        "pixel_spacing": _raw_tag(ds, "PixelSpacing"),
        "imager_pixel_spacing": _raw_tag(ds, "ImagerPixelSpacing"),
        "patient_orientation": _raw_tag(ds, "PatientOrientation"),
        "body_part": str(ds.get("BodyPartExamined", "") or "") or None,
        # the geometry that sets how much the chest is magnified (infer.domain.magnification)
        "magnification": number_within(ds.get("EstimatedRadiographicMagnificationFactor")),
        "source_to_detector_mm": number_within(ds.get("DistanceSourceToDetector")),
    }
    return Radiograph(image, spacing, view_position=view, metadata=meta,
                      spacing_is_default=(source == "default"))


def _dcmread(p: Path):
    """The DICOM dataset of ``p``, or an :class:`UnreadableFileError` saying why not."""
    import pydicom
    try:
        ds = pydicom.dcmread(str(p))
    except Exception as exc:  # InvalidDicomError, EOFError, struct/ValueError on truncation
        raise UnreadableFileError(dicom_failure(p, exc), p) from exc
    if len(ds) == 0:
        raise UnreadableFileError("the DICOM file holds no data elements (truncated?)", p)
    return ds


def screen_dicom_radiograph(path: Path) -> None:
    """Refuse, from its header alone, a DICOM file of another modality (a CT slice, an MR
    image); a cheap check before any model loads, as for a folder of files."""
    if looks_like_dicom(path):
        _check_dicom_modality(read_dicom_header(path), path)


def _check_dicom_modality(ds, p: Path) -> Tuple[str, object, object]:
    modality = str(ds.get("Modality", "") or "").upper()
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    rows, cols = ds.get("Rows"), ds.get("Columns")
    scout = modality == "CT" and "LOCALIZER" in image_type   # a CT scout is a projection
    if modality == "CT" and not scout:
        raise NotARadiographError(
            f"is a single CT slice ({cols}x{rows}), not a projection radiograph (CR/DX): give "
            "the folder of the whole series to `xray2xray drr` to render radiographs from it", p)
    if modality not in _ACCEPTED_MODALITIES and not scout:
        raise NotARadiographError(
            f"DICOM Modality is {modality} ({cols}x{rows} image), not a projection "
            "radiograph (CR/DX)", p)
    return modality, rows, cols


def _check_dicom_radiograph(ds, p: Path) -> Tuple[str, object, object]:
    """Refuse what is not one projection image (another modality, no pixel data, several
    frames); returns (modality, Rows, Columns) as the header has them."""
    modality, rows, cols = _check_dicom_modality(ds, p)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        if "Rows" in ds:   # the image module is there, so the pixel data was cut off
            raise UnreadableFileError("the DICOM file ends before its pixel data (truncated?)", p)
        raise NotARadiographError("DICOM file holds no image (no pixel data)", p)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames > 1:
        raise NotARadiographError(f"DICOM file holds {n_frames} frames; a radiograph is one "
                                  "2D image (a CT volume is the input of `xray2xray drr`)", p)
    return modality, rows, cols


def _dicom_display_image(raw: np.ndarray, ds, photometric: str,
                         p: Path) -> Tuple[np.ndarray, dict, bool]:
    """(image in [0, 1] with bone bright, the window used, whether it was inverted): colour
    is turned to luminance; grayscale gets the modality LUT, then the header's VOI."""
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples > 1 or raw.ndim == 3:
        arr = _to_gray(raw)          # pydicom has already turned YBR into RGB
        window = {"kind": "minmax", "min": float(arr.min()), "max": float(arr.max())}
        return _unit_range(arr, window["min"], window["max"]), window, False
    apply_modality_lut, apply_voi_lut = _pixel_functions()
    try:
        arr = apply_modality_lut(raw, ds)
    except Exception as exc:
        raise UnreadableFileError(f"invalid modality LUT / rescale: {_first_line(exc)}",
                                  p) from exc
    _check_finite(np.asarray(arr), p)
    image, window = _apply_voi(arr, ds, apply_voi_lut)
    presentation = str(ds.get("PresentationLUTShape", "") or "").upper()
    inverted = photometric == "MONOCHROME1" or (photometric == "MONOCHROME2"
                                                 and presentation == "INVERSE")
    if inverted:   # MONOCHROME1: low values are white; flip so bone is bright
        image = 1.0 - image
    return image, window, inverted


def _dicom_spacing(ds) -> Tuple[Optional[Tuple[float, float]], str]:
    """(row, column) pixel spacing and the tag it came from: PixelSpacing, else
    ImagerPixelSpacing; (None, "default") when neither is usable."""
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        pair = _spacing_pair(ds.get(tag))
        if pair is not None:
            return pair, tag
    return None, "default"


def _raw_tag(ds, tag: str):
    val = ds.get(tag)
    if val is None:
        return None
    try:
        return tuple(str(v) for v in val) if not isinstance(val, (str, bytes)) else str(val)
    except TypeError:
        return str(val)


def _apply_voi(arr: np.ndarray, ds, apply_voi_lut) -> Tuple[np.ndarray, dict]:
    """Header VOI (LUT first, else window) scaled to [0, 1]; min-max when the header has none.

    The output range is found by pushing values through pydicom itself (two far-out values for
    a window, the whole table for a LUT), so it matches whatever range pydicom chose.
    """
    arr = np.asarray(arr)
    lut_seq = ds.get("VOILUTSequence")
    if lut_seq:
        try:
            values = np.rint(arr).astype(np.int64) if arr.dtype.kind == "f" else arr  # indexes
            out = apply_voi_lut(values, ds, index=0, prefer_lut=True)
            # The whole table pushed through pydicom gives its output range (US or OW data alike).
            desc = lut_seq[0].LUTDescriptor
            first, n_entries = int(desc[1]), int(desc[0]) or 65536
            table = apply_voi_lut(np.arange(first, first + n_entries, dtype=np.int64), ds,
                                  index=0, prefer_lut=True)
            lo, hi = float(table.min()), float(table.max())
            expl = lut_seq[0].get("LUTExplanation")
            return _unit_range(out, lo, hi), {"kind": "lut",
                                              "explanation": str(expl or "") or None}
        except Exception as exc:
            log.warning("%s: VOI LUT unusable (%s); falling back to the window",
                        getattr(ds, "filename", "?"), _first_line(exc))
    if "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            out = apply_voi_lut(arr, ds, index=0, prefer_lut=False)
            probe = apply_voi_lut(np.array([-1e15, 1e15]), ds, index=0, prefer_lut=False)
            lo, hi = float(np.min(probe)), float(np.max(probe))
            c, w = ds.WindowCenter, ds.WindowWidth
            c = float(c[0] if ds["WindowCenter"].VM > 1 else c)
            w = float(w[0] if ds["WindowWidth"].VM > 1 else w)
            func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
            return _unit_range(out, lo, hi), {"kind": "window", "center": c, "width": w,
                                              "function": func}
        except Exception as exc:
            log.warning("%s: window unusable (%s); using the image's min-max",
                        getattr(ds, "filename", "?"), _first_line(exc))
    lo, hi = float(np.min(arr)), float(np.max(arr))
    return _unit_range(arr, lo, hi), {"kind": "minmax", "min": lo, "max": hi}


# ------------------------------------------------------------------------------- PNG / JPEG
def _read_bitmap(p: Path) -> Optional[Radiograph]:
    """Pillow-readable image -> Radiograph, or None when Pillow does not know the format."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    try:
        im = Image.open(p)
    except UnidentifiedImageError:
        return None
    except OSError as exc:
        raise UnreadableFileError(f"cannot open the image: {exc}", p) from exc
    with im:
        fmt = im.format or "image"
        chroma = 0.0
        n_frames = getattr(im, "n_frames", 1)
        if n_frames > 1:
            raise NotARadiographError(f"{fmt} file holds {n_frames} frames; a radiograph is one "
                                      "2D image", p)
        try:
            im.load()
            stated = getattr(im, "text", {}).get(PNG_MAGNIFICATION_KEY) if fmt == "PNG" else None
            im = ImageOps.exif_transpose(im)   # honour camera rotation tags on JPEG
            mode = im.mode
            if mode.startswith("I;16"):
                arr, full = np.array(im, dtype=np.uint16), 65535.0
            elif mode == "I" and fmt == "PNG":   # older Pillow opens 16-bit PNG as 'I'
                arr, full = np.array(im), 65535.0
            elif mode in ("I", "F"):
                arr, full = np.array(im), None
            elif mode == "L":
                arr, full = np.array(im), 255.0
            else:   # RGB, RGBA, LA, P, 1, CMYK...: convert to 8-bit luminance
                chroma = _chroma(im)
                arr, full = np.array(im.convert("L")), 255.0
        except (OSError, ValueError, SyntaxError) as exc:
            raise UnreadableFileError(
                f"could not decode the {fmt} image (truncated or corrupt?): {exc}", p) from exc
    _check_finite(arr, p)
    if full is None:
        lo, hi = float(arr.min()), float(arr.max())
        window = {"kind": "minmax", "min": lo, "max": hi}
    else:
        lo, hi = 0.0, full
        window = {"kind": "full_range", "min": 0.0, "max": full}
    image = _unit_range(arr, lo, hi)
    spacing = _default_spacing(p, f"a {fmt} file carries no pixel spacing")
    meta = {"source": str(p), "format": fmt.lower(), "mode": mode, "window": window,
            "photometric_interpretation": "MONOCHROME2", "inverted": False,
            "rows": image.shape[0], "columns": image.shape[1], "spacing_source": "default",
            "view_position": None, "chroma": chroma, "magnification": number_within(stated)}
    return Radiograph(image, spacing, view_position=None, metadata=meta, spacing_is_default=True)


# -------------------------------------------------------------------- 2D NIfTI/NRRD/MetaImage
def _read_itk(p: Path) -> Radiograph:
    """A 2D ITK image (e.g. a DRR saved as .mha); 3D volumes are refused."""
    import SimpleITK as sitk
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        with native_output_silenced():
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise UnreadableFileError(f"could not read the image header (corrupt or truncated?): "
                                  f"{itk_reason(exc)}", p) from exc
    size = reader.GetSize()
    if len(size) > 2 and any(s > 1 for s in size[2:]):
        raise NotARadiographError(
            f"is a 3D volume ({'x'.join(map(str, size))} voxels), not a 2D radiograph; "
            "a CT volume is the input of `xray2xray drr`", p)
    if reader.GetNumberOfComponents() > 1:
        raise NotARadiographError(f"has {reader.GetNumberOfComponents()} components per pixel; "
                                  "expected a grayscale radiograph", p)
    try:
        with native_output_silenced():
            img = reader.Execute()
    except RuntimeError as exc:
        raise UnreadableFileError(f"could not read the pixel data (truncated or corrupt?): "
                                  f"{itk_reason(exc)}", p) from exc
    arr = sitk.GetArrayFromImage(img).reshape(size[1], size[0])   # ITK (x, y) -> [row, col]
    _check_finite(arr, p)
    lo, hi = float(arr.min()), float(arr.max())
    sp = img.GetSpacing()
    assumed = img.HasMetaDataKey(SPACING_ASSUMED_KEY) and \
        img.GetMetaData(SPACING_ASSUMED_KEY).strip() == "1"
    stored = _stored_input_metadata(img)
    keep = stored.get("units") == LINE_INTEGRAL         # a DRR's values are the model's units
    meta = {"source": str(p), "format": format_from_suffix(p), "window":
            {"kind": "none" if keep else "minmax", "min": lo, "max": hi},
            "photometric_interpretation": "MONOCHROME2",
            "inverted": False, "rows": int(size[1]), "columns": int(size[0]),
            "spacing_source": "assumed (recorded in the file)" if assumed else "header",
            "view_position": None, **stored}
    image = arr.astype(np.float32) if keep else _unit_range(arr, lo, hi)
    return Radiograph(image, (sp[1], sp[0]), metadata=meta, spacing_is_default=assumed)


def _stored_input_metadata(img) -> Dict:
    """The :data:`INPUT_METADATA_KEY` JSON of a header written by :func:`write_radiograph`
    (only its known keys); empty when absent or unreadable (the image is then read as any
    other 2D file)."""
    if not img.HasMetaDataKey(INPUT_METADATA_KEY):
        return {}
    try:
        stored = json.loads(img.GetMetaData(INPUT_METADATA_KEY))
    except ValueError:
        log.warning("ignoring an unreadable %s header entry", INPUT_METADATA_KEY)
        return {}
    return {k: v for k, v in stored.items() if k in INPUT_METADATA_KEYS} if isinstance(stored, dict) else {}


def _plain(value):
    """numpy scalars and arrays as JSON numbers and lists."""
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else str(value)


def write_radiograph(radiograph: Radiograph, path: PathLike) -> Path:
    """Write ``radiograph`` as a 2D NRRD or MHA that :func:`read_cxr` reads back with the same
    pixels (float32), pixel spacing, whether that spacing was assumed
    (:data:`SPACING_ASSUMED_KEY`) and the metadata inference reads (:data:`INPUT_METADATA_KEY`):
    what a background ``infer`` needs to treat it as the original file would be treated."""
    import SimpleITK as sitk
    p = Path(path).expanduser()
    if format_from_suffix(p) not in ("nrrd", "metaimage"):
        raise UnreadableFileError("a radiograph is written as .nrrd or .mha (their headers keep "
                                  "whether the pixel spacing was assumed)", p)
    image = sitk.GetImageFromArray(np.ascontiguousarray(radiograph.image, dtype=np.float32))
    image.SetSpacing((float(radiograph.spacing[1]), float(radiograph.spacing[0])))  # (x=col, y=row)
    image.SetMetaData(SPACING_ASSUMED_KEY, "1" if radiograph.spacing_is_default else "0")
    kept = {k: radiograph.metadata[k] for k in INPUT_METADATA_KEYS if radiograph.metadata.get(k) is not None}
    if kept:
        image.SetMetaData(INPUT_METADATA_KEY, json.dumps(kept, default=_plain))
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(p))
    except (RuntimeError, OSError) as exc:
        reason = itk_reason(exc) if isinstance(exc, RuntimeError) else (exc.strerror or str(exc))
        raise UnreadableFileError(f"could not write the radiograph: {reason}", p) from exc
    return p

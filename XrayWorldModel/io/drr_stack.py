"""A DRR stack on disk: the NIfTI image, its JSON sidecar and optional PNG / DICOM views.

The layout is what a training job or ``xray2xray recon`` needs to trust a stack without the
CT it came from: the NIfTI holds float32 line integrals (x = detector column, y = detector row,
z = angle index), the sidecar ``STEM.json`` holds the exact geometry, provenance (input hash,
package version) and a ``complete`` flag written last, so an interrupted job is detected and
redone. Every file is written to a temporary name and moved into place (``os.replace``).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import FileNotFoundInputError, InputError, PathLike, UnreadableFileError
from ..conventions import (NIFTI_SUFFIXES, PNG_MAGNIFICATION_KEY, STACK_FORMAT,  # noqa: F401
                           view_position)                          # (part of this API)
from ..fileutil import atomic_path, sha256_of  # noqa: F401  (sha256_of is part of this API)
from ..geometry import ProjectionGeometry
from ..version import __version__

#: Version of the stack sidecar layout (the tag itself is ``conventions.STACK_FORMAT``).
STACK_FORMAT_VERSION = 1
#: Display window of PNG/DICOM views: line integrals from 0 to this percentile of the stack.
DISPLAY_PERCENTILE = 99.5
#: DICOM SOP class "Digital X-Ray Image Storage - For Presentation".
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


# ----------------------------------------------------------------------------- small helpers
def package_version() -> str:
    """The installed package version, for provenance."""
    return str(__version__)


def stack_path(out_path: PathLike) -> Path:
    """The NIfTI path of a stack: ``out_path`` itself, or with ``.nii.gz`` appended."""
    p = Path(out_path).expanduser()
    return p if p.name.lower().endswith(NIFTI_SUFFIXES) else p.with_name(p.name + ".nii.gz")


def stack_stem(out_path: PathLike) -> str:
    """File name of the stack without its NIfTI suffix (``drr.nii.gz`` -> ``drr``)."""
    name = stack_path(out_path).name
    for suf in NIFTI_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def sidecar_path(out_path: PathLike) -> Path:
    """``drr.nii.gz`` -> ``drr.json`` (same folder, same stem)."""
    p = stack_path(out_path)
    return p.with_name(stack_stem(p) + ".json")


def png_dir(out_path: PathLike) -> Path:
    p = stack_path(out_path)
    return p.with_name(stack_stem(p) + "_png")


def dicom_dir(out_path: PathLike) -> Path:
    p = stack_path(out_path)
    return p.with_name(stack_stem(p) + "_dicom")


def view_name(stem: str, index: int, angle: float) -> str:
    """Stable per-view file name (no suffix); the index keeps repeated angles apart."""
    return f"{stem}_{index:03d}_angle{angle:06.1f}"


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, default=_jsonable, allow_nan=False)
            f.write("\n")


def display_window(drrs: np.ndarray) -> Tuple[float, float]:
    """(low, high) line integrals mapped to black and white: 0 to a high percentile."""
    hi = float(np.percentile(drrs, DISPLAY_PERCENTILE)) if drrs.size else 0.0
    if not math.isfinite(hi) or hi <= 0:
        hi = float(np.max(drrs)) if drrs.size and np.max(drrs) > 0 else 1.0
    return 0.0, hi


# ----------------------------------------------------------------------------- writing
def write_drr_stack(drrs: np.ndarray, geometry: ProjectionGeometry, out_path: PathLike,
                    meta: Optional[Dict[str, Any]] = None, png: bool = False,
                    dicom: bool = False) -> Path:
    """Write a DRR stack [A, H, W] and its sidecar; returns the NIfTI path.

    ``geometry`` must be resolved (isocentre set) so the sidecar alone locates every pixel.
    ``meta`` (method, mu_water, inputs, input_sha256, timings_s, ...) is merged into the
    sidecar. Any old sidecar is removed first and the new one is written after all images, so
    ``complete: true`` on disk means every file of the stack is whole.
    """
    t0 = time.perf_counter()
    drrs = np.asarray(drrs, dtype=np.float32)
    out = stack_path(out_path)
    if drrs.ndim != 3:
        raise InputError(f"a DRR stack is [angles, rows, columns]; got shape {drrs.shape}", out)
    if geometry.isocenter is None:
        raise InputError("the geometry must be resolved (isocentre set) before it is saved; "
                         "use geometry.resolve(volume)", out)
    A, H, W = drrs.shape
    if A != geometry.n_angles or (H, W) != tuple(geometry.detector_shape):
        raise InputError(f"DRR stack shape {drrs.shape} does not match the geometry "
                         f"({geometry.n_angles} angles, detector {geometry.detector_shape})", out)
    side = sidecar_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if side.exists():   # an old "complete" sidecar must not vouch for half-written new images
        side.unlink()

    _write_nifti(drrs, geometry, out)
    stem = stack_stem(out)
    extra: Dict[str, Any] = {}
    if png:
        extra["png_dir"] = png_dir(out).name
        extra["png_files"] = write_pngs(drrs, geometry, png_dir(out), stem)
    if dicom:
        extra["dicom_dir"] = dicom_dir(out).name
        extra["dicom_files"] = write_dicoms(drrs, geometry, dicom_dir(out), stem, meta or {})

    data: Dict[str, Any] = {
        "format": STACK_FORMAT, "format_version": STACK_FORMAT_VERSION,
        "image": out.name,
        "array_axes": "NIfTI x = detector column, y = detector row, z = angle index "
                      "(numpy [angle, row, column]); spacing (du, dv, 1)",
        "values": "line integrals of linear attenuation (unitless), float32",
        "angles_deg": list(geometry.angles),
        "geometry": geometry.to_dict(),
        "version": package_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "detector_affines_lps": [geometry.detector_affine(i).tolist() for i in range(A)],
        "detector_affine_meaning": "4x4 mapping (column j, row i, 0, 1) of each view to LPS mm",
        "display_window": list(display_window(drrs)),
    }
    meta = dict(meta or {})
    meta.pop("complete", None)
    data.update(meta)
    data.update(extra)
    timings = dict(data.get("timings_s") or {})
    timings["write"] = round(time.perf_counter() - t0, 4)
    data["timings_s"] = timings
    data["complete"] = True   # last key, in a file that only appears once whole
    _write_json(side, data)
    return out


def _write_nifti(drrs: np.ndarray, geometry: ProjectionGeometry, out: Path) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(drrs), isVector=False)  # size (W, H, A)
    dv, du = geometry.pixel_spacing
    img.SetSpacing((float(du), float(dv), 1.0))
    try:
        with atomic_path(out) as tmp:
            sitk.WriteImage(img, str(tmp), False)
    except RuntimeError as exc:
        raise InputError(f"could not write the DRR stack: {str(exc).strip().splitlines()[-1]}",
                         out) from exc


def _to_uint8(drrs: np.ndarray) -> np.ndarray:
    lo, hi = display_window(drrs)
    scaled = (drrs - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def write_pngs(drrs: np.ndarray, geometry: ProjectionGeometry, folder: Path,
               stem: str) -> List[str]:
    """One 8-bit PNG per view in radiology display (bone bright), windowed per stack. Each
    states its magnification in a ``Magnification`` text chunk, as the DICOMs do in
    EstimatedRadiographicMagnificationFactor, so that inference sizes the chest right."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = _to_uint8(drrs)
    info = PngInfo()
    info.add_text(PNG_MAGNIFICATION_KEY, f"{geometry.magnification:.8g}")
    names = []
    for i, angle in enumerate(geometry.angles):
        name = view_name(stem, i, angle) + ".png"
        with atomic_path(folder / name) as tmp:
            Image.fromarray(images[i]).save(tmp, format="PNG", pnginfo=info)
        names.append(name)
    _remove_stale(folder, stem, ".png", names)
    return names


def _remove_stale(folder: Path, stem: str, suffix: str, keep: List[str]) -> None:
    """Drop views of an earlier render of this stack (e.g. with more angles)."""
    for f in folder.glob(f"{stem}_[0-9][0-9][0-9]_angle*{suffix}"):
        if f.name not in keep:
            f.unlink()


# ----------------------------------------------------------------------------- DICOM
_LPS_LETTERS = (("R", "L"), ("A", "P"), ("F", "H"))


def orientation_letters(vector: Sequence[float]) -> str:
    """DICOM patient-orientation letter of a direction: its dominant LPS component."""
    v = np.asarray(vector, dtype=np.float64)
    k = int(np.argmax(np.abs(v)))
    return _LPS_LETTERS[k][1 if v[k] > 0 else 0]


def _ds(x: float) -> str:
    """A number as a DICOM decimal string (at most 16 characters)."""
    s = f"{float(x):.9g}"
    return s if len(s) <= 16 else f"{float(x):.6g}"


def _dicom_modules():
    """pydicom's (Dataset, FileMetaDataset, ExplicitVRLittleEndian, generate_uid, the
    implementation UID, whether pydicom is older than 3)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    try:
        from pydicom.uid import PYDICOM_IMPLEMENTATION_UID as impl_uid
    except ImportError:  # pragma: no cover - very old pydicom
        impl_uid = generate_uid()
    legacy = int(pydicom.__version__.split(".")[0]) < 3
    return Dataset, FileMetaDataset, ExplicitVRLittleEndian, generate_uid, impl_uid, legacy


def _dicom_series(drrs: np.ndarray, geometry: ProjectionGeometry, stem: str,
                  meta: Dict[str, Any], generate_uid) -> Dict[str, Any]:
    """What every view of a stack's DICOM series shares: UIDs, dates, the one rescale of the
    stack (so equal values mean equal attenuation), the display window, names."""
    lo_val = float(min(0.0, float(drrs.min()) if drrs.size else 0.0))
    hi_val = float(drrs.max()) if drrs.size else 0.0
    win_lo, win_hi = display_window(drrs)
    now = _dt.datetime.now()
    patient = str(meta.get("name") or stem)
    return {"intercept": _ds(lo_val), "slope": _ds(max(hi_val - lo_val, 1e-12) / 65535.0),
            "window": (win_lo, win_hi), "date": now.strftime("%Y%m%d"),
            "time": now.strftime("%H%M%S"), "study_uid": generate_uid(),
            "series_uid": generate_uid(), "frame_uid": generate_uid(),
            "patient": "DRR^" + "".join(c for c in patient if c.isalnum() or c in "_-")[:50],
            "description": f"DRR ({meta.get('method', 'unknown')})"[:64]}


def _dicom_geometry(ds, geometry: ProjectionGeometry, i: int, angle: float, u, v) -> None:
    """The view's position, orientation and spacing attributes."""
    dv, du = geometry.pixel_spacing
    mag = geometry.magnification
    ds.ViewPosition = view_position(angle)
    ds.PatientOrientation = [orientation_letters(u[i]), orientation_letters(v[i])]
    ds.ImageLaterality = "U"
    ds.ImageComments = f"DRR line integrals; gantry angle {angle:g} deg, tilt {geometry.tilt:g} deg"
    ds.DistanceSourceToDetector = _ds(geometry.sdd)
    ds.DistanceSourceToPatient = _ds(geometry.sod)
    ds.ImagerPixelSpacing = [_ds(dv), _ds(du)]
    ds.PixelSpacing = [_ds(dv / mag), _ds(du / mag)]
    ds.EstimatedRadiographicMagnificationFactor = _ds(mag)


def _dicom_pixels(ds, image: np.ndarray, series: Dict[str, Any]) -> None:
    """uint16 pixels whose rescale (shared by the series) gives the line integrals."""
    intercept, slope = float(series["intercept"]), float(series["slope"])
    win_lo, win_hi = series["window"]
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = -1   # higher value = less beam = more attenuation
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = series["intercept"], series["slope"], "US"
    ds.WindowCenter = _ds((win_lo + win_hi) / 2)
    ds.WindowWidth = _ds(max(win_hi - win_lo, 1e-6))
    # the window is in line-integral units (0..~6): DICOM's LINEAR function would move it by
    # its integer offsets (c - 0.5, w - 1), whitening everything above 80 % of the intended top
    ds.VOILUTFunction = "LINEAR_EXACT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(image.shape[0]), int(image.shape[1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    stored = np.clip(np.rint((image.astype(np.float64) - intercept) / slope), 0, 65535)
    ds.PixelData = stored.astype("<u2").tobytes()


def _dicom_view(modules, series: Dict[str, Any], stem: str, i: int):
    """The dataset of view ``i`` with its file meta, identity and series attributes."""
    Dataset, FileMetaDataset, explicit_le, generate_uid, impl_uid, legacy = modules
    sop_uid = generate_uid()
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    fm.MediaStorageSOPInstanceUID = sop_uid
    fm.TransferSyntaxUID = explicit_le
    fm.ImplementationClassUID = impl_uid
    ds = Dataset()
    ds.file_meta = fm
    if legacy:
        ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SOPClassUID, ds.SOPInstanceUID = DX_FOR_PRESENTATION, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = series["study_uid"], series["series_uid"]
    ds.FrameOfReferenceUID = series["frame_uid"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = series["date"]
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = series["time"]
    ds.Modality = "DX"
    ds.Manufacturer = "Xray2Xray"
    ds.SoftwareVersions = package_version()
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PatientName = series["patient"]
    ds.PatientID = stem[:64]
    ds.PatientBirthDate = ds.PatientSex = ds.AccessionNumber = ds.ReferringPhysicianName = ""
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, i + 1
    ds.SeriesDescription = series["description"]
    ds.BodyPartExamined = "CHEST"
    return ds


def write_dicoms(drrs: np.ndarray, geometry: ProjectionGeometry, folder: Path, stem: str,
                 meta: Dict[str, Any]) -> List[str]:
    """One DX (For Presentation) DICOM per view: uint16 pixels whose rescale gives the line
    integrals, one shared slope for the stack so equal values mean equal attenuation."""
    modules = _dicom_modules()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series = _dicom_series(drrs, geometry, stem, meta, modules[3])
    _, u, v = geometry.frames()
    names = []
    for i, angle in enumerate(geometry.angles):
        ds = _dicom_view(modules, series, stem, i)
        _dicom_geometry(ds, geometry, i, angle, u, v)
        _dicom_pixels(ds, drrs[i], series)
        name = view_name(stem, i, angle) + ".dcm"
        with atomic_path(folder / name) as tmp:
            try:
                ds.save_as(tmp, enforce_file_format=True)
            except TypeError:   # pydicom < 3
                ds.save_as(tmp, write_like_original=False)
        names.append(name)
    _remove_stale(folder, stem, ".dcm", names)
    return names


# ----------------------------------------------------------------------------- reading
class NotAStackError(InputError):
    """The file is no DRR stack at all: no sidecar beside it, or a JSON of another kind
    (e.g. a BIDS sidecar beside a CT)."""


@dataclass(frozen=True)
class StackMetadata:
    """A stack's sidecar, checked: the image it names, the exact geometry, the whole JSON."""

    image: Path
    sidecar: Path
    geometry: ProjectionGeometry
    data: Dict[str, Any]


def _sidecar_of(path: PathLike) -> Tuple[Path, Path]:
    """(image, sidecar) of a stack named by its image or its sidecar."""
    p = Path(path).expanduser()
    if p.suffix.lower() == ".json":
        return stack_path(p.with_suffix("")), p
    return stack_path(p), sidecar_path(p)


def _load_sidecar(side: Path) -> Dict[str, Any]:
    try:
        with open(side, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UnreadableFileError(f"the DRR stack sidecar is not valid JSON: {exc}", side) from exc
    if not isinstance(data, dict) or data.get("format") != STACK_FORMAT:
        raise NotAStackError(f"is not a DRR stack: {side.name} is not a {STACK_FORMAT} sidecar",
                             side)
    return data


def read_stack_metadata(path: PathLike) -> StackMetadata:
    """The checked sidecar of the stack at ``path`` (its NIfTI or its ``.json``), the one
    reader of the stack metadata. :class:`NotAStackError` when ``path`` is no DRR stack (no
    sidecar, or a JSON of another kind); :class:`InputError` for a stack that cannot be used:
    invalid JSON, interrupted (``complete`` not true), image missing, geometry unusable."""
    image, side = _sidecar_of(path)
    if not side.is_file():
        raise NotAStackError(f"is not a DRR stack: its metadata file {side.name} (written by "
                             "`xray2xray drr`) is missing beside it", Path(path).expanduser())
    data = _load_sidecar(side)
    if data.get("complete") is not True:
        raise InputError("the DRR stack is incomplete (the job writing it was interrupted); "
                         "render it again", side)
    if data.get("image"):
        image = side.with_name(str(data["image"]))
    if not image.is_file():
        raise FileNotFoundInputError("the DRR stack image named by its sidecar is missing", image)
    try:
        geometry = ProjectionGeometry.from_dict(data["geometry"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UnreadableFileError(f"the sidecar's geometry is unusable: {exc}", side) from None
    return StackMetadata(image, side, geometry, data)


def stack_complete(out_path: PathLike) -> bool:
    """True when the stack at ``out_path`` was written whole: sidecar with ``complete: true``
    and the image beside it. Used to skip finished work when a job is resumed."""
    try:
        read_stack_metadata(out_path)
    except (OSError, InputError):
        return False
    return True


def check_image_whole(image: Path, n_values: int) -> None:
    """:class:`UnreadableFileError` when a stack's NIfTI holds fewer bytes than its
    ``n_values`` float32 voxels need. ITK pads a truncated file instead of
    failing, so a reader would otherwise get half-zero views."""
    if image.name.lower().endswith(".gz"):
        import gzip
        import zlib
        size = 0
        try:
            with gzip.open(image, "rb") as f:
                while True:
                    chunk = f.read(1 << 22)
                    if not chunk:
                        break
                    size += len(chunk)
        except (EOFError, OSError, zlib.error) as exc:
            raise UnreadableFileError(f"the gzip stream is truncated or corrupt: {exc}",
                                      image) from None
    else:
        size = image.stat().st_size
    need = 348 + 4 * int(n_values)     # the smallest NIfTI-1 header, then float32 voxels
    if size < need:
        raise UnreadableFileError(f"the NIfTI file is truncated: {size} bytes"
                                  f"{' (decompressed)' if image.name.lower().endswith('.gz') else ''}"
                                  f", its {n_values} float32 values need at least {need}", image)


def read_drr_stack(path: PathLike) -> Tuple[np.ndarray, ProjectionGeometry, Dict[str, Any]]:
    """Read a stack written by :func:`write_drr_stack`: (drrs [A, H, W] float32, geometry, sidecar).

    ``path`` is the NIfTI image or its ``.json``. A file without a sidecar (for example a CT)
    or an interrupted stack is refused with a message naming it.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundInputError("no such file or folder", p)
    meta = read_stack_metadata(p)
    image, geometry = meta.image, meta.geometry

    import SimpleITK as sitk
    check_image_whole(image, geometry.n_angles * int(np.prod(geometry.detector_shape)))
    try:
        img = sitk.ReadImage(str(image), sitk.sitkFloat32)
    except RuntimeError as exc:
        raise UnreadableFileError("could not read the DRR stack image (truncated or corrupt?)",
                                  image) from exc
    if img.GetDimension() != 3:
        raise UnreadableFileError(f"a DRR stack image is 3D, this one is {img.GetDimension()}D",
                                  image)
    drrs = sitk.GetArrayFromImage(img)   # (z, y, x) = (angle, row, column)
    want = (geometry.n_angles,) + tuple(geometry.detector_shape)
    if drrs.shape != want:
        raise UnreadableFileError(f"image shape {drrs.shape} does not match its sidecar "
                                  f"({want[0]} angles, detector {want[1]}x{want[2]})", image)
    if not np.isfinite(drrs).all():
        raise UnreadableFileError("the DRR stack holds NaN or infinite values", image)
    return drrs.astype(np.float32, copy=False), geometry, meta.data

"""CT volumes in and out: NIfTI, NRRD, MetaImage and DICOM series, as :class:`Volume`.

SimpleITK does the decoding because ITK's physical space already is DICOM's LPS, so no axis
flips are needed: we only reorder the array to (x, y, z) and fold spacing, direction and
origin into one affine. Everything a user can get wrong (missing file, wrong kind of image,
truncated data, NaNs) is turned into a typed :mod:`XrayWorldModel.errors` exception that
names the file, instead of an ITK or numpy traceback.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import (EmptyFolderError, FileNotFoundInputError, InputError, NonFiniteDataError,
                      NotAVolumeError, PathLike, UnreadableFileError)
from ..volume import Volume

log = logging.getLogger(__name__)

#: File-name endings we read and write as volumes, and the format each one means.
VOLUME_EXTENSIONS: Dict[str, str] = {
    ".nii.gz": "nifti", ".nii": "nifti",
    ".nrrd": "nrrd", ".nhdr": "nrrd",
    ".mha": "metaimage", ".mhd": "metaimage",
}

#: DICOM modalities that are projection radiographs (one 2D image), never CT volumes.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "RG", "MG", "RF", "XA", "PX", "IO"})
#: Modalities accepted as CT: CT itself, and none/"other" (what converters often write).
CT_MODALITIES = frozenset({"CT", "", "OT"})
#: A step between slice positions larger than this times the median step is a gap.
MAX_GAP_RATIO = 1.5
#: Positions closer than this (mm) along the slice normal are the same slice.
SAME_POSITION_MM = 1e-3

_MAGIC = ((b"\x89PNG", "PNG image"), (b"\xff\xd8\xff", "JPEG image"), (b"II*\x00", "TIFF image"),
          (b"MM\x00*", "TIFF image"), (b"BM", "BMP image"))
_BITMAPS = {"PNG image", "JPEG image", "TIFF image", "BMP image"}


class MultipleSeriesWarning(UserWarning):
    """A DICOM folder held several series and one was picked automatically."""


class SkippedDicomWarning(UserWarning):
    """Files in a DICOM folder that could not be parsed were left out of the series."""


class NonUniformSliceWarning(UserWarning):
    """DICOM slice positions are unevenly spaced (missing slices?); the volume assumes even."""


# --------------------------------------------------------------------------- shared helpers
def require_exists(path: PathLike) -> Path:
    """Return ``path`` as a Path, or raise FileNotFoundInputError naming it."""
    p = Path(path).expanduser()
    if not p.exists():
        where = "" if p.parent.exists() else f" (its folder {p.parent} does not exist either)"
        raise FileNotFoundInputError(f"no such file or folder{where}", p)
    return p


def format_from_suffix(path: PathLike) -> Optional[str]:
    """Volume format implied by the file name, or None."""
    name = Path(path).name.lower()
    for ext, fmt in VOLUME_EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    return None


def looks_like_dicom(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble; trust a .dcm name too."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as exc:
        raise UnreadableFileError(f"cannot open the file: {exc.strerror or exc}", path) from exc
    return head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".dicom", ".ima")


def read_dicom_header(path: Path):
    """pydicom header without pixel data (cheap); UnreadableFileError when it does not parse."""
    import pydicom
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:  # InvalidDicomError, EOFError, struct errors on truncated headers
        raise UnreadableFileError(dicom_failure(path, exc), path) from exc


def dicom_failure(path: Path, exc: BaseException) -> str:
    """Why a file could not be read as DICOM, in words for people (never pydicom's advice to
    pass ``force=True``)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as err:
        return f"cannot open the file: {err.strerror or err}"
    if size == 0:
        return "is an empty file (0 bytes), not a DICOM image"
    if head[128:132] != b"DICM":
        kind = "a text file" if _is_text(head) else "not a DICOM file"
        return f"is {kind}: it has no DICOM header (a .dcm name alone does not make a DICOM file)"
    return f"is a corrupt or truncated DICOM file ({_first_line(exc).split(' Use force')[0]})"


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(b >= 32 or b in (9, 10, 13) for b in head)


def _sniff_format(p: Path) -> str:
    """Name the format of a file ITK could open but that has no volume extension."""
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError:
        head = b""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return (p.suffix.lstrip(".") or "unknown") + " file"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


#: ITK's wording of common failures, and what they mean to a person.
_ITK_WORDS = (("Unable to determine ImageIO reader", "no image reader recognises its contents"),
              ("File cannot be read", "its header cannot be parsed"),
              ("Could not create IO object for writing", "no image writer for this file name"))


def itk_reason(exc: BaseException) -> str:
    """Why ITK failed, in words for people: known failures translated, otherwise the root
    cause without source paths, object addresses and library prefixes."""
    text = str(exc)
    for key, words in _ITK_WORDS:
        if key in text:
            return words
    nrrd = [line.split(": ", 1)[1] for line in text.splitlines()
            if line.startswith("[nrrd]") and ": " in line]
    if nrrd:   # teem reports a chain of callers; the last line is the cause
        return " ".join(nrrd[-1].split())[:300]
    m = re.search(r"(?:ITK ERROR|itk::ERROR|sitk::ERROR):\s*(?:\w+\(0x[0-9a-fA-F]+\):\s*)?(.*)",
                  text, re.S)
    reason = (m.group(1) if m else text).strip()
    # MetaIO reports a short read with a stale errno; that "reason" would only mislead.
    reason = re.sub(r"\s*Reason: No such file or directory", "", reason)
    reason = " ".join(reason.split())
    return reason[:300] if reason else type(exc).__name__


@contextmanager
def native_output_silenced() -> Iterator[None]:
    """Send what C++ code prints straight to the process's stdout and stderr (MetaIO's parse
    errors, GDCM's warnings) to the null device while ITK reads a file: failures reach the
    user as typed errors, never as raw library lines. A no-op where the descriptors cannot
    be redirected."""
    saved = []
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        null = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):
        yield
        return
    try:
        for fd in (1, 2):
            try:
                saved.append((fd, os.dup(fd)))
                os.dup2(null, fd)
            except OSError:
                pass
        yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        os.close(null)


def _size_text(size) -> str:
    return "x".join(str(int(s)) for s in size)


def _check_volume_shape(dim: int, size, ncomp: int, path: Path, what: str) -> None:
    """Reject anything that is not one scalar 3D grid, before reading the voxels."""
    if ncomp > 1:
        raise NotAVolumeError(
            f"{what} has {ncomp} components per voxel (a colour or vector image); a CT volume "
            "has one value (HU) per voxel", path)
    hint = "; a radiograph is the input of `xray2xray infer`" if what in _BITMAPS else ""
    if dim == 2:
        raise NotAVolumeError(
            f"is a 2D image ({what}, {_size_text(size)} pixels), not a 3D CT volume{hint}", path)
    if dim == 4 and size[3] == 1:
        size = size[:3]
        dim = 3
    if dim != 3:
        raise NotAVolumeError(f"is a {dim}D image ({_size_text(size)}); a CT volume is 3D", path)
    if min(size) < 2:
        raise NotAVolumeError(
            f"holds a single 2D slice ({what}, size {_size_text(size)}), not a 3D CT volume: "
            f"a volume needs at least 2 voxels along every axis{hint}", path)


def zyx_to_xyz(src: np.ndarray, slope: float = 1.0, inter: float = 0.0) -> np.ndarray:
    """(z, y, x) buffer -> C-contiguous float32 (x, y, z), optionally ``src * slope + inter``.

    Slice by slice, because one big strided transpose is about twice as slow and would need
    a float copy of the whole volume first.
    """
    nz, ny, nx = src.shape
    out = np.empty((nx, ny, nz), dtype=np.float32)
    wide = src.dtype.kind in "iu" and src.dtype.itemsize > 2   # beyond float32's exact range
    for k in range(nz):
        sl = src[k].T
        if slope != 1.0 or inter != 0.0:
            sl = sl.astype(np.float64 if wide else np.float32) * slope + inter
        out[:, :, k] = sl
    return out


def _affine(spacing, direction, origin) -> np.ndarray:
    """ITK geometry (any dimension >= 3; extra axes dropped) -> 4x4 index-to-LPS affine."""
    n = len(spacing)
    d = np.asarray(direction, dtype=np.float64).reshape(n, n)[:3, :3]
    affine = np.eye(4)
    affine[:3, :3] = d @ np.diag(np.asarray(spacing[:3], dtype=np.float64))
    affine[:3, 3] = origin[:3]
    return affine


def _make_volume(array: np.ndarray, affine: np.ndarray, path: Path, metadata: dict,
                 check_finite: bool) -> Volume:
    if check_finite:   # integer voxels cannot be NaN/inf, so callers skip the scan for them
        bad = array.size - int(np.count_nonzero(np.isfinite(array)))
        if bad:
            raise NonFiniteDataError(
                f"{bad} of {array.size} voxels are NaN or infinite (or overflow float32); "
                "a CT volume must hold finite HU values", path)
    meta = {"source": str(path),
            "spacing": tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))}
    meta.update(metadata)
    return Volume(array, affine, meta)


def image_to_volume(img: sitk.Image, path: Path, metadata: dict) -> Volume:
    """ITK image -> Volume: float32 HU in (x, y, z) order and affine = D @ diag(spacing), origin."""
    if img.GetDimension() == 4:
        img = img[:, :, :, 0]
    was_float = img.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64)
    try:
        if img.GetPixelID() != sitk.sitkFloat32:
            img = sitk.Cast(img, sitk.sitkFloat32)
    except RuntimeError as exc:
        raise UnreadableFileError(
            f"voxel type {img.GetPixelIDTypeAsString()} cannot be converted to float: "
            f"{itk_reason(exc)}", path) from exc
    array = zyx_to_xyz(sitk.GetArrayViewFromImage(img))
    affine = _affine(img.GetSpacing(), img.GetDirection(), img.GetOrigin())
    return _make_volume(array, affine, path, metadata, check_finite=was_float)


# NIfTI voxel reading. nifticlib (inside ITK) silently turns NaN/inf into 0 and pads truncated
# files, so NIfTI voxels are read here with numpy; the geometry still comes from ITK, which
# owns the qform/sform-to-LPS logic.
_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2",
                 768: "u4", 1024: "i8", 1280: "u8"}


def nifti_pixdim(head: bytes) -> Optional[np.ndarray]:
    """The three voxel sizes (pixdim[1:4]) a NIfTI-1/2 header stores, or None if not NIfTI.

    ITK replaces a zero or missing pixdim with 1 mm without a word, so it is read here."""
    for endian in "<>":
        size = int(np.frombuffer(head[:4], endian + "i4")[0]) if len(head) >= 4 else 0
        if size == 348 and len(head) >= 348:
            return np.frombuffer(head[80:92], endian + "f4").astype(np.float64)
        if size == 540 and len(head) >= 540:
            return np.frombuffer(head[112:136], endian + "f8").astype(np.float64)
    return None


def check_spacing(spacing, path: Path, what: str = "header") -> None:
    """Refuse zero, negative or non-finite voxel spacing: every distance would be wrong."""
    values = np.asarray(spacing, dtype=np.float64)[:3]
    if not (np.all(np.isfinite(values)) and np.all(values > 0)):
        text = " x ".join(f"{v:g}" for v in values)
        raise InputError(f"the voxel spacing in its {what} is {text} mm; it must be positive "
                         "and finite (re-export the volume with its real spacing)", path)


def _nifti_header(head: bytes):
    """(endian, dims, datatype, vox_offset, slope, inter) of a NIfTI-1/2 header, or None."""
    for endian in "<>":
        size = int(np.frombuffer(head[:4], endian + "i4")[0]) if len(head) >= 4 else 0
        if size == 348 and len(head) >= 348:
            dim = np.frombuffer(head[40:56], endian + "i2").astype(np.int64)
            dtype = int(np.frombuffer(head[70:72], endian + "i2")[0])
            off, slope, inter = np.frombuffer(head[108:120], endian + "f4").astype(np.float64)
            return endian, dim, dtype, int(off), slope, inter
        if size == 540 and len(head) >= 540:
            dtype = int(np.frombuffer(head[12:14], endian + "i2")[0])
            dim = np.frombuffer(head[16:80], endian + "i8")
            off = int(np.frombuffer(head[168:176], endian + "i8")[0])
            slope, inter = np.frombuffer(head[176:192], endian + "f8")
            return endian, dim, dtype, off, float(slope), float(inter)
    return None


def _read_nifti_voxels(p: Path, size) -> Optional[Tuple[np.ndarray, bool]]:
    """(float32 (x, y, z) array, was_float) read with numpy; None when the header is unusual."""
    gz = p.name.lower().endswith(".gz")
    try:
        if gz:
            import gzip
            import zlib
            try:
                with gzip.open(p, "rb") as f:
                    buf = f.read()
            except (EOFError, OSError, zlib.error) as exc:
                raise UnreadableFileError(
                    f"the gzip stream is truncated or corrupt: {_first_line(exc)}", p) from exc
        else:
            with open(p, "rb") as f:
                buf = f.read()
    except MemoryError:
        return None
    hdr = _nifti_header(buf[:540])
    if hdr is None:
        return None
    check_spacing(nifti_pixdim(buf[:540]), p, "NIfTI header (pixdim)")
    endian, dim, dtype_code, off, slope, inter = hdr
    if dtype_code not in _NIFTI_DTYPES or off < 348:
        return None
    nx, ny, nz = (int(s) for s in size[:3])
    n_dims = int(dim[0])
    if n_dims < 3 or list(dim[1:4]) != [nx, ny, nz] or any(int(d) > 1 for d in dim[4:n_dims + 1]):
        return None
    dtype = np.dtype(endian + _NIFTI_DTYPES[dtype_code])
    need = off + nx * ny * nz * dtype.itemsize
    if len(buf) < need:
        raise UnreadableFileError(
            f"the NIfTI file is truncated: its voxel data should end at byte {need} but the "
            f"{'decompressed ' if gz else ''}file has {len(buf)} bytes", p)
    raw = np.frombuffer(buf, dtype=dtype, count=nx * ny * nz, offset=off).reshape(nz, ny, nx)
    scaled = bool(np.isfinite(slope) and slope != 0 and (slope != 1 or inter != 0))
    array = zyx_to_xyz(raw, slope if scaled else 1.0, inter if scaled else 0.0)
    return array, dtype.kind == "f" or scaled


# --------------------------------------------------------------------------------- reading
def read_ct(path: PathLike, series_uid: Optional[str] = None) -> Volume:
    """Read a CT as a float32 HU :class:`Volume` in LPS.

    ``path`` is a NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd) file, a
    folder holding a DICOM series, or one DICOM slice (its whole series is read from its
    folder). When a folder holds several series the largest CT series is read and a
    :class:`MultipleSeriesWarning` names the others; ``series_uid`` picks one explicitly.
    """
    p = require_exists(path)
    if p.is_dir():
        return _read_dicom_folder(p, series_uid)
    if looks_like_dicom(p):
        return _read_dicom_file(p, series_uid)
    if series_uid is not None:
        raise InputError("series_uid= only applies to DICOM input, and this is not a DICOM "
                         "file or folder", p)
    return _read_itk_file(p)


def _read_itk_file(p: Path, fmt: Optional[str] = None) -> Volume:
    fmt = fmt or format_from_suffix(p)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        with native_output_silenced():
            reader.ReadImageInformation()
    except RuntimeError as exc:
        if fmt is None:
            raise UnreadableFileError(
                "not a readable volume: unrecognised file format (expected NIfTI .nii/.nii.gz, "
                "NRRD .nrrd/.nhdr, MetaImage .mha/.mhd, or a DICOM series folder)", p) from exc
        raise UnreadableFileError(
            f"could not read the {fmt} header (corrupt or truncated file?): {itk_reason(exc)}",
            p) from exc
    what = fmt or _sniff_format(p)
    _check_volume_shape(reader.GetDimension(), reader.GetSize(),
                        reader.GetNumberOfComponents(), p, what)
    check_spacing(reader.GetSpacing(), p, f"{what} header")
    meta = {"format": what}
    if what == "nifti":
        got = _read_nifti_voxels(p, reader.GetSize())
        if got is not None:
            array, was_float = got
            affine = _affine(reader.GetSpacing(), reader.GetDirection(), reader.GetOrigin())
            return _make_volume(array, affine, p, meta, check_finite=was_float)
    try:
        with native_output_silenced():
            img = reader.Execute()
    except RuntimeError as exc:
        raise UnreadableFileError(
            f"could not read the voxel data (file truncated or corrupt?): {itk_reason(exc)}",
            p) from exc
    return image_to_volume(img, p, meta)


def _read_dicom_file(p: Path, series_uid: Optional[str]) -> Volume:
    ds = read_dicom_header(p)
    if len(ds) == 0:
        raise UnreadableFileError("the DICOM file holds no data elements (truncated?)", p)
    modality = str(ds.get("Modality", "") or "").upper()
    if modality in RADIOGRAPH_MODALITIES:
        raise NotAVolumeError(
            f"looks like a radiograph (DICOM Modality {modality}, one 2D image of "
            f"{ds.get('Columns', '?')}x{ds.get('Rows', '?')} pixels), not a CT volume; "
            "a radiograph is the input of `xray2xray infer`", p)
    check_ct_modality(modality, p)
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:   # enhanced / multi-frame: one file is a volume
        return _read_itk_file(p, "dicom")
    uid = str(ds.get("SeriesInstanceUID", "") or "") or None
    if series_uid is not None and uid != series_uid:
        raise InputError(f"series_uid={series_uid!r} was requested but this file belongs to "
                         f"series {uid!r}", p)
    return _read_dicom_folder(p.parent, uid, given_file=p)


class _Series:
    """One DICOM series found in a folder: its files and what its first header says."""

    def __init__(self, uid: str, files: List[str]):
        self.uid, self.files = uid, files
        self.modality = self.description = ""
        self.header = None
        try:
            self.header = read_dicom_header(Path(files[0]))
            self.modality = str(self.header.get("Modality", "") or "").upper()
            self.description = str(self.header.get("SeriesDescription", "") or "")
        except InputError:
            pass

    def __str__(self) -> str:
        desc = f", '{self.description}'" if self.description else ""
        return f"{self.uid} ({len(self.files)} files, {self.modality or 'modality ?'}{desc})"


def _find_series(folder: Path) -> List[_Series]:
    entries = list(folder.iterdir())
    if not entries:  # checked first: GDCM would print its own warning to stderr
        raise EmptyFolderError("folder is empty; expected a DICOM series", folder)
    try:
        with native_output_silenced():
            uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as exc:
        raise UnreadableFileError(f"could not scan the folder for DICOM: {itk_reason(exc)}",
                                  folder) from exc
    if not uids:
        subdirs = sum(1 for e in entries if e.is_dir())
        hint = (f"; it has {subdirs} subfolder(s): point at the folder that holds the DICOM files"
                if subdirs else "")
        raise EmptyFolderError(
            f"folder holds no DICOM series ({len(entries) - subdirs} file(s), none readable as "
            f"DICOM image slices){hint}", folder)
    return [_Series(uid, list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)))
            for uid in uids]


def _warn_skipped(folder: Path, listed) -> None:
    """GDCM silently drops DICOM files it cannot parse; a dropped slice must not go unnoticed."""
    skipped = []
    for e in sorted(folder.iterdir()):
        if e.is_file() and e.name not in listed and e.name.upper() != "DICOMDIR":
            try:
                if looks_like_dicom(e):
                    skipped.append(e.name)
            except InputError:
                skipped.append(e.name)
    if skipped:
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        names = ", ".join(skipped[:5]) + more
        msg = (f"{folder}: skipped {len(skipped)} DICOM file(s) that could not be read as image "
               f"slices (truncated or corrupt?): {names}")
        log.warning(msg)
        warnings.warn(msg, SkippedDicomWarning, stacklevel=4)


def _read_dicom_folder(folder: Path, series_uid: Optional[str],
                       given_file: Optional[Path] = None) -> Volume:
    where = given_file or folder
    try:
        series = _find_series(folder)
    except EmptyFolderError as exc:
        if given_file is None:
            raise
        raise UnreadableFileError("the DICOM header parses but the file is not a readable image "
                                  "slice (truncated or corrupt pixel data?)", given_file) from exc
    listed = {Path(f).name for s in series for f in s.files}
    if given_file is not None and given_file.name not in listed:
        raise UnreadableFileError("the DICOM header parses but the file is not a readable image "
                                  "slice (truncated or corrupt pixel data?)", given_file)
    if given_file is None:
        _warn_skipped(folder, listed)
    if series_uid is not None:
        match = [s for s in series if s.uid == series_uid]
        if not match:
            listing = "; ".join(str(s) for s in series)
            raise InputError(f"no DICOM series with SeriesInstanceUID {series_uid!r} here; "
                             f"available: {listing}", folder)
        chosen = match[0]
    else:
        volumetric = [s for s in series if s.modality not in RADIOGRAPH_MODALITIES]
        if not volumetric:
            raise NotAVolumeError(
                "folder holds only radiograph series (" + "; ".join(str(s) for s in series)
                + "), not a CT volume; a radiograph is the input of `xray2xray infer`", folder)
        chosen = max(volumetric, key=lambda s: (s.modality == "CT", len(s.files), s.uid))
        if len(series) > 1:
            others = "; ".join(str(s) for s in series if s is not chosen)
            msg = (f"{folder}: holds {len(series)} DICOM series; reading the largest CT series "
                   f"{chosen}. Others: {others}. To read another, give a folder that holds "
                   "only that series.")
            log.info(msg)
            warnings.warn(msg, MultipleSeriesWarning, stacklevel=3)
    if len(chosen.files) < 2:
        raise NotAVolumeError(
            f"DICOM series {chosen.uid} has a single 2D slice here, not a 3D CT volume: give "
            "the folder of the whole series (all its slices)", where)
    check_ct_modality(chosen.modality, where)
    check_slice_positions([Path(f) for f in chosen.files], where)

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(chosen.files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    try:
        with native_output_silenced():
            img = reader.Execute()
    except RuntimeError as exc:
        raise UnreadableFileError(
            f"could not read DICOM series {chosen.uid} ({len(chosen.files)} files; a slice may "
            f"be truncated or corrupt): {itk_reason(exc)}", where) from exc
    _check_volume_shape(img.GetDimension(), img.GetSize(), img.GetNumberOfComponentsPerPixel(),
                        where, "DICOM series")
    _warn_if_uneven(reader, img, where)
    meta = _dicom_metadata(chosen, series)
    return image_to_volume(img, where, meta)


def check_ct_modality(modality: str, where: Path) -> None:
    """Refuse a volume of another modality (MR, PET, ...): its values are not HU."""
    if modality.upper() not in CT_MODALITIES:
        raise NotAVolumeError(f"is a DICOM {modality} image, not CT: DRRs and the model need "
                              "CT Hounsfield units", where)


def _slice_geometry(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """(ImagePositionPatient, ImageOrientationPatient) of one slice, from its header only."""
    import pydicom
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True,
                             specific_tags=["ImagePositionPatient", "ImageOrientationPatient"])
        return (np.asarray([float(v) for v in ds.ImagePositionPatient]),
                np.asarray([float(v) for v in ds.ImageOrientationPatient]))
    except Exception as exc:   # missing tags, unparsable numbers, truncated header
        raise UnreadableFileError(f"a slice has no usable position/orientation in its header "
                                  f"({_first_line(exc)})", path) from exc


def check_slice_positions(files: List[Path], where: Path) -> None:
    """Refuse a series that is not one evenly sampled stack: slices that repeat a position
    (two copies of a slice), disagree on orientation, or leave a gap of more than
    :data:`MAX_GAP_RATIO` times the median step (missing slices)."""
    geometry = [_slice_geometry(f) for f in files]
    orientation = geometry[0][1]
    for f, (_, iop) in zip(files, geometry):
        if iop.shape != (6,) or not np.allclose(iop, orientation, atol=1e-4):
            raise InputError(f"slices disagree on orientation ({f.name} differs from "
                             f"{files[0].name}): not one CT stack", where)
    normal = np.cross(orientation[:3], orientation[3:])
    depth = np.array([pos @ normal for pos, _ in geometry])
    order = np.argsort(depth)
    steps = np.diff(depth[order])
    repeated = np.flatnonzero(steps < SAME_POSITION_MM)
    if repeated.size:
        a, b = (files[order[k]].name for k in (repeated[0], repeated[0] + 1))
        raise InputError(f"slices {a} and {b} repeat one position ({depth[order[repeated[0]]]:.2f} "
                         "mm along the slice normal): two copies of a slice are not a volume; "
                         "keep one copy of each slice", where)
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > MAX_GAP_RATIO * median)
    if gaps.size:
        k = gaps[0]
        raise InputError(f"a gap of {steps[k]:.2f} mm between slices {files[order[k]].name} and "
                         f"{files[order[k + 1]].name} (median step {median:.2f} mm): slices are "
                         "missing from the series", where)


def _warn_if_uneven(reader: sitk.ImageSeriesReader, img: sitk.Image, where: Path) -> None:
    """ITK assumes even slice spacing; say so when the positions disagree (missing slices)."""
    try:
        pos = np.array([[float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")]
                        for i in range(img.GetSize()[2])])
    except (RuntimeError, ValueError):
        return
    normal = np.asarray(img.GetDirection()).reshape(3, 3)[:, 2]
    gaps = np.diff(pos @ normal)
    if gaps.size and np.ptp(gaps) > max(0.01 * abs(float(np.median(gaps))), 1e-3):
        msg = (f"{where}: DICOM slice spacing is not uniform ({gaps.min():.3g}..{gaps.max():.3g} "
               f"mm; missing slices?); the volume assumes {img.GetSpacing()[2]:.4g} mm")
        log.warning(msg)
        warnings.warn(msg, NonUniformSliceWarning, stacklevel=4)


def _dicom_metadata(chosen: _Series, series: List[_Series]) -> dict:
    meta = {"format": "dicom", "series_uid": chosen.uid, "modality": chosen.modality or None,
            "series_description": chosen.description or None, "n_files": len(chosen.files),
            "other_series": [s.uid for s in series if s is not chosen]}
    ds = chosen.header
    if ds is not None:
        for key, tag in (("study_uid", "StudyInstanceUID"), ("patient_position", "PatientPosition"),
                         ("manufacturer", "Manufacturer"), ("body_part", "BodyPartExamined"),
                         ("slice_thickness", "SliceThickness"), ("kvp", "KVP"),
                         ("convolution_kernel", "ConvolutionKernel")):
            val = ds.get(tag)
            if val not in (None, ""):
                meta[key] = float(val) if tag in ("SliceThickness", "KVP") else str(val)
        iop = ds.get("ImageOrientationPatient")
        if iop is not None:
            meta["image_orientation_patient"] = tuple(float(v) for v in iop)
        for key, tag in (("rescale_slope", "RescaleSlope"),
                         ("rescale_intercept", "RescaleIntercept")):
            if ds.get(tag) is not None:
                meta[key] = float(ds.get(tag))
    return meta


# --------------------------------------------------------------------------------- writing
def write_volume(volume: Volume, path: PathLike, compress: bool = True) -> Path:
    """Write ``volume`` as NIfTI, NRRD or MetaImage, chosen by the file-name ending.

    The array keeps its dtype and the affine is stored as spacing/direction/origin, so reading
    the file back gives the same affine (to float32 precision for NIfTI, whose header is
    float32). ``compress`` applies to .nrrd/.mha/.mhd (.nii.gz is always compressed).
    Returns the path written.
    """
    p = Path(path).expanduser()
    fmt = format_from_suffix(p)
    if fmt is None:
        known = ", ".join(VOLUME_EXTENSIONS)
        raise InputError(f"cannot tell the output format from the file name; use one of {known}",
                         p)
    array = np.asarray(volume.array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)
    if array.ndim != 3 or array.dtype.kind not in "biuf":
        raise InputError(f"cannot write a {array.ndim}D array of dtype {array.dtype}; expected a "
                         "3D numeric array", p)
    affine = np.asarray(volume.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or \
            not np.allclose(affine[3], [0, 0, 0, 1]):
        raise InputError("the volume's affine is not a finite 4x4 matrix with last row 0 0 0 1", p)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"the volume's affine has a zero-length axis (spacing {spacing})", p)
    direction = affine[:3, :3] / spacing
    if abs(np.linalg.det(direction)) < 1e-6:
        raise InputError("the volume's affine is singular (axes are parallel)", p)

    img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)), isVector=False)
    img.SetSpacing(spacing.tolist())
    img.SetDirection(direction.ravel().tolist())
    img.SetOrigin(affine[:3, 3].tolist())
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(p))
    writer.SetUseCompression(bool(compress) and fmt != "nifti")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        writer.Execute(img)
    except (RuntimeError, OSError) as exc:
        reason = itk_reason(exc) if isinstance(exc, RuntimeError) else str(exc)
        raise InputError(f"could not write the {fmt} file: {reason}", p) from exc
    return p

"""Tests for XrayWorldModel.io: CT/CXR readers and the volume writer.

Everything is exercised on real files: volumes and DICOM written to tmp_path with SimpleITK,
pydicom and Pillow, plus the real chest CT and PA radiograph in ../shared/data (those tests
skip when the folder is absent).
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1,
                         JPEGLSLossless, RLELossless, generate_uid)

from XrayWorldModel import errors
from XrayWorldModel.io import (DEFAULT_CXR_SPACING_MM, DefaultSpacingWarning,
                               MultipleSeriesWarning, NonUniformSliceWarning,
                               SkippedDicomWarning, read_ct, read_cxr, write_volume)
from XrayWorldModel.volume import Volume

CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"
CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"


# ------------------------------------------------------------------------------- helpers
def write_ct_series(folder: Path, hu: np.ndarray, spacing=(0.7, 0.8, 2.5),
                    origin=(-10.0, 20.0, 30.0), uid=None, desc="series", modality="CT"):
    """Write ``hu`` (x, y, z) as axial DICOM slices with SimpleITK, stored as HU + 1024."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = uid or generate_uid()
    study = generate_uid()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(hu.shape[2]):
        # GDCM treats the pixels as real-world values and stores (value - intercept) / slope.
        sl = sitk.GetImageFromArray(np.ascontiguousarray(hu[:, :, k].T.astype(np.int16)))
        sl.SetSpacing(spacing[:2])
        pos = (origin[0], origin[1], origin[2] + k * spacing[2])
        tags = {"0008|0060": modality, "0020|000e": uid, "0020|000d": study,
                "0008|103e": desc, "0020|0032": "\\".join(f"{v:.6f}" for v in pos),
                "0020|0037": "1\\0\\0\\0\\1\\0", "0020|0013": str(k + 1),
                "0028|1052": "-1024", "0028|1053": "1", "0028|1054": "HU",
                "0008|0018": generate_uid(), "0008|0016": CT_SOP_CLASS,
                "0018|0050": str(spacing[2])}
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{desc}_{k:03d}.dcm"))
        writer.Execute(sl)
    return uid


def make_cr(path: Path, pixels: np.ndarray, photometric="MONOCHROME2", bits=12, window=None,
            pixel_spacing=None, imager_spacing=None, rescale=None, modality="CR", view="PA"):
    """Write a minimal uncompressed CR DICOM with pydicom; returns the dataset."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CR_SOP_CLASS, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    if view is not None:
        ds.ViewPosition = view
    ds.Manufacturer = "TestVendor"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    if imager_spacing is not None:
        ds.ImagerPixelSpacing = list(imager_spacing)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


def chest_like(rows=48, cols=40) -> np.ndarray:
    """12-bit test pattern with every value distinct enough to catch reordering."""
    r, c = np.mgrid[0:rows, 0:cols]
    return ((r * 61 + c * 17) % 4096).astype(np.uint16)


def linear_window(x, center, width):
    """DICOM PS3.3 C.11.2.1.2 LINEAR window, mapped to [0, 1]."""
    return np.clip((np.asarray(x, np.float64) - (center - 0.5)) / (width - 1) + 0.5, 0, 1)


def assert_input_error(excinfo, path: Path, *phrases):
    msg = str(excinfo.value)
    assert path.name in msg, msg
    for phrase in phrases:
        assert phrase.lower() in msg.lower(), msg


def oblique_affine(seed=0, spacing=(0.7031, 0.8123456789, 2.5)):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    affine = np.eye(4)
    affine[:3, :3] = q @ np.diag(spacing)
    affine[:3, 3] = [-166.123456789, 187.59687805, -340.3]
    return affine


# --------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def real_ct(shared_data):
    path = shared_data / "chest_ct.nii.gz"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path, read_ct(path)


@pytest.fixture(scope="module")
def real_cr(shared_data):
    path = shared_data / "chest_cr_pa.dcm"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cxr = read_cxr(path)
    return path, cxr, caught


def test_real_ct_shape_spacing_and_lps_affine(real_ct):
    path, vol = real_ct
    assert vol.shape == (512, 512, 133)
    assert vol.array.dtype == np.float32 and vol.array.flags.c_contiguous
    np.testing.assert_allclose(vol.spacing, (0.703125, 0.703125, 2.5), atol=1e-4)
    assert vol.metadata["format"] == "nifti" and vol.metadata["source"] == str(path)
    assert vol.array.min() == -2048 and vol.array.max() == 3071   # README's HU range
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    ref = sitk.Image([2, 2, 2], sitk.sitkUInt8)   # geometry only; indices need not be inside
    ref.SetSpacing(reader.GetSpacing())
    ref.SetOrigin(reader.GetOrigin())
    ref.SetDirection(reader.GetDirection())
    for ijk in [(0, 0, 0), (511, 0, 0), (0, 511, 0), (0, 0, 132), (100, 200, 50), (511, 511, 132)]:
        np.testing.assert_allclose(vol.index_to_lps(ijk),
                                   ref.TransformIndexToPhysicalPoint(ijk), atol=1e-6)


def test_real_ct_voxels_match_simpleitk(real_ct):
    """NIfTI voxels are read with numpy (see ct.py); they must equal ITK's for clean data."""
    path, vol = real_ct
    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayViewFromImage(img)          # (z, y, x)
    for k in (0, 66, 132):
        np.testing.assert_array_equal(vol.array[:, :, k], arr[k].T)


def test_real_cxr_monochrome1_inverted_bone_bright(real_cr):
    path, cxr, _ = real_cr
    assert cxr.shape == (1955, 1841)
    assert cxr.image.dtype == np.float32
    assert 0.0 <= cxr.image.min() and cxr.image.max() <= 1.0
    md = cxr.metadata
    assert md["photometric_interpretation"] == "MONOCHROME1" and md["inverted"] is True
    assert md["modality"] == "CR" and md["rows"] == 1955 and md["columns"] == 1841
    assert md["window"] == {"kind": "window", "center": 15000.0, "width": 30000.0,
                            "function": "LINEAR"}
    assert cxr.view_position == "PA" and md["bits_stored"] == 15
    assert md["manufacturer"].startswith("Philips")
    h, w = cxr.shape
    rows = slice(int(0.35 * h), int(0.65 * h))
    strip = lambda f: float(cxr.image[rows, int(f * w) - w // 20:int(f * w) + w // 20].mean())
    centre, left, right = strip(0.5), strip(0.3), strip(0.7)
    # Spine and mediastinum attenuate more than the lungs: bright in display convention.
    assert centre > left + 0.05 and centre > right + 0.05, (centre, left, right)


def test_real_cxr_broken_spacing_falls_back_with_warning(real_cr):
    path, cxr, caught = real_cr
    assert cxr.spacing == (DEFAULT_CXR_SPACING_MM, DEFAULT_CXR_SPACING_MM)
    assert cxr.spacing_is_default and cxr.metadata["spacing_source"] == "default"
    msgs = [str(w.message) for w in caught if issubclass(w.category, DefaultSpacingWarning)]
    assert len(msgs) == 1 and path.name in msgs[0] and str(DEFAULT_CXR_SPACING_MM) in msgs[0]


def test_real_radiograph_given_to_read_ct(shared_data):
    path = shared_data / "chest_cr_pa.dcm"
    with pytest.raises(errors.NotAVolumeError) as ei:
        read_ct(path)
    assert_input_error(ei, path, "radiograph", "xray2xray infer")


def test_real_radiograph_truncated(shared_data, tmp_path):
    data = (shared_data / "chest_cr_pa.dcm").read_bytes()
    for n in (len(data) // 2, 1000, 300):   # inside pixel data, inside the header, in file meta
        bad = tmp_path / f"cut_{n}.dcm"
        bad.write_bytes(data[:n])
        with pytest.raises(errors.UnreadableFileError) as ei:
            read_cxr(bad)
        assert_input_error(ei, bad)
        assert "truncated" in str(ei.value) or "corrupt" in str(ei.value)


# ------------------------------------------------------------------------ volume formats
@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"])
def test_write_read_round_trip_preserves_array_and_affine(tmp_path, ext):
    rng = np.random.default_rng(3)
    arr = (rng.normal(size=(6, 7, 8)) * 500).astype(np.float32)
    affine = oblique_affine()
    affine[:3, 0] *= -1                          # a left-handed grid must survive too
    out = write_volume(Volume(arr, affine), tmp_path / f"vol{ext}")
    assert out.exists()
    vol = read_ct(out)
    np.testing.assert_array_equal(vol.array, arr)
    # NIfTI stores geometry as float32; the others keep full double precision.
    tol = 5e-5 if ext.startswith(".nii") else 1e-12
    np.testing.assert_allclose(vol.affine, affine, rtol=0, atol=tol)
    assert vol.metadata["format"] == {".nii": "nifti", ".nii.gz": "nifti", ".nrrd": "nrrd",
                                      ".nhdr": "nrrd", ".mha": "metaimage",
                                      ".mhd": "metaimage"}[ext]


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float64, bool])
def test_write_keeps_integer_dtypes(tmp_path, dtype):
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 2 if dtype is bool else \
        np.arange(2 * 3 * 4).reshape(2, 3, 4)
    out = write_volume(Volume(arr.astype(dtype), np.eye(4)), tmp_path / "v.nrrd")
    expected = {np.int16: "16-bit signed integer", np.uint8: "8-bit unsigned integer",
                np.float64: "64-bit float", bool: "8-bit unsigned integer"}[dtype]
    assert sitk.ReadImage(str(out)).GetPixelIDTypeAsString() == expected
    np.testing.assert_array_equal(read_ct(out).array, arr.astype(np.float32))


def test_nifti_scaling_matches_simpleitk(tmp_path):
    """scl_slope/scl_inter are applied like ITK applies them."""
    arr = (np.arange(4 * 5 * 6).reshape(6, 5, 4) * 7 - 50).astype(np.int16)   # (z, y, x)
    path = tmp_path / "scaled.nii"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    raw = bytearray(path.read_bytes())
    raw[112:120] = np.array([0.5, -100.0], "<f4").tobytes()   # NIfTI-1 scl_slope, scl_inter
    path.write_bytes(bytes(raw))
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0)
    np.testing.assert_array_equal(read_ct(path).array, ref)
    np.testing.assert_array_equal(read_ct(path).array, arr.transpose(2, 1, 0) * 0.5 - 100)


def test_write_unknown_extension(tmp_path):
    path = tmp_path / "volume.xyz"
    with pytest.raises(errors.InputError) as ei:
        write_volume(Volume(np.zeros((2, 2, 2)), np.eye(4)), path)
    assert_input_error(ei, path, "output format", ".nii.gz")
    assert not path.exists()


def test_write_singular_affine(tmp_path):
    affine = np.eye(4)
    affine[:3, 1] = affine[:3, 0]
    path = tmp_path / "v.mha"
    with pytest.raises(errors.InputError) as ei:
        write_volume(Volume(np.zeros((2, 2, 2)), affine), path)
    assert_input_error(ei, path, "singular")


# ---------------------------------------------------------------------------- DICOM CT
@pytest.fixture
def hu_big():
    return np.random.default_rng(0).integers(-1000, 2000, (8, 7, 5)).astype(np.float32)


@pytest.fixture
def two_series(tmp_path, hu_big):
    folder = tmp_path / "dicom"
    hu_small = np.random.default_rng(1).integers(-1000, 2000, (6, 6, 3)).astype(np.float32)
    big = write_ct_series(folder, hu_big, uid="1.2.826.0.1.3680043.8.498.100", desc="big")
    small = write_ct_series(folder, hu_small, spacing=(1.0, 1.0, 3.0), origin=(0, 0, 0),
                            uid="1.2.826.0.1.3680043.8.498.200", desc="small")
    return folder, big, small, hu_small


def test_dicom_series_hu_geometry_and_metadata(tmp_path, hu_big):
    folder = tmp_path / "ct"
    uid = write_ct_series(folder, hu_big, desc="chest")
    stored = pydicom.dcmread(folder / "chest_000.dcm").pixel_array.T
    np.testing.assert_array_equal(stored, hu_big[:, :, 0] + 1024)   # rescale is in the file...
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # one series: nothing to warn about
        vol = read_ct(folder)
    np.testing.assert_array_equal(vol.array, hu_big)                # ...and applied on read
    assert vol.array.dtype == np.float32
    expected = np.diag([0.7, 0.8, 2.5, 1.0])
    expected[:3, 3] = (-10.0, 20.0, 30.0)
    np.testing.assert_allclose(vol.affine, expected, atol=1e-6)
    md = vol.metadata
    assert md["format"] == "dicom" and md["series_uid"] == uid and md["modality"] == "CT"
    assert md["series_description"] == "chest" and md["n_files"] == 5
    assert md["rescale_intercept"] == -1024.0
    np.testing.assert_allclose(md["spacing"], (0.7, 0.8, 2.5))


def test_dicom_picks_largest_series_and_says_which(two_series, hu_big, caplog):
    folder, big, small, _ = two_series
    with caplog.at_level(logging.INFO, logger="XrayWorldModel.io.ct"):
        with pytest.warns(MultipleSeriesWarning) as rec:
            vol = read_ct(folder)
    np.testing.assert_array_equal(vol.array, hu_big)
    assert vol.metadata["series_uid"] == big and vol.metadata["other_series"] == [small]
    msg = str(rec[0].message)
    assert big in msg and small in msg and "5 files" in msg
    assert "folder that holds only that series" in msg and "series_uid" not in msg
    assert any(big in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)


def test_dicom_series_uid_selects_explicitly(two_series):
    folder, big, small, hu_small = two_series
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vol = read_ct(folder, series_uid=small)
        from_file = read_ct(folder / "small_001.dcm")   # one slice -> its whole series
    np.testing.assert_array_equal(vol.array, hu_small)
    np.testing.assert_array_equal(from_file.array, hu_small)
    assert vol.metadata["series_uid"] == small == from_file.metadata["series_uid"]


def test_dicom_unknown_series_uid_lists_available(two_series):
    folder, big, small, _ = two_series
    with pytest.raises(errors.InputError) as ei:
        read_ct(folder, series_uid="1.2.3.999")
    assert_input_error(ei, folder, "1.2.3.999", "available", big, small)


def test_dicom_prefers_ct_over_larger_other_modality(tmp_path):
    folder = tmp_path / "mixed"
    ct = write_ct_series(folder, np.zeros((4, 4, 3), np.float32), desc="ct")
    write_ct_series(folder, np.ones((4, 4, 6), np.float32), desc="mr", modality="MR")
    with pytest.warns(MultipleSeriesWarning):
        assert read_ct(folder).metadata["series_uid"] == ct


def test_dicom_missing_slice_is_refused_naming_where(tmp_path, hu_big):
    """A gap of two steps is missing slices: refused, naming the slices on either side."""
    folder = tmp_path / "gap"
    write_ct_series(folder, hu_big, desc="gap")
    (folder / "gap_002.dcm").unlink()
    with pytest.raises(errors.InputError) as excinfo:
        read_ct(folder)
    assert_input_error(excinfo, folder, "gap of 5.00 mm", "gap_001.dcm", "gap_003.dcm", "missing")


def test_dicom_slightly_uneven_spacing_still_warns(tmp_path, hu_big):
    """Steps that vary by less than the gap ratio are read, with a warning."""
    folder = tmp_path / "uneven"
    write_ct_series(folder, hu_big, desc="uneven")
    moved = folder / "uneven_002.dcm"
    ds = pydicom.dcmread(moved)
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 0.8
    ds.save_as(moved)
    with pytest.warns(NonUniformSliceWarning, match="not uniform"):
        read_ct(folder)


def test_dicom_duplicate_slice_is_refused(tmp_path, hu_big):
    """Two copies of one slice (same position) are not a volume."""
    folder = tmp_path / "dup"
    write_ct_series(folder, hu_big, desc="dup")
    ds = pydicom.dcmread(folder / "dup_001.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(folder / "dup_copy.dcm")
    with pytest.raises(errors.InputError) as excinfo:
        read_ct(folder)
    assert_input_error(excinfo, folder, "repeat one position", "one copy")


def test_dicom_mixed_orientation_is_refused(tmp_path, hu_big):
    folder = tmp_path / "tilted"
    write_ct_series(folder, hu_big, desc="tilted")
    ds = pydicom.dcmread(folder / "tilted_003.dcm")
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.8, 0.6]
    ds.save_as(folder / "tilted_003.dcm")
    with pytest.raises(errors.InputError) as excinfo:
        read_ct(folder)
    assert_input_error(excinfo, folder, "disagree on orientation", "tilted_003.dcm")


def test_dicom_mr_series_is_refused_naming_the_modality(tmp_path, hu_big):
    folder = tmp_path / "mr"
    write_ct_series(folder, hu_big, desc="mr", modality="MR")
    with pytest.raises(errors.NotAVolumeError) as excinfo:
        read_ct(folder)
    assert_input_error(excinfo, folder, "DICOM MR image, not CT")
    with pytest.raises(errors.NotAVolumeError, match="MR image, not CT"):
        read_ct(folder / "mr_001.dcm")


@pytest.mark.parametrize("name", ["zero.nii", "zero.nii.gz", "zero.mha", "zero.nrrd"])
def test_zero_spacing_is_refused_in_every_format(tmp_path, name):
    import gzip
    import struct
    img = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16))
    path = tmp_path / name
    if name.startswith("zero.nii"):
        sitk.WriteImage(img, str(tmp_path / "plain.nii"))
        raw = bytearray((tmp_path / "plain.nii").read_bytes())
        raw[80:92] = struct.pack("<3f", 0.0, 0.0, 0.0)       # pixdim[1:4]
        raw[252:256] = struct.pack("<hh", 0, 0)              # no qform, no sform
        path.write_bytes(gzip.compress(bytes(raw)) if name.endswith(".gz") else bytes(raw))
    else:      # ITK refuses to write zero spacing, so edit the text header
        plain = tmp_path / ("plain" + path.suffix)
        sitk.WriteImage(img, str(plain), False)
        key, zero = ((b"ElementSpacing = 1 1 1", b"ElementSpacing = 1 0 1") if name.endswith(".mha")
                     else (b"(0,1,0)", b"(0,0,0)"))
        raw = plain.read_bytes()
        assert key in raw
        path.write_bytes(raw.replace(key, zero))
    with pytest.raises(errors.InputError) as excinfo:
        read_ct(path)
    assert_input_error(excinfo, path, "voxel spacing", "positive and finite")


def test_dicom_truncated_slice(tmp_path, hu_big):
    folder = tmp_path / "cut"
    write_ct_series(folder, hu_big, desc="cut")
    bad = folder / "cut_002.dcm"
    bad.write_bytes(bad.read_bytes()[:-40])
    with pytest.raises(errors.UnreadableFileError) as ei:
        read_ct(bad)
    assert_input_error(ei, bad, "truncated")
    # Reading the folder drops the slice (GDCM skips it): said, and the gap it leaves refused.
    with pytest.warns(SkippedDicomWarning, match="cut_002.dcm"):
        with pytest.raises(errors.InputError, match="gap of 5.00 mm"):
            read_ct(folder)


def test_dicom_single_slice_is_not_a_volume(tmp_path):
    folder = tmp_path / "one"
    write_ct_series(folder, np.zeros((4, 4, 1), np.float32), desc="one")
    with pytest.raises(errors.NotAVolumeError) as ei:
        read_ct(folder / "one_000.dcm")
    assert_input_error(ei, Path("one_000.dcm"), "single 2D slice")


# ------------------------------------------------------------------------- read_ct errors
def test_missing_path(tmp_path):
    path = tmp_path / "nowhere" / "ct.nii.gz"
    for reader in (read_ct, read_cxr):
        with pytest.raises(errors.FileNotFoundInputError) as ei:
            reader(path)
        assert_input_error(ei, path, "no such file")
        assert isinstance(ei.value, FileNotFoundError)   # still catchable the usual way


def test_text_file_is_not_a_volume(tmp_path):
    for name in ("notes.txt", "fake.nii", "fake.nii.gz", "fake.mha"):
        path = tmp_path / name
        path.write_text("this is not an image\n" * 30)
        with pytest.raises(errors.UnreadableFileError) as ei:
            read_ct(path)
        assert_input_error(ei, path)
        assert "format" in str(ei.value) or "header" in str(ei.value) or "gzip" in str(ei.value)


def test_text_file_to_read_cxr(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(errors.UnreadableFileError) as ei:
        read_cxr(path)
    assert_input_error(ei, path, "not a recognised radiograph format")


def test_png_given_to_read_ct(tmp_path):
    path = tmp_path / "xray.png"
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(path)
    with pytest.raises(errors.NotAVolumeError) as ei:
        read_ct(path)
    assert_input_error(ei, path, "2D image", "PNG", "xray2xray infer")


@pytest.mark.parametrize("name,shape", [("slice.nii", (1, 20, 30)), ("slice.nii.gz", (1, 20, 30)),
                                        ("plane.mha", (20, 30)), ("plane.nii", (20, 30))])
def test_2d_image_given_to_read_ct(tmp_path, name, shape):
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(shape, np.float32)), str(path))
    with pytest.raises(errors.NotAVolumeError) as ei:
        read_ct(path)
    assert_input_error(ei, path, "not a 3D CT volume")


@pytest.mark.parametrize("name", ["vol.nii.gz", "vol.nii", "vol.mha", "vol.nrrd"])
def test_truncated_volume(tmp_path, name):
    rng = np.random.default_rng(5)
    src = write_volume(Volume(rng.normal(size=(20, 21, 22)).astype(np.float32), np.eye(4)),
                       tmp_path / name)
    data = src.read_bytes()
    for frac in (0.5, 0.95):
        bad = tmp_path / f"cut{int(frac * 100)}_{name}"
        bad.write_bytes(data[:int(len(data) * frac)])
        with pytest.raises(errors.UnreadableFileError) as ei:
            read_ct(bad)
        assert_input_error(ei, bad)
        assert "truncated" in str(ei.value), str(ei.value)


def test_empty_folder(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(errors.EmptyFolderError) as ei:
        read_ct(folder)
    assert_input_error(ei, folder, "empty")


def test_folder_without_dicom(tmp_path):
    folder = tmp_path / "junk"
    (folder / "sub").mkdir(parents=True)
    (folder / "readme.txt").write_text("no images")
    with pytest.raises(errors.EmptyFolderError) as ei:
        read_ct(folder)
    assert_input_error(ei, folder, "no DICOM series", "subfolder")


@pytest.mark.parametrize("name", ["nan.nii.gz", "nan.nii", "nan.mha"])
def test_non_finite_voxels(tmp_path, name):
    arr = np.zeros((5, 6, 7), np.float32)
    arr[1, 2, 3] = np.nan
    arr[0, 0, 0] = np.inf
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))   # ITK would zero NaN in NIfTI
    with pytest.raises(errors.NonFiniteDataError) as ei:
        read_ct(path)
    assert_input_error(ei, path, "2 of 210 voxels", "NaN")


def test_series_uid_with_a_file_volume(tmp_path):
    path = write_volume(Volume(np.zeros((2, 2, 2)), np.eye(4)), tmp_path / "v.nrrd")
    with pytest.raises(errors.InputError) as ei:
        read_ct(path, series_uid="1.2.3")
    assert_input_error(ei, path, "DICOM")


# ----------------------------------------------------------------------- read_cxr errors
def test_ct_volume_given_to_read_cxr(tmp_path):
    path = write_volume(Volume(np.zeros((8, 9, 10), np.int16), np.eye(4)), tmp_path / "ct.nii.gz")
    with pytest.raises(errors.NotARadiographError) as ei:
        read_cxr(path)
    assert_input_error(ei, path, "3D volume", "`xray2xray drr`")


def test_ct_dicom_slice_given_to_read_cxr(tmp_path):
    folder = tmp_path / "ct"
    write_ct_series(folder, np.zeros((4, 5, 2), np.float32), desc="axial")
    path = folder / "axial_000.dcm"
    with pytest.raises(errors.NotARadiographError) as ei:
        read_cxr(path)
    assert_input_error(ei, path, "a single CT slice", "give the folder of the whole series")
    assert "read_ct" not in str(ei.value)


def test_folder_given_to_read_cxr(tmp_path):
    with pytest.raises(errors.NotARadiographError) as ei:
        read_cxr(tmp_path)
    assert_input_error(ei, tmp_path, "folder")


def test_truncated_synthetic_cr(tmp_path):
    path = tmp_path / "cr.dcm"
    make_cr(path, chest_like(), pixel_spacing=(0.2, 0.2))
    bad = tmp_path / "cr_cut.dcm"
    bad.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(errors.UnreadableFileError) as ei:
        read_cxr(bad)
    assert_input_error(ei, bad, "truncated")


# ------------------------------------------------------------------------- read_cxr DICOM
def test_cxr_window_applied_and_scaled(tmp_path):
    px = chest_like()
    path = tmp_path / "m2.dcm"
    make_cr(path, px, window=(2000, 3000), pixel_spacing=(0.15, 0.16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # good spacing: no warning
        cxr = read_cxr(path)
    np.testing.assert_allclose(cxr.image, linear_window(px, 2000, 3000), atol=1e-6)
    assert cxr.spacing == (0.15, 0.16) and not cxr.spacing_is_default
    md = cxr.metadata
    assert md["spacing_source"] == "PixelSpacing" and md["inverted"] is False
    assert md["window"]["kind"] == "window" and md["window"]["center"] == 2000.0
    assert md["view_position"] == "PA" == cxr.view_position and md["bits_stored"] == 12
    assert md["manufacturer"] == "TestVendor" and md["modality"] == "CR"


def test_cxr_monochrome1_is_inverted(tmp_path):
    px = chest_like()
    m1, m2 = tmp_path / "m1.dcm", tmp_path / "m2.dcm"
    make_cr(m1, px, photometric="MONOCHROME1", window=(2048, 4096), pixel_spacing=(0.2, 0.2))
    make_cr(m2, px, photometric="MONOCHROME2", window=(2048, 4096), pixel_spacing=(0.2, 0.2))
    a, b = read_cxr(m1), read_cxr(m2)
    np.testing.assert_allclose(a.image, 1.0 - b.image, atol=1e-6)
    assert a.metadata["inverted"] and not b.metadata["inverted"]


def test_cxr_rescale_then_window(tmp_path):
    px = chest_like()
    path = tmp_path / "rescaled.dcm"
    make_cr(path, px, window=(1000, 2000), rescale=(2, -1000), pixel_spacing=(0.2, 0.2))
    np.testing.assert_allclose(read_cxr(path).image,
                               linear_window(px * 2.0 - 1000, 1000, 2000), atol=1e-6)


def test_cxr_without_window_uses_min_max(tmp_path):
    px = chest_like()
    path = tmp_path / "nowin.dcm"
    make_cr(path, px, pixel_spacing=(0.2, 0.2), view=None)
    cxr = read_cxr(path)
    np.testing.assert_allclose(cxr.image, (px - px.min()) / (px.max() - px.min()), atol=1e-6)
    assert cxr.metadata["window"]["kind"] == "minmax" and cxr.view_position is None


@pytest.mark.parametrize("pixel_spacing,imager,expected,source", [
    (None, (0.139, 0.14), (0.139, 0.14), "ImagerPixelSpacing"),
    ((0.0, 0.0), (0.139, 0.14), (0.139, 0.14), "ImagerPixelSpacing"),
    ((0.1, 0.1), (0.139, 0.14), (0.1, 0.1), "PixelSpacing"),
])
def test_cxr_spacing_sources(tmp_path, pixel_spacing, imager, expected, source):
    path = tmp_path / "sp.dcm"
    make_cr(path, chest_like(), pixel_spacing=pixel_spacing, imager_spacing=imager)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cxr = read_cxr(path)
    assert cxr.spacing == expected and cxr.metadata["spacing_source"] == source
    assert not cxr.spacing_is_default


@pytest.mark.parametrize("pixel_spacing", [None, (0.0, 0.0), (-0.1, 0.1)])
def test_cxr_missing_or_invalid_spacing_defaults_with_warning(tmp_path, pixel_spacing):
    path = tmp_path / "nosp.dcm"
    make_cr(path, chest_like(), pixel_spacing=pixel_spacing)
    with pytest.warns(DefaultSpacingWarning) as rec:
        cxr = read_cxr(path)
    assert cxr.spacing == (DEFAULT_CXR_SPACING_MM,) * 2 and cxr.spacing_is_default
    assert path.name in str(rec[0].message) and "0.143" in str(rec[0].message)


def _encoder_or_skip(uid):
    from pydicom.pixels import get_encoder
    enc = get_encoder(uid)
    if not enc.is_available:
        pytest.skip(f"no {uid.name} encoder installed here "
                    f"({'; '.join(enc.missing_dependencies)}); decoding is untested")


@pytest.mark.parametrize("uid", [RLELossless, JPEG2000Lossless, JPEGLSLossless],
                         ids=["rle", "jpeg2000", "jpegls"])
def test_cxr_compressed_pydicom_encoded(tmp_path, uid):
    px = chest_like(64, 48)
    plain = tmp_path / "plain.dcm"
    ds = make_cr(plain, px, photometric="MONOCHROME1", window=(2048, 4096),
                 pixel_spacing=(0.2, 0.2))
    _encoder_or_skip(uid)
    ds.compress(uid)
    packed = tmp_path / "packed.dcm"
    ds.save_as(packed, enforce_file_format=True)
    assert pydicom.dcmread(packed).file_meta.TransferSyntaxUID == uid
    got = read_cxr(packed)
    np.testing.assert_array_equal(got.image, read_cxr(plain).image)
    assert got.metadata["transfer_syntax"] == uid.name


def test_cxr_jpeg_lossless_written_by_gdcm(tmp_path):
    """A file compressed by another toolkit (GDCM, JPEG Lossless) decodes through pylibjpeg."""
    px = chest_like(64, 48)
    img = sitk.GetImageFromArray(px)
    for tag, value in {"0008|0060": "DX", "0028|1050": "2048", "0028|1051": "4096",
                       "0028|0030": "0.15\\0.15", "0018|5101": "AP"}.items():
        img.SetMetaData(tag, value)
    path = tmp_path / "gdcm_jpeg.dcm"
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(path))
    writer.SetUseCompression(True)
    writer.SetCompressor("JPEG")
    writer.Execute(img)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == JPEGLosslessSV1
    cxr = read_cxr(path)
    np.testing.assert_allclose(cxr.image, linear_window(px, 2048, 4096), atol=1e-6)
    assert cxr.view_position == "AP" and cxr.metadata["modality"] == "DX"


# ------------------------------------------------------------------------ read_cxr bitmaps
def test_png_8bit(tmp_path):
    px = (chest_like() % 256).astype(np.uint8)
    path = tmp_path / "cxr.png"
    Image.fromarray(px).save(path)
    with pytest.warns(DefaultSpacingWarning, match="cxr.png"):
        cxr = read_cxr(path)
    np.testing.assert_allclose(cxr.image, px / 255.0, atol=1e-7)
    assert cxr.spacing_is_default and cxr.spacing == (DEFAULT_CXR_SPACING_MM,) * 2
    assert cxr.metadata["format"] == "png"


def test_png_16bit(tmp_path):
    px = (chest_like().astype(np.uint32) * 16).astype(np.uint16)   # 16-bit range
    path = tmp_path / "cxr16.png"
    Image.fromarray(px).save(path)
    assert Image.open(path).mode.startswith("I")                   # really 16-bit on disk
    with pytest.warns(DefaultSpacingWarning):
        cxr = read_cxr(path)
    np.testing.assert_allclose(cxr.image, px / 65535.0, atol=1e-7)


def test_jpeg_and_rgb_png_become_grayscale(tmp_path):
    px = (chest_like() % 256).astype(np.uint8)
    jpg, rgb = tmp_path / "cxr.jpg", tmp_path / "rgb.png"
    Image.fromarray(px).save(jpg, quality=100)
    Image.fromarray(np.stack([px] * 3, axis=-1)).save(rgb)
    with pytest.warns(DefaultSpacingWarning):
        a, b = read_cxr(jpg), read_cxr(rgb)
    assert a.image.shape == b.image.shape == px.shape
    assert a.image.dtype == np.float32
    np.testing.assert_allclose(a.image, px / 255.0, atol=6 / 255)   # JPEG is lossy
    np.testing.assert_allclose(b.image, px / 255.0, atol=1 / 255)
    assert a.metadata["format"] == "jpeg"


def test_truncated_png(tmp_path):
    path = tmp_path / "cxr.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), np.uint8)).save(path)
    bad = tmp_path / "cut.png"
    bad.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(errors.UnreadableFileError) as ei:
        read_cxr(bad)
    assert_input_error(ei, bad, "truncated")


def test_2d_mha_radiograph_keeps_header_spacing(tmp_path):
    img = sitk.GetImageFromArray(chest_like().astype(np.float32))
    img.SetSpacing((0.3, 0.2))                        # ITK (x, y) = (column, row)
    path = tmp_path / "drr.mha"
    sitk.WriteImage(img, str(path))
    cxr = read_cxr(path)
    assert cxr.spacing == (0.2, 0.3) and not cxr.spacing_is_default
    assert cxr.shape == chest_like().shape and cxr.image.max() == 1.0


@pytest.mark.parametrize("vr", ["US", "OW"])
def test_cxr_voi_lut_sequence_preferred_over_window(tmp_path, vr):
    px = chest_like()
    lut = (np.sqrt(np.arange(4096)) * 1000).astype(np.uint16)   # a non-linear VOI LUT
    path = tmp_path / "lut.dcm"
    ds = make_cr(path, px, window=(10, 20), pixel_spacing=(0.2, 0.2))
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, vr, lut.tolist() if vr == "US" else lut.astype("<u2").tobytes())
    item.LUTExplanation = "SQRT"
    ds.VOILUTSequence = [item]
    ds.save_as(path, enforce_file_format=True)
    cxr = read_cxr(path)
    expected = (lut[px].astype(np.float64) - lut.min()) / (lut.max() - lut.min())
    np.testing.assert_allclose(cxr.image, expected, atol=1e-6)
    assert cxr.metadata["window"] == {"kind": "lut", "explanation": "SQRT"}


@pytest.mark.parametrize("content, phrase", [(b"", "empty file"),
                                             (b"patient,age\n1,2\n", "text file"),
                                             (bytes(range(256)) * 4, "not a DICOM file")])
def test_non_dicom_named_dcm_is_named_for_people(tmp_path, content, phrase):
    """No pydicom advice ("force=True") reaches the user: say what the file is."""
    path = tmp_path / "scan.dcm"
    path.write_bytes(content)
    for reader in (read_ct, read_cxr):
        with pytest.raises(errors.UnreadableFileError) as excinfo:
            reader(path)
        assert_input_error(excinfo, path, phrase)
        assert "force" not in str(excinfo.value)


def test_radiograph_plausibility_screen():
    """Too small, blank, colour and noise images are named; a smooth image passes."""
    from XrayWorldModel.radiograph import Radiograph, implausibility
    rng = np.random.default_rng(0)
    smooth = np.add.outer(np.linspace(0, 1, 200), np.linspace(0, 1, 180)) ** 2
    assert implausibility(Radiograph(smooth, (1, 1))) is None
    assert "too small" in implausibility(Radiograph(smooth[:8, :8], (1, 1)))
    assert "blank" in implausibility(Radiograph(np.zeros((64, 64)), (1, 1)))
    assert "noise" in implausibility(Radiograph(rng.random((300, 300)), (1, 1)))
    assert "colour" in implausibility(Radiograph(smooth, (1, 1), metadata={"chroma": 0.3}))


def test_read_cxr_check_refuses_before_its_warnings(tmp_path):
    """`read_cxr(..., check=True)`: an image that cannot be a radiograph is refused with the
    one error, not after a warning about its missing spacing; a good one keeps the warning."""
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / "noise.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(errors.NotARadiographError, match="noise"):
            read_cxr(tmp_path / "noise.png", check=True)
    assert caught == []
    r, c = np.mgrid[0:64, 0:64]
    Image.fromarray(((r + c) * 2).astype(np.uint8)).save(tmp_path / "smooth.png")
    with pytest.warns(DefaultSpacingWarning):
        read_cxr(tmp_path / "smooth.png", check=True)


def test_itk_failures_print_no_raw_library_lines(tmp_path, capfd):
    """MetaIO prints its parse errors straight to stdout, and ITK's messages carry source
    paths and object addresses: neither reaches the user."""
    path = write_volume(Volume(np.zeros((8, 9, 10), np.int16), np.eye(4)), tmp_path / "v.mha",
                        compress=False)
    cut = tmp_path / "cut.mha"
    raw = path.read_bytes()
    cut.write_bytes(raw[: raw.index(b"DimSize")])      # MetaIO: "DimSize required and not defined"
    for reader in (read_ct, read_cxr):
        with pytest.raises(errors.UnreadableFileError) as ei:
            reader(cut)
        assert_input_error(ei, cut, "header")
        for raw in ("ITK", "0x", ".cxx", "MetaImage"):
            assert raw not in str(ei.value), str(ei.value)
    assert capfd.readouterr() == ("", "")
    print("still printing")
    assert capfd.readouterr().out == "still printing\n"


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
@pytest.mark.parametrize("assumed", [True, False])
def test_written_radiograph_reads_back_with_whether_its_spacing_was_assumed(tmp_path, suffix, assumed):
    """A radiograph handed to a background job as a file keeps its pixels, its spacing and
    whether that spacing was assumed: otherwise the job takes an assumed 0.143 mm for a
    measured one and skips the scale estimate that `infer` on the original file makes."""
    from XrayWorldModel.io import write_radiograph
    from XrayWorldModel.radiograph import Radiograph
    image = np.random.default_rng(2).random((40, 52)).astype(np.float32)
    image[0, 0], image[-1, -1] = 0.0, 1.0
    path = write_radiograph(Radiograph(image, (0.143, 0.2), spacing_is_default=assumed), tmp_path / f"r{suffix}")
    back = read_cxr(path)
    assert back.spacing_is_default is assumed and back.spacing == pytest.approx((0.143, 0.2))
    np.testing.assert_allclose(back.image, image, atol=1e-6)


def test_a_garbled_inference_metadata_entry_reads_as_a_plain_image(tmp_path, caplog):
    """A header whose inference-metadata entry is not a JSON object (edited by hand, written
    by another tool) is read as any other 2D image, with a warning, not a crash."""
    from XrayWorldModel.io.cxr import INPUT_METADATA_KEY
    image = np.random.default_rng(3).random((30, 40)).astype(np.float32)
    for n, text in enumerate(("{not json", "[1.2]", '{"magnification": 1.2, "colour": "red"}')):
        img = sitk.GetImageFromArray(image)
        img.SetMetaData(INPUT_METADATA_KEY, text)
        sitk.WriteImage(img, str(tmp_path / f"r{n}.nrrd"))
        back = read_cxr(tmp_path / f"r{n}.nrrd")
        assert back.metadata.get("units") is None and "colour" not in back.metadata
        assert back.metadata.get("magnification") == (1.2 if n == 2 else None)
        assert float(back.image.min()) == 0.0 and float(back.image.max()) == 1.0
    assert any(INPUT_METADATA_KEY in r.getMessage() for r in caplog.records)


def test_radiograph_written_elsewhere_has_measured_spacing_and_png_is_refused(tmp_path):
    from XrayWorldModel.io import write_radiograph
    from XrayWorldModel.radiograph import Radiograph
    img = sitk.GetImageFromArray(np.ones((30, 30), np.float32))     # no key: a header's spacing
    sitk.WriteImage(img, str(tmp_path / "plain.nrrd"))
    assert read_cxr(tmp_path / "plain.nrrd").spacing_is_default is False
    with pytest.raises(errors.UnreadableFileError, match="nrrd"):
        write_radiograph(Radiograph(np.ones((30, 30), np.float32), (1.0, 1.0)), tmp_path / "r.png")
    assert not (tmp_path / "r.png").exists()
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(errors.UnreadableFileError, match="could not write the radiograph") as caught:
        write_radiograph(Radiograph(np.ones((30, 30), np.float32), (1.0, 1.0)),
                         tmp_path / "a_file" / "r.nrrd")
    assert "\n" not in str(caught.value)

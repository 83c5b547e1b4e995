"""The Slicer module's Qt-free logic (Xray2Xray/Xray2XrayLib) on real MRML from slicer-core.

DRR sequences from the real chest CT (placement on the detector plane in RAS, pixels equal to
the package's DRRs), RAS <-> LPS conversions, inference from the real radiograph with a tiny
real model (volume, predicted views on their detector planes, results table; in process and
through the background job / CLI outputs), bad input, the background-job command lines, and
the README's console snippets executed against a scene.
"""
import hashlib
import importlib.util
import inspect
import json
import math
import re
import shutil
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) is needed "
                             "for the MRML tests")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not slicer-core (no vtkMRMLScene)",
                allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "Xray2Xray"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

from XrayWorldModel.errors import InputError, NotARadiographError, NotAVolumeError  # noqa: E402
from XrayWorldModel.geometry import DEFAULT_SDD, DEFAULT_SOD, ProjectionGeometry  # noqa: E402
from XrayWorldModel.radiograph import Radiograph  # noqa: E402
from XrayWorldModel.volume import Volume  # noqa: E402
from Xray2XrayLib import CancelledError, Xray2XrayCoreLogic  # noqa: E402
from Xray2XrayLib import conversions as conv  # noqa: E402
from Xray2XrayLib import jobs  # noqa: E402

RAS_FROM_LPS = np.array([-1.0, -1.0, 1.0])


# ----------------------------------------------------------------------------- fixtures
def _new_scene():
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    return scene


@pytest.fixture
def scene():
    s = _new_scene()
    yield s
    s.Clear(1)


def _phantom(seed=0, shape=(40, 40, 32), spacing=(9.0, 9.0, 11.0)) -> Volume:
    from XrayWorldModel.phantom import procedural_chest
    return procedural_chest(seed=seed, shape=shape, spacing=spacing)


def _node_count(scene) -> int:
    return scene.GetNumberOfNodes()


@pytest.fixture(scope="module", params=["phantom", "real"])
def real_ct(request, tmp_path_factory):
    """A CT as a node in a scene with a subject hierarchy (patient > study > CT), and its DRR
    sequence at 0 and 90 deg (default detector: 256x256, 1.6 mm; SDD 1800, SOD 1500): a
    procedural phantom written to NIfTI (always, so a fresh clone runs the placement tests),
    and the real CT when ../shared/data is present."""
    if request.param == "real":
        path = request.getfixturevalue("shared_data") / "chest_ct.nii.gz"
    else:
        from XrayWorldModel.io import write_volume
        path = write_volume(_phantom(seed=4, shape=(64, 60, 48), spacing=(6.0, 6.5, 7.5)),
                            tmp_path_factory.mktemp("phantom-ct") / "phantom.nii.gz")
    scene = _new_scene()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    logic = Xray2XrayCoreLogic(scene)
    ct = logic.loadCT(path)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient"), "Chest CT study")
    sh.CreateItem(study, ct)
    seq = logic.generateDRRs(ct, [0, 90])
    yield dict(path=path, scene=scene, logic=logic, ct=ct, seq=seq, sh=sh, study=study,
               kind=request.param)
    scene.Clear(1)


# ----------------------------------------------------------------------------- real CT
def test_real_ct_node_has_true_geometry(real_ct):
    from XrayWorldModel.io import read_ct
    vol = read_ct(real_ct["path"])
    ct = real_ct["ct"]
    assert ct.GetImageData().GetDimensions() == ((512, 512, 133) if real_ct["kind"] == "real"
                                                 else (64, 60, 48))
    np.testing.assert_allclose(conv.ijkToRas(ct), conv.LPS_TO_RAS @ vol.affine, atol=1e-9)
    np.testing.assert_allclose(ct.GetSpacing(), vol.spacing, rtol=1e-6)
    # first voxel: LPS x, y negated in RAS
    np.testing.assert_allclose(ct.GetOrigin(), vol.origin * RAS_FROM_LPS, atol=1e-6)


def test_sequence_holds_two_drrs_with_browser(real_ct):
    seq, scene = real_ct["seq"], real_ct["scene"]
    assert seq.IsA("vtkMRMLSequenceNode")
    assert seq.GetNumberOfDataNodes() == 2
    assert [seq.GetNthIndexValue(i) for i in range(2)] == ["0", "90"]
    assert seq.GetIndexName() == "angle" and seq.GetIndexUnit() == "deg"
    for i in range(2):
        node = seq.GetNthDataNode(i)
        assert node.IsA("vtkMRMLScalarVolumeNode")
        assert node.GetImageData().GetDimensions() == (256, 256, 1)   # single slice
    browser = real_ct["logic"].sequencesLogic().GetFirstBrowserNodeForSequenceNode(seq)
    assert browser is not None and browser.GetScene() is scene
    assert browser.GetMasterSequenceNode() is seq
    proxy = browser.GetProxyNode(seq)
    assert proxy is not None and proxy.IsA("vtkMRMLScalarVolumeNode") and proxy.GetScene() is scene
    assert seq.GetNodeReference("Xray2XraySourceCT") is real_ct["ct"]


def test_drr_nodes_lie_on_the_detector_plane(real_ct):
    ct, seq = real_ct["ct"], real_ct["seq"]
    iso = conv.nodeCenterRas(ct)                       # the isocentre: the CT's centre
    offset = 1800.0 - 1500.0                           # SDD - SOD
    pa = conv.nodeCenterRas(seq.GetDataNodeAtValue("0"))
    lat = conv.nodeCenterRas(seq.GetDataNodeAtValue("90"))
    # 0 deg (PA): detector anterior of the isocentre, +A in RAS
    np.testing.assert_allclose(pa - iso, [0.0, offset, 0.0], atol=1e-6)
    # 90 deg (left lateral): detector at the patient's left, -R in RAS
    np.testing.assert_allclose(lat - iso, [-offset, 0.0, 0.0], atol=1e-6)

    # every pixel where the package's geometry puts it (LPS -> RAS)
    g = ProjectionGeometry(angles=(0, 90), detector_shape=(256, 256), pixel_spacing=(1.6, 1.6),
                           isocenter=tuple(iso * RAS_FROM_LPS))
    centres = g.pixel_centers()                        # [A, H, W, 3] LPS
    for a, angle in enumerate((0, 90)):
        m = conv.ijkToRas(seq.GetDataNodeAtValue(str(angle)))
        for (i, j) in [(0, 0), (0, 255), (255, 0), (100, 37)]:   # (row, column)
            ras = m @ np.array([j, i, 0, 1.0])
            np.testing.assert_allclose(ras[:3], centres[a, i, j] * RAS_FROM_LPS, atol=1e-6)
        # columns run along the detector's u axis, rows down towards the feet
        np.testing.assert_allclose(m[:3, 1], [0, 0, -1.6], atol=1e-12)


def test_drr_pixels_equal_the_package_drr(real_ct):
    from XrayWorldModel.drr import render_drr
    from XrayWorldModel.io import read_ct
    ct = read_ct(real_ct["path"])
    g = ProjectionGeometry(angles=(0, 90), detector_shape=(256, 256), pixel_spacing=(1.6, 1.6),
                           sdd=1800, sod=1500)
    expected = render_drr(ct, g, method="fast")
    seq = real_ct["seq"]
    for a, angle in enumerate((0, 90)):
        node = seq.GetDataNodeAtValue(str(angle))
        got = conv.volumeNodeToRadiograph(node).image
        assert got.dtype == np.float32 and got.shape == (256, 256)
        np.testing.assert_array_equal(got, expected[a])
        assert expected[a].max() > 1.0                  # a real chest, not an empty image
    drrs, geometry = real_ct["logic"].sequenceToDRRs(seq)
    np.testing.assert_array_equal(drrs, expected)
    assert geometry.angles == (0.0, 90.0)


def test_drrs_are_placed_under_the_cts_study(real_ct):
    sh, study, seq = real_ct["sh"], real_ct["study"], real_ct["seq"]
    browser = real_ct["logic"].sequencesLogic().GetFirstBrowserNodeForSequenceNode(seq)
    for node in (seq, browser, browser.GetProxyNode(seq)):
        item = sh.GetItemByDataNode(node)
        assert item, f"{node.GetName()} has no subject-hierarchy item"
        assert sh.GetItemParent(item) == study


# ----------------------------------------------------------------------------- DRRs, small
def test_no_subject_hierarchy_is_created(scene):
    logic = Xray2XrayCoreLogic(scene)
    ct = conv.volumeToVolumeNode(_phantom(), scene, "phantom")
    seq = logic.generateDRRs(ct, [0], detectorSize=(16, 24), pixelSpacing=(20.0, 15.0))
    assert scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode") is None
    node = seq.GetNthDataNode(0)
    assert node.GetImageData().GetDimensions() == (24, 16, 1)          # (columns, rows, 1)
    np.testing.assert_allclose(node.GetSpacing(), [15.0, 20.0, 1.0])
    rg = conv.volumeNodeToRadiograph(node)
    assert rg.shape == (16, 24) and rg.spacing == (20.0, 15.0) and rg.view_position == "PA"


def test_cancel_leaves_the_scene_unchanged(scene):
    logic = Xray2XrayCoreLogic(scene)
    ct = conv.volumeToVolumeNode(_phantom(), scene, "phantom")
    n = _node_count(scene)
    calls = []

    def progress(fraction, text):
        calls.append(fraction)
        return fraction < 0.5

    with pytest.raises(CancelledError):
        logic.generateDRRs(ct, list(range(0, 360, 30)), detectorSize=(8, 8), pixelSpacing=40.0,
                           progressCallback=progress)
    assert _node_count(scene) == n
    assert calls[0] == 0.0 and max(calls) >= 0.5


def test_export_drrs_writes_a_stack(scene, tmp_path):
    logic = Xray2XrayCoreLogic(scene)
    ct = conv.volumeToVolumeNode(_phantom(), scene, "phantom")
    seq = logic.generateDRRs(ct, [90, 0], detectorSize=(12, 10), pixelSpacing=30.0)
    out = logic.exportDRRs(seq, tmp_path / "ph.nii.gz")
    side = json.loads((tmp_path / "ph.json").read_text())
    assert out.exists() and side["complete"] is True
    assert side["geometry"]["angles_deg"] == [0.0, 90.0]
    import SimpleITK as sitk
    stack = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))          # [A, H, W]
    drrs, _ = logic.sequenceToDRRs(seq)
    np.testing.assert_allclose(stack, drrs, rtol=1e-6)


def test_remove_drr_sequence(scene):
    logic = Xray2XrayCoreLogic(scene)
    ct = conv.volumeToVolumeNode(_phantom(), scene, "phantom")
    n = _node_count(scene)
    seq = logic.generateDRRs(ct, [0, 90], detectorSize=(8, 8), pixelSpacing=40.0)
    assert _node_count(scene) > n
    logic.removeDRRSequence(seq)
    assert _node_count(scene) == n


# ----------------------------------------------------------------------------- conversions
def _oblique_affine(spacing=(0.8, 1.1, 2.5), origin=(-120.5, 33.25, -410.0)):
    a, b = math.radians(17), math.radians(-9)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_volume_round_trip_keeps_voxels_and_geometry(scene, dtype):
    rng = np.random.default_rng(3)
    arr = (rng.integers(0, 200, size=(7, 5, 4))).astype(dtype)
    vol = Volume(arr, _oblique_affine())
    node = conv.volumeToVolumeNode(vol, scene, "oblique")
    assert node.GetScene() is scene and node.GetDisplayNode() is not None
    assert node.GetImageData().GetDimensions() == (7, 5, 4)
    # IJK-to-RAS is the LPS affine with x and y negated
    np.testing.assert_allclose(conv.ijkToRas(node), np.diag([-1, -1, 1, 1]) @ vol.affine, atol=1e-12)
    # a voxel's value at its index: vtk stores x fastest
    kji = slicer.util.arrayFromVolume(node) if hasattr(slicer.util, "arrayFromVolume") else None
    if kji is not None:
        assert kji[3, 2, 6] == arr[6, 2, 3]
    back = conv.volumeNodeToVolume(node)
    assert back.array.dtype == arr.dtype
    np.testing.assert_array_equal(back.array, arr)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-12)
    # node -> Volume -> node keeps voxels and IJK-to-RAS
    again = conv.volumeToVolumeNode(back, scene, "again")
    np.testing.assert_allclose(conv.ijkToRas(again), conv.ijkToRas(node), atol=1e-12)
    np.testing.assert_array_equal(conv.volumeNodeToVolume(again).array, arr)


def test_slicer_made_node_round_trip(scene):
    """A node made the Slicer way (origin, spacing, directions in RAS), oblique: node ->
    Volume -> node keeps voxels and IJK-to-RAS, and the Volume is in LPS."""
    import vtk
    node = slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(node)
    img = vtk.vtkImageData()
    img.SetDimensions(3, 4, 5)
    img.AllocateScalars(vtk.VTK_SHORT, 1)
    voxels = np.arange(60, dtype=np.int16).reshape(5, 4, 3)      # [k, j, i]
    from vtk.util import numpy_support
    numpy_support.vtk_to_numpy(img.GetPointData().GetScalars())[:] = voxels.ravel()
    node.SetAndObserveImageData(img)
    node.SetOrigin(10.0, -20.0, 30.0)                  # RAS
    node.SetSpacing(0.5, 0.6, 2.0)
    direction = _oblique_affine(spacing=(1, 1, 1))[:3, :3]
    node.SetIJKToRASDirections(*direction.ravel())
    vol = conv.volumeNodeToVolume(node)
    np.testing.assert_allclose(vol.origin, [-10.0, 20.0, 30.0])
    np.testing.assert_allclose(vol.spacing, [0.5, 0.6, 2.0])
    np.testing.assert_allclose(vol.direction, np.diag([-1, -1, 1]) @ direction, atol=1e-12)
    assert vol.array[2, 1, 4] == voxels[4, 1, 2]
    back = conv.volumeToVolumeNode(vol, scene, "back")
    np.testing.assert_allclose(conv.ijkToRas(back), conv.ijkToRas(node), atol=1e-12)
    np.testing.assert_array_equal(conv._arrayKJI(back), voxels)


def test_parent_transform_is_applied(scene):
    node = conv.volumeToVolumeNode(Volume(np.zeros((2, 2, 2), np.float32), np.eye(4)), scene, "v")
    t = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(t)
    m = np.eye(4)
    m[:3, 3] = (5.0, 6.0, 7.0)                        # RAS shift
    t.SetMatrixTransformToParent(conv.vtkMatrixFromArray(m))
    node.SetAndObserveTransformNodeID(t.GetID())
    vol = conv.volumeNodeToVolume(node)
    np.testing.assert_allclose(vol.origin, [-5.0, -6.0, 7.0])


def test_radiograph_round_trip(scene):
    image = np.arange(6 * 9, dtype=np.float32).reshape(6, 9)
    rg = Radiograph(image=image, spacing=(0.5, 0.7), view_position="PA", spacing_is_default=True)
    node = conv.radiographToVolumeNode(rg, scene, "cxr")
    assert node.GetImageData().GetDimensions() == (9, 6, 1)
    m = conv.ijkToRas(node)
    # default PA frame: columns towards the patient's left (-R), rows towards the feet
    np.testing.assert_allclose(m[:3, 0], [-0.7, 0, 0], atol=1e-12)
    np.testing.assert_allclose(m[:3, 1], [0, 0, -0.5], atol=1e-12)
    np.testing.assert_allclose(conv.nodeCenterRas(node), [0, 0, 0], atol=1e-9)
    back = conv.volumeNodeToRadiograph(node)
    np.testing.assert_array_equal(back.image, image)
    assert back.spacing == (0.5, 0.7) and back.view_position == "PA" and back.spacing_is_default


def test_radiograph_node_keeps_what_sizes_its_chest(scene):
    """The header facts inference reads (imager spacing, magnification, source distance)
    survive the trip through a node, so Slicer sizes a chest as ``xray2xray infer`` does;
    the rest of the metadata is not stored."""
    meta = {"imager_pixel_spacing": ("0.2", "0.2"), "magnification": 1.13,
            "source_to_detector_mm": 1000.0, "manufacturer": "ACME", "window": None}
    rg = Radiograph(np.ones((6, 9), np.float32), (0.18, 0.18), "PA", meta)
    back = conv.volumeNodeToRadiograph(conv.radiographToVolumeNode(rg, scene, "cxr"))
    assert back.metadata["imager_pixel_spacing"] == ["0.2", "0.2"]
    assert back.metadata["magnification"] == 1.13
    assert back.metadata["source_to_detector_mm"] == 1000.0
    assert "manufacturer" not in back.metadata


def test_radiograph_from_a_slice_in_another_plane(scene):
    """A single-slice node whose constant axis is j: columns along i, rows along k."""
    arr = np.arange(4 * 1 * 3, dtype=np.float32).reshape(4, 1, 3)    # (i, j, k)
    node = conv.volumeToVolumeNode(Volume(arr, np.diag([2.0, 1.0, 3.0, 1.0])), scene, "coronal")
    rg = conv.volumeNodeToRadiograph(node)
    np.testing.assert_array_equal(rg.image, arr[:, 0, :].T)
    assert rg.spacing == (3.0, 2.0)


def test_real_radiograph_as_node(scene, shared_data):
    logic = Xray2XrayCoreLogic(scene)
    from XrayWorldModel.io import DefaultSpacingWarning, read_cxr
    with pytest.warns(DefaultSpacingWarning):         # its header holds PixelSpacing 0, 0
        node = logic.loadRadiograph(shared_data / "chest_cr_pa.dcm")
    with pytest.warns(DefaultSpacingWarning):
        expected = read_cxr(shared_data / "chest_cr_pa.dcm")
    rg = conv.volumeNodeToRadiograph(node)
    assert rg.shape == expected.shape
    np.testing.assert_array_equal(rg.image, expected.image)
    assert rg.spacing == expected.spacing and rg.spacing_is_default == expected.spacing_is_default


# ----------------------------------------------------------------------------- bad input
def _bad_input_cases(scene):
    import vtk
    model = slicer.vtkMRMLModelNode()
    scene.AddNode(model)
    empty = slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(empty)
    flat = conv.radiographToVolumeNode(Radiograph(np.ones((8, 8), np.float32), (1.0, 1.0)), scene, "cxr")
    labels = slicer.vtkMRMLLabelMapVolumeNode()
    scene.AddNode(labels)
    img = vtk.vtkImageData()
    img.SetDimensions(4, 4, 4)
    img.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    labels.SetAndObserveImageData(img)
    return {"none": None, "model node": model, "empty volume": empty,
            "single-slice image": flat, "label map": labels, "not a node": np.zeros((4, 4, 4))}


@pytest.mark.parametrize("case", ["none", "model node", "empty volume", "single-slice image",
                                  "label map", "not a node"])
def test_bad_ct_gives_a_clear_error_and_leaves_the_scene(scene, case):
    logic = Xray2XrayCoreLogic(scene)
    node = _bad_input_cases(scene)[case]
    n = _node_count(scene)
    with pytest.raises(InputError) as info:
        logic.generateDRRs(node, [0, 90])
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300
    if case == "single-slice image":
        assert isinstance(info.value, NotAVolumeError)
    assert _node_count(scene) == n


@pytest.mark.parametrize("angles, words", [([], "empty"), (None, "no angles"), ("", "no angles"),
                                           ([0, float("nan")], "finite"), ([0, 0], "distinct"),
                                           (["a"], "numbers")])
def test_bad_angles(scene, angles, words):
    logic = Xray2XrayCoreLogic(scene)
    ct = conv.volumeToVolumeNode(_phantom(), scene, "phantom")
    n = _node_count(scene)
    with pytest.raises(ValueError, match=words):
        logic.generateDRRs(ct, angles)
    assert _node_count(scene) == n


@pytest.mark.parametrize("kwargs", [dict(sdd=1000, sod=1500), dict(detectorSize=(0, 10)),
                                    dict(pixelSpacing=-1), dict(detectorSize=(1.5, 2)),
                                    dict(method="magic")])
def test_bad_geometry(scene, kwargs):
    logic = Xray2XrayCoreLogic(scene)
    ct = conv.volumeToVolumeNode(_phantom(), scene, "phantom")
    n = _node_count(scene)
    with pytest.raises(InputError):
        logic.generateDRRs(ct, [0], **kwargs)
    assert _node_count(scene) == n


def test_ct_from_another_scene_is_refused(scene):
    other = slicer.vtkMRMLScene()
    ct = conv.volumeToVolumeNode(_phantom(), other, "elsewhere")
    with pytest.raises(InputError, match="not in this logic's scene"):
        Xray2XrayCoreLogic(scene).generateDRRs(ct, [0])


def test_ct_where_a_radiograph_is_needed(scene):
    ct = conv.volumeToVolumeNode(_phantom(), scene, "phantom")
    with pytest.raises(NotARadiographError, match="3D volume"):
        conv.volumeNodeToRadiograph(ct)


def test_logic_needs_a_scene(monkeypatch):
    monkeypatch.setattr(slicer, "mrmlScene", None, raising=False)
    with pytest.raises(InputError, match="no MRML scene"):
        Xray2XrayCoreLogic(None)


# ----------------------------------------------------------------------------- inference
#: A world model small enough for CPU tests (as in test_infer.py), saved as a real model file.
TINY = {"image_size": 32, "patch_size": 8, "patch_width": 0, "embed_dim": 32, "depth": 1, "heads": 2,
        "transition_depth": 1, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2,
        "decoder_channels": 4}
from probe_heads import PATHOLOGIES, random_probe_heads  # noqa: E402


def _tiny_model_file(path: Path, heads: bool) -> Path:
    import torch
    from XrayWorldModel.infer import domain_reference
    from XrayWorldModel.models import WorldModel
    from XrayWorldModel.config import load_config
    from XrayWorldModel.data.views import render_views
    from XrayWorldModel.weights.model_file import save_model_file
    cfg = load_config("cpu-small", [f"model.{k}={v}" for k, v in TINY.items()] + ["views.image_size=32"])
    frontals = render_views([_phantom(s, (48, 48, 40), (7.5, 7.5, 9.0)) for s in (0, 1)],
                            cfg.views, [0.0])[:, 0]
    torch.manual_seed(0)
    model = WorldModel(cfg.model)
    card = {"name": "tiny-test" if heads else "tiny-plain", "version": "1",
            "config": cfg.to_dict(), "domain": domain_reference(frontals),
            "intended_use": "tests only"}
    if heads:
        card["heads"] = random_probe_heads(model)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    return Path(save_model_file(path, tensors, card))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {"heads": _tiny_model_file(folder / "tiny.safetensors", heads=True),
            "plain": _tiny_model_file(folder / "tiny-plain.safetensors", heads=False)}


def _load_real_radiograph(logic, shared_data):
    from XrayWorldModel.io import DefaultSpacingWarning
    path = shared_data / "chest_cr_pa.dcm"
    if not path.is_file():
        pytest.skip(f"the real radiograph {path} is absent")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DefaultSpacingWarning)   # its PixelSpacing is 0, 0
        return logic.loadRadiograph(path)


@pytest.fixture(scope="module")
def cxr_inference(shared_data, tiny_models):
    """The real PA radiograph as a node under a study, through runInference with the tiny
    model (views at 90 deg, a 32^3 volume)."""
    scene = _new_scene()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    logic = Xray2XrayCoreLogic(scene)
    cxr = _load_real_radiograph(logic, shared_data)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient"), "Chest X-ray study")
    sh.CreateItem(study, cxr)
    n = _node_count(scene)
    calls = []
    outputs = logic.runInference(cxr, model=tiny_models["heads"], views=(90,), volumeSize=32,
                                 progressCallback=lambda f, text: calls.append(f))
    yield dict(scene=scene, logic=logic, cxr=cxr, sh=sh, study=study, outputs=outputs,
               result=outputs["result"], added=_node_count(scene) - n, calls=calls)
    scene.Clear(1)


def _table_values(tableNode) -> dict:
    table = tableNode.GetTable()
    names = [table.GetColumn(c).GetName() for c in range(table.GetNumberOfColumns())]
    assert names[:2] == ["Output", "Value"]
    return {table.GetValue(r, 0).ToString(): table.GetValue(r, 1).ToString()
            for r in range(table.GetNumberOfRows())}


def test_inference_returns_the_three_outputs(cxr_inference):
    out = cxr_inference["outputs"]
    assert set(out) == {"volume", "views", "table", "volumeStd", "viewsStd", "results", "result"}
    assert out["volume"].IsA("vtkMRMLScalarVolumeNode") and out["volume"].GetScene() is cxr_inference["scene"]
    assert out["views"].IsA("vtkMRMLSequenceNode") and out["table"].IsA("vtkMRMLTableNode")
    assert out["table"].GetScene() is cxr_inference["scene"]
    assert cxr_inference["added"] > 3                 # + browser, proxy, display nodes
    assert cxr_inference["calls"][0] == 0.0 and cxr_inference["calls"][-1] == 1.0


def test_inference_volume_node_has_the_true_geometry(cxr_inference):
    node, result = cxr_inference["outputs"]["volume"], cxr_inference["result"]
    assert node.GetImageData().GetDimensions() == (32, 32, 32)
    np.testing.assert_allclose(conv.ijkToRas(node), conv.LPS_TO_RAS @ result.volume.affine, atol=1e-9)
    np.testing.assert_array_equal(conv.volumeNodeToVolume(node).array, result.volume.array)
    assert node.GetNodeReference("Xray2XraySourceCXR") is cxr_inference["cxr"]


def test_predicted_view_lies_on_its_detector_plane(cxr_inference):
    seq, result = cxr_inference["outputs"]["views"], cxr_inference["result"]
    assert seq.GetNumberOfDataNodes() == 1 and seq.GetNthIndexValue(0) == "90"
    node = seq.GetDataNodeAtValue("90")
    g = result.view_geometry
    assert g.angles == (90.0,)
    # the detector centre of the package's geometry, in RAS
    np.testing.assert_allclose(conv.nodeCenterRas(node), g.detector_centers()[0] * RAS_FROM_LPS,
                               atol=1e-6)
    # 90 deg (left lateral), isocentre at the origin: the detector at the patient's left, -R
    np.testing.assert_allclose(conv.nodeCenterRas(node), [-(g.sdd - g.sod), 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(conv.ijkToRas(node), conv.LPS_TO_RAS @ g.detector_affine(0), atol=1e-9)
    rg = conv.volumeNodeToRadiograph(node)
    np.testing.assert_array_equal(rg.image, result.views[0])
    assert rg.view_position == "LL"
    browser = cxr_inference["logic"].sequencesLogic().GetFirstBrowserNodeForSequenceNode(seq)
    assert browser is not None and browser.GetProxyNode(seq) is not None


def _table_notes(tableNode) -> dict:
    table = tableNode.GetTable()
    return {table.GetValue(r, 0).ToString(): table.GetValue(r, 2).ToString()
            for r in range(table.GetNumberOfRows())}


def _assert_scores_in_table(values: dict, notes: dict, results: dict):
    """The table shows the verdict; "withheld" with the reason where the verdict withholds
    the scores, else each probability with honest precision (never 1.000 / 0.000)."""
    from XrayWorldModel.conventions import format_probability
    trust, scores = results["trust"], results["scores"]
    assert values["Trust verdict"] == ("in distribution" if trust["in_distribution"]
                                       else "OUT OF DISTRIBUTION")
    assert all(r in notes["Trust verdict"] for r in trust["reasons"])
    rows = ["Cardiovascular risk"] + [f"Pathology: {p.replace('_', ' ')}" for p in PATHOLOGIES]
    if scores["withheld"]:
        assert all(values[r] == "withheld" and notes[r] == scores["withheld"] for r in rows)
        return
    assert values["Cardiovascular risk"] == format_probability(scores["risk"])
    for name, p in scores["pathologies"].items():
        assert values[f"Pathology: {name.replace('_', ' ')}"] == format_probability(p)
    assert not any(re.fullmatch(r"[01]\.0+", values[r]) for r in rows)
    if scores["forced"]:
        assert all("OUT OF DISTRIBUTION" in notes[r] for r in rows)


def test_inference_table_holds_the_models_values(cxr_inference, tiny_models):
    result = cxr_inference["result"]
    table = cxr_inference["outputs"]["table"]
    values, notes = _table_values(table), _table_notes(table)
    results = cxr_inference["outputs"]["results"]
    assert set(result.scores["pathologies"]) == set(PATHOLOGIES)
    # no OOD reference in this (old-style) card: the verdict is the consistency's alone
    assert results["trust"]["reference"] is False
    assert results["trust"]["in_distribution"] == (result.consistency >= 0.7)
    _assert_scores_in_table(values, notes, results)
    assert float(values["Consistency (NCC)"]) == pytest.approx(result.consistency, abs=5e-5)
    assert values["Model name"] == "tiny-test" and values["Model version"] == "1"
    assert values["Model SHA256"] == hashlib.sha256(tiny_models["heads"].read_bytes()).hexdigest()
    # the full-precision results ride on the table node
    stored = Xray2XrayCoreLogic.tableResults(cxr_inference["outputs"]["table"])
    assert stored == results and stored["consistency"]["ncc"] == result.consistency


def test_forced_scores_show_in_the_table_marked(scene, shared_data, tiny_models):
    """forceScores=True: the table holds the probabilities even out of distribution, each
    marked so; without it the same radiograph's rows agree with its verdict."""
    logic = Xray2XrayCoreLogic(scene)
    cxr = _load_real_radiograph(logic, shared_data)
    out = logic.runInference(cxr, model=tiny_models["heads"], views=(), volumeSize=16,
                             uncertainty=0, forceScores=True)
    results = out["results"]
    assert results["scores"]["withheld"] is None and results["scores"]["pathologies"]
    assert results["scores"]["forced"] == (not results["trust"]["in_distribution"])
    _assert_scores_in_table(_table_values(out["table"]), _table_notes(out["table"]), results)


@pytest.mark.parametrize("case", ["withheld", "forced", "in distribution", "no trust field"])
def test_table_rows_from_results(case):
    """The table's rows from results.json dicts the package writes (trust.output_scores)."""
    from Xray2XrayLib.core import inferenceTableRows
    from XrayWorldModel.infer.trust import output_scores, verdict
    raw = {"risk": 0.9996, "risk_logit": 7.8, "risk_details": {"hazard_ratio": 2.5},
           "pathologies": {p: 0.0001 if i else 0.5 for i, p in enumerate(PATHOLOGIES)},
           "pathology_logits": {p: 0.0 for p in PATHOLOGIES}, "calibrated": True}
    ood = {"withheld": (40.0, 0.95), "forced": (40.0, 0.95), "in distribution": (3.0, 0.95),
           "no trust field": (3.0, 0.95)}[case]
    trust = verdict({"score": ood[0], "threshold": 9.0}, ood[1])
    results = {"trust": trust, "scores": output_scores(raw, trust, force=case == "forced",
                                                       note="demonstration model"),
               "consistency": {"ncc": 0.95, "reading": "consistent"}, "model": {"name": "m"}}
    if case == "no trust field":          # a results.json written before the verdict existed
        results.pop("trust")
    rows = {r[0]: (r[1], r[2]) for r in inferenceTableRows(results)}
    if case == "no trust field":
        assert rows["Trust verdict"][0] == "n/a"
    else:
        values = {k: v[0] for k, v in rows.items()}
        _assert_scores_in_table(values, {k: v[1] for k, v in rows.items()}, results)
    if case == "withheld":
        assert "OOD score 40.0 > threshold 9.0" in rows["Cardiovascular risk"][1]
        assert "Risk: hazard ratio" not in rows
    else:
        assert rows["Cardiovascular risk"][0] == "> 0.99"
        assert rows["Pathology: cardiomegaly"][0] == "< 0.01"
        assert rows["Pathology: atelectasis"][0] == "0.50"
        assert rows["Scores"][1] == "demonstration model"


def _assert_std_nodes_match(outputs, volume, views, geometry):
    """The std maps are volume nodes with the geometry of the outputs they belong to."""
    vstd, vnode = outputs["volumeStd"], outputs["volume"]
    assert vstd.IsA("vtkMRMLScalarVolumeNode") and vstd.GetAttribute("Xray2Xray.Kind") == "InferenceVolumeStd"
    assert vstd.GetImageData().GetDimensions() == vnode.GetImageData().GetDimensions()
    np.testing.assert_allclose(conv.ijkToRas(vstd), conv.ijkToRas(vnode), atol=1e-9)
    np.testing.assert_array_equal(conv.volumeNodeToVolume(vstd).array, volume)
    assert vstd.GetNodeReference("Xray2XrayStdOf") is vnode
    seq, seqStd = outputs["views"], outputs["viewsStd"]
    assert seqStd.IsA("vtkMRMLSequenceNode") and seqStd.GetNodeReference("Xray2XrayStdOf") is seq
    assert seqStd.GetNumberOfDataNodes() == seq.GetNumberOfDataNodes() == len(geometry.angles)
    for a, angle in enumerate(geometry.angles):
        node, std = seq.GetDataNodeAtValue(f"{angle:g}"), seqStd.GetDataNodeAtValue(f"{angle:g}")
        assert std.IsA("vtkMRMLScalarVolumeNode") and std.GetAttribute("Xray2Xray.Kind") == "PredictedViewStd"
        np.testing.assert_allclose(conv.ijkToRas(std), conv.ijkToRas(node), atol=1e-9)
        np.testing.assert_allclose(conv.ijkToRas(std), conv.LPS_TO_RAS @ geometry.detector_affine(a),
                                   atol=1e-9)
        np.testing.assert_array_equal(conv.volumeNodeToRadiograph(std).image, views[a])


def test_inference_std_maps_lie_on_the_geometry_of_their_outputs(cxr_inference):
    out, result = cxr_inference["outputs"], cxr_inference["result"]
    assert result.uncertainty is not None and result.uncertainty.passes >= 2
    _assert_std_nodes_match(out, result.uncertainty.volume_std.array, result.uncertainty.views_std,
                            result.view_geometry)
    sh, study = cxr_inference["sh"], cxr_inference["study"]
    item = sh.GetItemByDataNode(out["volumeStd"])
    assert item and sh.GetItemParent(item) == study
    assert out["results"]["uncertainty"]["passes"] == result.uncertainty.passes


def test_inference_without_uncertainty_adds_no_std_nodes(scene, tiny_models):
    logic = Xray2XrayCoreLogic(scene)
    drr = _phantom_drr_node(logic, scene)
    n = _node_count(scene)
    out = logic.runInference(drr, model=tiny_models["plain"], views=(90,), volumeSize=16, uncertainty=0)
    assert out["volumeStd"] is None and out["viewsStd"] is None and out["results"]["uncertainty"] is None
    logic.removeInferenceOutputs(out)
    with_std = logic.runInference(drr, model=tiny_models["plain"], views=(90,), volumeSize=16,
                                  uncertainty=2)
    assert with_std["volumeStd"] is not None and with_std["viewsStd"] is not None
    logic.removeInferenceOutputs(with_std)
    assert _node_count(scene) == n
    with pytest.raises(InputError, match="uncertainty"):
        logic.runInference(drr, model=tiny_models["plain"], views=(90,), volumeSize=16, uncertainty=1)
    assert _node_count(scene) == n


def test_inference_outputs_are_placed_under_the_radiographs_study(cxr_inference):
    sh, study, out = cxr_inference["sh"], cxr_inference["study"], cxr_inference["outputs"]
    browser = cxr_inference["logic"].sequencesLogic().GetFirstBrowserNodeForSequenceNode(out["views"])
    for node in (out["volume"], out["table"], out["views"], browser, browser.GetProxyNode(out["views"])):
        item = sh.GetItemByDataNode(node)
        assert item and sh.GetItemParent(item) == study, node.GetName()


def _phantom_drr_node(logic, scene):
    """A frontal (0 deg) DRR of a phantom chest: the proxy node a user would pick."""
    ct = conv.volumeToVolumeNode(_phantom(), scene, "phantom")
    seq = logic.generateDRRs(ct, [0], detectorSize=(48, 48), pixelSpacing=8.0)
    return logic.sequencesLogic().GetFirstBrowserNodeForSequenceNode(seq).GetProxyNode(seq)


def test_inference_sizes_a_drr_by_its_own_magnification_or_a_stated_one(scene, tiny_models):
    """A DRR made here carries its geometry's magnification to inference; a stated one
    replaces it; an implausible one is refused before anything is added."""
    logic = Xray2XrayCoreLogic(scene)
    drr = _phantom_drr_node(logic, scene)          # at the module's default SDD and SOD
    n = _node_count(scene)
    out = logic.runInference(drr, model=tiny_models["plain"], views=(), volumeSize=16, uncertainty=0)
    spacing = out["results"]["preprocessing"]["spacing"]
    assert spacing["magnification"] == pytest.approx(DEFAULT_SDD / DEFAULT_SOD)
    stated = logic.runInference(drr, model=tiny_models["plain"], views=(), volumeSize=16,
                                uncertainty=0, magnification=1.16)
    assert stated["results"]["preprocessing"]["spacing"]["magnification"] == 1.16
    for o in (out, stated):
        logic.removeInferenceOutputs(o)
    with pytest.raises(InputError, match="magnification"):
        logic.runInference(drr, model=tiny_models["plain"], views=(), volumeSize=16, magnification=2.5)
    assert _node_count(scene) == n


def test_inference_without_heads_or_views(scene, tiny_models):
    logic = Xray2XrayCoreLogic(scene)
    drr = _phantom_drr_node(logic, scene)
    n = _node_count(scene)
    out = logic.runInference(drr, model=str(tiny_models["plain"]), views=[], volumeSize=16)
    assert out["views"] is None and out["volume"].GetImageData().GetDimensions() == (16, 16, 16)
    values = _table_values(out["table"])
    assert values["Cardiovascular risk"] == "n/a"
    assert [values[f"Pathology: {p.replace('_', ' ')}"] for p in PATHOLOGIES] == ["n/a"] * 5
    assert values["Model name"] == "tiny-plain"
    logic.removeInferenceOutputs(out)
    assert _node_count(scene) == n
    assert out["volume"].GetScene() is None and out["table"].GetScene() is None


@pytest.mark.parametrize("case", ["none", "ct node", "model node", "empty volume", "label map",
                                  "lateral view", "bad views", "bad volume size", "missing model"])
def test_bad_radiograph_gives_a_clear_error_and_leaves_the_scene(scene, tiny_models, tmp_path, case):
    logic = Xray2XrayCoreLogic(scene)
    cases = _bad_input_cases(scene)
    node = {"none": None, "ct node": conv.volumeToVolumeNode(_phantom(), scene, "CT"),
            "model node": cases["model node"], "empty volume": cases["empty volume"],
            "label map": cases["label map"],
            "lateral view": conv.radiographToVolumeNode(
                Radiograph(np.random.default_rng(0).random((40, 40)).astype(np.float32), (1.0, 1.0), "LL"),
                scene, "lateral")}.get(case, cases["single-slice image"])
    kwargs = dict(model=tiny_models["plain"], views=(90,), volumeSize=16)
    if case == "bad views":
        kwargs["views"] = [90, float("nan")]
    elif case == "bad volume size":
        kwargs["volumeSize"] = 8
    elif case == "missing model":      # a radiograph the screen passes, so the model is looked up
        kwargs["model"] = tmp_path / "nope.safetensors"
        node = _phantom_drr_node(logic, scene)
    n = _node_count(scene)
    with pytest.raises(InputError) as info:
        logic.runInference(node, **kwargs)
    message = str(info.value)
    assert "\n" not in message and len(message) < 300
    words = {"none": "no radiograph node", "ct node": "3D volume", "model node": "not a volume node",
             "empty volume": "no image data", "label map": "label map", "lateral view": "lateral",
             "bad views": "finite", "bad volume size": "between 16 and 512",
             "missing model": "nope.safetensors"}[case]
    assert words in message
    if case == "ct node":
        assert isinstance(info.value, NotARadiographError)
    assert _node_count(scene) == n


def test_inference_cancel_leaves_the_scene_unchanged(scene, tiny_models):
    logic = Xray2XrayCoreLogic(scene)
    drr = _phantom_drr_node(logic, scene)
    n = _node_count(scene)
    with pytest.raises(CancelledError):
        logic.runInference(drr, model=tiny_models["plain"], views=(90,), volumeSize=16,
                           progressCallback=lambda fraction, text: fraction < 0.5)
    assert _node_count(scene) == n


def test_inference_failing_while_adding_nodes_leaves_the_scene_unchanged(scene, tiny_models,
                                                                         monkeypatch):
    """A failure after the volume and the views sequence were added removes them again."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    logic = Xray2XrayCoreLogic(scene)
    drr = _phantom_drr_node(logic, scene)
    n, items = _node_count(scene), sh.GetNumberOfItems()

    def broken(self, results, name):
        raise RuntimeError("table failed")

    monkeypatch.setattr(Xray2XrayCoreLogic, "_addResultsTable", broken)
    with pytest.raises(RuntimeError, match="table failed"):
        logic.runInference(drr, model=tiny_models["plain"], views=(90, 270), volumeSize=16)
    assert _node_count(scene) == n and sh.GetNumberOfItems() == items


def test_load_inference_outputs_written_by_the_cli(scene, tmp_path, shared_data, tiny_models):
    from XrayWorldModel.cli import main
    from XrayWorldModel.io.drr_stack import read_drr_stack
    from XrayWorldModel.io import read_ct
    cr = shared_data / "chest_cr_pa.dcm"
    if not cr.is_file():
        pytest.skip(f"the real radiograph {cr} is absent")
    out = tmp_path / "out"
    rc = main(["infer", str(cr), "--out", str(out), "--model", str(tiny_models["heads"]),
               "--views", "90,270", "--volume-size", "32", "--device", "cpu", "--force-scores"])
    assert rc == 0
    logic = Xray2XrayCoreLogic(scene)
    n = _node_count(scene)
    loaded = logic.loadInferenceOutputs(out)
    assert _node_count(scene) > n
    data = json.loads((out / "results.json").read_text())
    assert loaded["results"] == data
    # the volume node: the file's voxels and geometry
    vol = read_ct(out / "volume.nii.gz")
    np.testing.assert_allclose(conv.ijkToRas(loaded["volume"]), conv.LPS_TO_RAS @ vol.affine, atol=1e-9)
    np.testing.assert_array_equal(conv.volumeNodeToVolume(loaded["volume"]).array, vol.array)
    assert loaded["volume"].GetName().startswith("chest_cr_pa")
    # the views: the stack's pixels on the stack's detector planes
    views, geometry, _ = read_drr_stack(out / "views.nii.gz")
    seq = loaded["views"]
    assert seq.GetNumberOfDataNodes() == 2
    for a, angle in enumerate(geometry.angles):
        node = seq.GetDataNodeAtValue(f"{angle:g}")
        np.testing.assert_array_equal(conv.volumeNodeToRadiograph(node).image, views[a])
        np.testing.assert_allclose(conv.ijkToRas(node), conv.LPS_TO_RAS @ geometry.detector_affine(a),
                                   atol=1e-9)
    lat = conv.nodeCenterRas(seq.GetDataNodeAtValue("90"))
    assert lat[0] < -100 and conv.nodeCenterRas(seq.GetDataNodeAtValue("270"))[0] > 100
    # the table: results.json's values
    values = _table_values(loaded["table"])
    assert data["scores"]["pathologies"] and data["scores"]["withheld"] is None    # forced
    _assert_scores_in_table(values, _table_notes(loaded["table"]), data)
    assert float(values["Consistency (NCC)"]) == pytest.approx(data["consistency"]["ncc"], abs=5e-5)
    assert values["Model SHA256"] == data["model"]["sha256"]
    # the std maps the CLI wrote: nodes on the geometry of their outputs
    _assert_std_nodes_match(loaded, read_ct(out / "volume_std.nii.gz").array,
                            read_drr_stack(out / "views_std.nii.gz")[0], geometry)

    # broken output folders: a clear error, the scene unchanged
    n = _node_count(scene)
    with pytest.raises(InputError, match="not a folder"):
        logic.loadInferenceOutputs(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no results.json"):
        logic.loadInferenceOutputs(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "views.nii.gz").unlink()
    with pytest.raises(InputError, match="views.nii.gz"):
        logic.loadInferenceOutputs(broken)
    assert _node_count(scene) == n


def test_infer_job_runs_the_cli_on_a_written_radiograph(scene, tmp_path, tiny_models):
    """The widget's path: the radiograph node written as a 2D NRRD, `xray2xray infer` in a
    background process, its outputs loaded as nodes."""
    from XrayWorldModel.io import read_cxr
    logic = Xray2XrayCoreLogic(scene)
    drr = _phantom_drr_node(logic, scene)
    path = logic.writeRadiographFile(drr, tmp_path / "cxr.nrrd")
    back, node = read_cxr(path), conv.volumeNodeToRadiograph(drr)
    assert back.shape == node.shape == (48, 48) and back.spacing == node.spacing == (8.0, 8.0)
    lo, hi = node.image.min(), node.image.max()
    np.testing.assert_allclose(back.image, (node.image - lo) / (hi - lo), atol=1e-6)
    # the DRR's geometry survives the file, so the job sizes the chest as runInference does
    assert back.metadata["magnification"] == pytest.approx(node.metadata["magnification"])

    out = tmp_path / "out"
    job = jobs.inferJob(path, out, model=tiny_models["heads"], views=[90], volumeSize=16, device="cpu")
    assert job.arguments[:4] == ["-m", "XrayWorldModel.cli", "infer", str(path)]
    assert job.arguments[job.arguments.index("--views") + 1] == "90"
    assert job.arguments[-2:] == ["--model", str(tiny_models["heads"])]
    assert job.environment["CUDA_VISIBLE_DEVICES"] == "" and job.outputs == out
    assert job.progress() == (None, "running the model")
    result = job.run(timeout=600)
    assert result.returncode == 0, result.stderr
    assert job.progress() == (1.0, "results written")
    # a new job on the same folder does not take the old results.json for its own
    again = jobs.inferJob(path, out, model=tiny_models["heads"], device="cpu")
    assert again.progress() == (None, "running the model")

    n = _node_count(scene)
    loaded = logic.loadInferenceOutputs(job.outputs, sourceNode=drr)
    assert _node_count(scene) > n and loaded["views"].GetNumberOfDataNodes() == 1
    assert loaded["volume"].GetImageData().GetDimensions() == (16, 16, 16)
    # the background job's std maps load beside their outputs, on the same grid
    assert loaded["volumeStd"].GetImageData().GetDimensions() == (16, 16, 16)
    np.testing.assert_allclose(conv.ijkToRas(loaded["volumeStd"]), conv.ijkToRas(loaded["volume"]),
                               atol=1e-9)
    assert loaded["viewsStd"].GetNumberOfDataNodes() == 1
    off = jobs.inferJob(path, out, model=tiny_models["heads"], device="cpu", uncertainty=0)
    assert off.arguments[off.arguments.index("--uncertainty") + 1] == "0"
    assert loaded["volume"].GetName().startswith(drr.GetName())
    assert loaded["results"]["model"]["name"] == "tiny-test"
    spacing = loaded["results"]["preprocessing"]["spacing"]
    assert spacing["magnification"] == pytest.approx(node.metadata["magnification"])


def test_infer_job_takes_what_the_user_knows_of_the_geometry(scene, tmp_path, tiny_models):
    """The widget's pixel spacing and magnification fields reach the background infer and
    win over the file's (a DRR made here states 1.2); the same values the CLI refuses are
    refused before anything runs."""
    import json as _json
    logic = Xray2XrayCoreLogic(scene)
    path = logic.writeRadiographFile(_phantom_drr_node(logic, scene), tmp_path / "cxr.nrrd")
    job = jobs.inferJob(path, tmp_path / "out", model=tiny_models["heads"], views=[], volumeSize=16,
                        device="cpu", uncertainty=0, pixelSpacing=7.5, magnification=1.16)
    assert job.arguments[-4:] == ["--pixel-spacing", "7.5", "--magnification", "1.16"]
    result = job.run(timeout=600)
    assert result.returncode == 0, result.stderr
    spacing = _json.loads((tmp_path / "out" / "results.json").read_text())["preprocessing"]["spacing"]
    assert spacing["magnification"] == pytest.approx(1.16) and spacing["magnification_source"] == "user"
    assert spacing["source"] == "user" and spacing["used_mm"] == pytest.approx([7.5, 7.5])
    for bad in ({"magnification": 1.0}, {"magnification": 2.5}, {"pixelSpacing": 0.0},
                {"pixelSpacing": float("nan")}, {"pixelSpacing": "wide"}, {"magnification": [1.1]}):
        with pytest.raises(InputError, match="magnification|pixel spacing"):
            jobs.inferJob(path, tmp_path / "out", device="cpu", **bad)


def test_infer_job_bad_input(tmp_path):
    cxr = tmp_path / "cxr.nrrd"
    with pytest.raises(InputError, match="no such radiograph"):
        jobs.inferJob(cxr, tmp_path / "out")
    cxr.write_bytes(b"x")
    with pytest.raises(InputError, match="device"):
        jobs.inferJob(cxr, tmp_path / "out", device="tpu")
    with pytest.raises(InputError, match="between 16 and 512"):
        jobs.inferJob(cxr, tmp_path / "out", volumeSize=8)
    with pytest.raises(InputError, match="finite"):
        jobs.inferJob(cxr, tmp_path / "out", views=[float("inf")])
    with pytest.raises(InputError, match="distinct"):
        jobs.inferJob(cxr, tmp_path / "out", views="90,90")
    with pytest.raises(InputError, match="uncertainty"):
        jobs.inferJob(cxr, tmp_path / "out", uncertainty=1)
    # text as the widget's field holds it, the same command as a list
    args = jobs.inferJob(cxr, tmp_path / "out", views=" 90, 270", device="cpu").arguments
    assert args == jobs.inferJob(cxr, tmp_path / "out", views=[90, 270], device="cpu").arguments
    assert args[args.index("--views") + 1] == "90,270"
    args = jobs.inferJob(cxr, tmp_path / "out", views="", device="cpu").arguments
    assert args[args.index("--views") + 1] == ""


def test_background_job_file_keeps_an_assumed_spacing_assumed(scene, tmp_path):
    """A PNG or a DICOM without spacing loaded in Slicer carries an assumed spacing; the file
    the background `infer` reads must say so, or the job skips the scale estimate and answers
    differently from `infer` on the original file."""
    from XrayWorldModel.io import read_cxr
    logic = Xray2XrayCoreLogic(scene)
    image = np.random.default_rng(4).random((64, 60)).astype(np.float32)
    for assumed in (True, False):
        node = conv.radiographToVolumeNode(Radiograph(image=image, spacing=(0.143, 0.143), view_position="PA",
                                                      spacing_is_default=assumed), scene, f"cxr{assumed}")
        back = read_cxr(logic.writeRadiographFile(node, tmp_path / f"cxr{assumed}.nrrd"))
        assert back.spacing_is_default is assumed and back.spacing == pytest.approx((0.143, 0.143))


def test_write_radiograph_file_refuses_a_ct(scene, tmp_path):
    ct = conv.volumeToVolumeNode(_phantom(), scene, "CT")
    with pytest.raises(NotARadiographError, match="3D volume"):
        Xray2XrayCoreLogic(scene).writeRadiographFile(ct, tmp_path / "x.nrrd")
    assert not (tmp_path / "x.nrrd").exists()


def test_slicer_layer_uses_the_package_conventions():
    """Shared constants and rules come from XrayWorldModel.conventions, their one home; no
    file of the Slicer module spells a copy of them."""
    from XrayWorldModel import conventions
    from Xray2XrayLib import core, parameters
    assert core.LATERAL_VIEW_POSITIONS is conventions.LATERAL_VIEW_POSITIONS
    assert core.RESULTS_FORMAT is conventions.RESULTS_FORMAT
    assert core.view_position is conventions.view_position
    assert core.strip_ct_suffix is conventions.strip_ct_suffix
    assert jobs.CT_VOLUME_SUFFIXES is conventions.CT_VOLUME_SUFFIXES
    assert parameters.parse_angles is conventions.parse_angles
    copies = ('"xray2xray-', '".nii.gz", ".nii"', "XRAY2XRAY_", '"LATERAL"', "user_cache_dir",
              "0.02", 'split(",")')
    for path in sorted((MODULE_DIR / "Xray2XrayLib").glob("*.py")) + [MODULE_DIR / "Xray2Xray.py"]:
        text = path.read_text()
        found = [c for c in copies if c in text]
        assert not found, f"{path.name} spells its own copy of {found}: use XrayWorldModel.conventions"


def test_drr_items_carry_the_packages_view_positions(scene):
    from XrayWorldModel.conventions import VIEW_POSITION_TOLERANCE_DEG
    logic = Xray2XrayCoreLogic(scene)
    ct = conv.volumeToVolumeNode(_phantom(), scene, "phantom")
    near = 90.0 + VIEW_POSITION_TOLERANCE_DEG / 2
    expected = {0.0: "PA", near: "LL", 180.0: "AP", 271.0: None, 270.0: "RL"}
    seq = logic.generateDRRs(ct, list(expected), detectorSize=(4, 4), pixelSpacing=100.0)
    for angle, position in expected.items():
        node = seq.GetDataNodeAtValue(f"{angle:g}")
        assert conv.volumeNodeToRadiograph(node).view_position == position, angle


def test_angle_lists_from_text_or_numbers():
    from Xray2XrayLib.parameters import angleList, volumeSize
    assert angleList("0, 90,180") == (0.0, 90.0, 180.0)
    assert angleList([90, 0]) == (90.0, 0.0) and angleList(45) == (45.0,)
    assert angleList(np.array([10.5])) == (10.5,)
    assert angleList(None, "views", allowEmpty=True) == () == angleList("", "views", allowEmpty=True)
    assert angleList([0, 0], distinct=False) == (0.0, 0.0)
    with pytest.raises(InputError, match="comma-separated numbers"):
        angleList("0,a")
    with pytest.raises(InputError, match="views must be distinct"):
        angleList("90, 90.0", "views")
    with pytest.raises(InputError, match="no angles"):
        angleList([])
    assert volumeSize(32) == 32 and volumeSize(64.0) == 64
    for bad in (8, 1000, 32.5, "abc", None):
        with pytest.raises(InputError, match="volumeSize"):
            volumeSize(bad)


# ----------------------------------------------------------------------------- jobs
def test_importing_the_lib_does_not_import_torch():
    code = ("import sys; sys.path.insert(0, %r); import Xray2XrayLib, Xray2XrayLib.jobs; "
            "heavy = [m for m in ('torch', 'monai', 'numba', 'SimpleITK') if m in sys.modules]; "
            "print(','.join(heavy))" % str(MODULE_DIR))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"imported at load time: {out.stdout.strip()}"


def test_drr_folder_job_runs_the_cli_and_reports_progress(tmp_path):
    from XrayWorldModel.io import write_volume
    cts = tmp_path / "cts"
    cts.mkdir()
    for seed in (1, 2):
        write_volume(_phantom(seed, shape=(24, 24, 20), spacing=(15.0, 15.0, 18.0)),
                     cts / f"chest{seed}.nii.gz")
    out = tmp_path / "drrs"
    job = jobs.drrFolderJob(cts, out, [0, 90], detectorSize=(16, 16), pixelSpacing=25.0, device="cpu")
    assert job.commandLine[:3] == [job.program, "-m", "XrayWorldModel.cli"]
    assert job.arguments == jobs.drrFolderJob(cts, out, "0, 90", detectorSize=(16, 16),
                                              pixelSpacing=25.0, device="cpu").arguments
    assert job.progress() == (0.0, "0 of 2 CTs")
    result = job.run(timeout=600)
    assert result.returncode == 0, result.stderr
    assert job.progress() == (1.0, "2 of 2 CTs")
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["chest1.nii.gz", "chest2.nii.gz"]


def test_drr_folder_job_bad_input(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        jobs.drrFolderJob(tmp_path / "missing", tmp_path / "out", [0])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no CT files"):
        jobs.drrFolderJob(tmp_path / "empty", tmp_path / "out", [0])
    (tmp_path / "cts").mkdir()
    (tmp_path / "cts" / "a.nii.gz").write_bytes(b"")
    for angles, words in (("", "no angles"), ([], "no angles"), ("0,x", "comma-separated"),
                          ([0, float("nan")], "finite")):
        with pytest.raises(InputError, match=words):
            jobs.drrFolderJob(tmp_path / "cts", tmp_path / "out", angles)
    with pytest.raises(InputError, match="device"):
        jobs.checkDevice("tpu")


def test_train_job_command_and_progress(tmp_path):
    job = jobs.trainJob("phantom:8", tmp_path / "run", steps=40, device="cpu", resume=True)
    args = job.arguments
    assert args[:4] == ["-m", "XrayWorldModel.cli", "train", "--config"]
    assert "data.source=phantom:8" in args and "optim.steps=40" in args and "run.device=cpu" in args
    assert args[-1] == "--resume" and job.environment["CUDA_VISIBLE_DEVICES"] == ""
    assert job.progress() == (0.0, "step 0 of 40")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text(
        json.dumps({"step": 10, "loss_total": 1.0}) + "\n" + json.dumps({"step": 10, "validation": {}})
        + "\n" + json.dumps({"step": 30}) + "\n{half a li")
    assert job.progress() == (0.75, "step 30 of 40")
    # the preset's step count when none is given
    preset = json.loads((REPO / "XrayWorldModel" / "configs" / "cpu-small.json").read_text())
    assert jobs.trainJob("phantom:8", tmp_path / "r2").progress()[1] == f"step 0 of {preset['optim']['steps']}"
    with pytest.raises(InputError, match="training data not found"):
        jobs.trainJob(tmp_path / "nope", tmp_path / "r3")


def test_models_list_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("XRAY2XRAY_MODELS", str(tmp_path / "models"))
    job = jobs.modelsJob("list")
    assert job.arguments[-3:] == ["models", "list", "--json"]
    result = job.run(timeout=300)
    assert result.returncode == 0, result.stderr
    models = jobs.parseModels(result.stdout)
    assert isinstance(models, list)
    for m in models:
        assert jobs.modelLabel(m).split()[0] == m["name"]
    assert all(m["source"] != "package" for m in models if m["name"] in jobs.removableModels(models))
    with pytest.raises(InputError):
        jobs.modelsJob("explode")


def test_cli_error_and_progress_lines():
    assert jobs.errorFromOutput("x\nxray2xray: error: /a/b.nii: not a CT\n") == "/a/b.nii: not a CT"
    assert jobs.errorFromOutput("all good") is None
    assert jobs.progressFromLine("train:  42%|####      | 42/100") == 0.42
    assert jobs.progressFromLine("xray2xray: note: 20 % of the rays (20%)") is None


def test_progress_lines_the_cli_prints_into_a_pipe_move_the_bar(capsys):
    """Under Slicer the CLI's stderr is a pipe, so it prints plain lines, not a tqdm bar:
    the module must read those, or its progress bar never moves."""
    from XrayWorldModel.console import LineProgress
    ticks = iter(range(100))
    bar = LineProgress(total=360, desc="DRR (fast)", unit="view", interval=0.5,
                       clock=lambda: float(next(ticks)))
    for _ in range(4):
        bar.update(72)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    fractions = [jobs.progressFromLine(ln) for ln in lines]
    expected = [72 * (i + 1) / 360 for i in range(len(lines))]
    assert len(lines) >= 3
    assert fractions == pytest.approx(expected, abs=0.006)


# ----------------------------------------------------------------------------- the module's logic
def _module_file(monkeypatch):
    from slicer_module import load_module_file
    return load_module_file(monkeypatch)


def _readme_console_methods():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(r'getModuleLogic\("Xray2Xray"\)` gives the module\'s logic with the same '
                      r'methods\s*\((.*?)\)', text, re.S)
    assert found, "README no longer lists the module logic's console methods"
    return re.findall(r"`(\w+)`", found.group(1))


def test_module_logic_exposes_the_core_logic(scene, tmp_path, monkeypatch):
    from XrayWorldModel.io import write_volume
    logic = _module_file(monkeypatch).Xray2XrayLogic()
    installs = []
    monkeypatch.setattr(logic, "ensureDependencies", lambda *args, **kwargs: installs.append(1) or True)
    names = _readme_console_methods()
    assert {"loadCT", "generateDRRs", "exportDRRs", "runInference", "inferJob"} <= set(names)
    for name in names:      # README's console API, each with the core's (or the job's) signature
        assert name in dir(logic)
        source = jobs if name in logic.JOBS else logic.core
        assert inspect.signature(getattr(logic, name)) == inspect.signature(getattr(source, name))
    assert logic.inferJob is jobs.inferJob
    with pytest.raises(AttributeError, match="'Xray2XrayLogic' object has no attribute 'noSuchMethod'"):
        logic.noSuchMethod
    assert not hasattr(logic, "_removeWithDisplay")       # private names stay private

    write_volume(_phantom(), tmp_path / "chest.nii.gz")
    ct = logic.loadCT(tmp_path / "chest.nii.gz")
    assert ct.GetScene() is scene and ct.GetName() == "chest" and not installs
    seq = logic.generateDRRs(ct, "0,90", detectorSize=(8, 8), pixelSpacing=50.0)
    assert installs == [1] and seq.GetNumberOfDataNodes() == 2
    assert logic.browserForSequence(seq).GetMasterSequenceNode() is seq
    n = _node_count(scene)
    with pytest.raises(ValueError):
        logic.generateDRRs(None, [0])
    assert _node_count(scene) == n and installs == [1, 1]
    other = _new_scene()                                  # the core logic follows the scene
    try:
        assert logic.core.scene is other
    finally:
        other.Clear(1)


# ----------------------------------------------------------------------------- README snippets
def _readme_snippets():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.findall(r"<!-- xray2xray-snippet: ([\w-]+) -->\s*```python\n(.*?)```", text, re.S)
    return dict(found)


def test_readme_has_the_batch_snippets():
    snippets = _readme_snippets()
    assert {"drr-folder", "drr-folder-one-call", "infer-folder", "infer-dicom-database"} <= set(snippets)


@pytest.mark.parametrize("name", ["drr-folder", "drr-folder-one-call"])
def test_readme_snippet_runs(name, tmp_path, capsys):
    from XrayWorldModel.io import write_volume
    code = _readme_snippets()[name]
    cts, out = tmp_path / "cts", tmp_path / "drrs"
    cts.mkdir()
    for seed in (4, 5):
        write_volume(_phantom(seed, shape=(24, 24, 20), spacing=(15.0, 15.0, 18.0)),
                     cts / f"phantom{seed}.nii.gz")
    assert '"/path/to/cts"' in code and '"/path/to/drrs"' in code
    code = code.replace('"/path/to/cts"', repr(str(cts))).replace('"/path/to/drrs"', repr(str(out)))
    scene = _new_scene()
    try:
        exec(compile(code, f"README.md:{name}", "exec"), {"__name__": "__main__"})
        stacks = sorted(p.name for p in out.glob("*.nii.gz"))
        assert stacks == ["phantom4.nii.gz", "phantom5.nii.gz"]
        for s in stacks:
            side = json.loads((out / s.replace(".nii.gz", ".json")).read_text())
            assert side["complete"] and side["geometry"]["angles_deg"] == [0.0, 90.0]
        seqs = scene.GetNodesByClass("vtkMRMLSequenceNode")
        assert seqs.GetNumberOfItems() == (2 if name == "drr-folder" else 0)
        printed = capsys.readouterr().out
        assert printed.strip()
    finally:
        scene.Clear(1)


def _infer_snippet(name, model, volume_size=32):
    code = _readme_snippets()[name]
    for text in ("model = None", "volumeSize=128"):
        assert text in code, f"the {name} snippet changed: {text!r} is gone"
    return code.replace("model = None", f"model = {str(model)!r}").replace(
        "volumeSize=128", f"volumeSize={volume_size}")


def test_readme_infer_folder_snippet_runs(tmp_path, shared_data, tiny_models, capsys):
    cr = shared_data / "chest_cr_pa.dcm"
    if not cr.is_file():
        pytest.skip(f"the real radiograph {cr} is absent")
    cxrs, out = tmp_path / "cxrs", tmp_path / "results.csv"
    cxrs.mkdir()
    for name in ("a.dcm", "b.dcm"):
        shutil.copy(cr, cxrs / name)
    code = _infer_snippet("infer-folder", tiny_models["heads"])
    assert '"/path/to/cxrs"' in code and '"/path/to/results.csv"' in code
    code = code.replace('"/path/to/cxrs"', repr(str(cxrs))).replace('"/path/to/results.csv"', repr(str(out)))
    scene = _new_scene()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(compile(code, "README.md:infer-folder", "exec"), {"__name__": "__main__"})
        import csv
        with open(out, newline="") as f:
            rows = list(csv.DictReader(f))
        assert [r["file"] for r in rows] == ["a.dcm", "b.dcm"]
        assert rows[0]["risk"] == rows[1]["risk"]
        assert {"in_distribution", "withheld", "consistency", "model"} <= set(rows[0])
        if rows[0]["in_distribution"] == "True":
            assert 0 < float(rows[0]["risk"]) < 1 and rows[0]["withheld"] == ""
            assert 0 < float(rows[0]["cardiomegaly"]) < 1
        else:            # out of distribution: the scores are withheld, the reason is given
            assert rows[0]["risk"] == "" and rows[0]["withheld"].startswith("out of distribution")
        assert rows[0]["model"] == "tiny-test"
        # the snippet removes each radiograph's nodes once its row is written
        assert scene.GetNodesByClass("vtkMRMLTableNode").GetNumberOfItems() == 0
        assert "a.dcm" in capsys.readouterr().out
    finally:
        scene.Clear(1)


class _DicomDatabaseStub:
    """The part of Slicer's ``slicer.dicomDatabase`` (ctkDICOMDatabase) the snippet uses,
    over real files: one patient, one study, a CR series (the real radiograph) and a CT
    series (a file that must not be opened)."""

    def __init__(self, cr: Path, ct: Path):
        self.series = {"1.2.3.cr": [str(cr)], "1.2.3.ct": [str(ct)]}
        self.opened = []

    def patients(self):
        return ["patient-1"]

    def studiesForPatient(self, patient):
        return ["1.2.3"] if patient == "patient-1" else []

    def seriesForStudy(self, study):
        return list(self.series) if study == "1.2.3" else []

    def filesForSeries(self, series):
        return list(self.series[series])

    def fileValue(self, path, tag):
        import pydicom
        self.opened.append(path)
        group, element = (int(t, 16) for t in tag.split(","))
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return str(ds[group, element].value) if (group, element) in ds else ""


def test_readme_infer_dicom_database_snippet_runs(tmp_path, shared_data, tiny_models, monkeypatch, capsys):
    cr = shared_data / "chest_cr_pa.dcm"
    if not cr.is_file():
        pytest.skip(f"the real radiograph {cr} is absent")
    import pydicom
    ct = tmp_path / "ct.dcm"
    ds = pydicom.dcmread(cr, stop_before_pixels=True)
    ds.Modality = "CT"
    ds.save_as(ct)
    db = _DicomDatabaseStub(shutil.copy(cr, tmp_path / "cr.dcm"), ct)
    monkeypatch.setattr(slicer, "dicomDatabase", db, raising=False)
    code = _infer_snippet("infer-dicom-database", tiny_models["heads"])
    scene = _new_scene()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(compile(code, "README.md:infer-dicom-database", "exec"), {"__name__": "__main__"})
        tables = scene.GetNodesByClass("vtkMRMLTableNode")
        assert tables.GetNumberOfItems() == 1                 # the CR only, not the CT
        sequences = scene.GetNodesByClass("vtkMRMLSequenceNode")
        from Xray2XrayLib import core as lib_core
        kinds = sorted(sequences.GetItemAsObject(i).GetAttribute(lib_core.ATTR_KIND)
                       for i in range(sequences.GetNumberOfItems()))
        assert kinds == sorted([lib_core.KIND_PREDICTED_VIEWS,      # the CR's views and their
                                lib_core.KIND_PREDICTED_VIEWS_STD])  # std map, not the CT's
        printed = capsys.readouterr().out
        assert "cr.dcm" in printed and "ct.dcm" not in printed
    finally:
        scene.Clear(1)

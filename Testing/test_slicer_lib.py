"""The Slicer module's Qt-free logic (Xray2Xray/Xray2XrayLib) on real MRML from slicer-core.

DRR sequences from the real chest CT (placement on the detector plane in RAS, pixels equal to
the package's DRRs), RAS <-> LPS conversions, bad input, the background-job command lines,
and the README's console snippets executed against a scene.
"""
import json
import math
import re
import subprocess
import sys
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
from XrayWorldModel.geometry import ProjectionGeometry  # noqa: E402
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


@pytest.fixture(scope="module")
def real_ct(shared_data):
    """The real CT as a node in a scene with a subject hierarchy (patient > study > CT), and
    its DRR sequence at 0 and 90 deg (default detector: 256x256, 1.6 mm; SDD 1800, SOD 1500)."""
    path = shared_data / "chest_ct.nii.gz"
    scene = _new_scene()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    logic = Xray2XrayCoreLogic(scene)
    ct = logic.loadCT(path)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient"), "Chest CT study")
    sh.CreateItem(study, ct)
    seq = logic.generateDRRs(ct, [0, 90])
    yield dict(path=path, scene=scene, logic=logic, ct=ct, seq=seq, sh=sh, study=study)
    scene.Clear(1)


# ----------------------------------------------------------------------------- real CT
def test_real_ct_node_has_true_geometry(real_ct):
    from XrayWorldModel.io import read_ct
    vol = read_ct(real_ct["path"])
    ct = real_ct["ct"]
    assert ct.GetImageData().GetDimensions() == (512, 512, 133)
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
    assert jobs.modelsCacheDir() == tmp_path / "models"
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


# ----------------------------------------------------------------------------- README snippets
def _readme_snippets():
    text = (REPO / "README.md").read_text()
    found = re.findall(r"<!-- xray2xray-snippet: ([\w-]+) -->\s*```python\n(.*?)```", text, re.S)
    return dict(found)


def test_readme_has_the_batch_snippets():
    snippets = _readme_snippets()
    assert {"drr-folder", "drr-folder-one-call"} <= set(snippets)


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

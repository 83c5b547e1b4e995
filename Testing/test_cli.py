"""The ``xray2xray`` command line, run as a real subprocess (``python -m XrayWorldModel``).

Fixtures are small procedural chests written once per module (40x40x32 voxels, 32x24
detector), so the whole file runs in well under a minute. Bad input must end in exactly one
``xray2xray: error:`` line naming the file, exit status 2 and no traceback.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from XrayWorldModel.io.drr_stack import read_drr_stack, stack_complete
from XrayWorldModel.geometry import ProjectionGeometry
from XrayWorldModel.io import read_ct, write_volume
from XrayWorldModel.phantom import procedural_chest
from XrayWorldModel.volume import Volume

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SMALL = ["--detector", "24", "32", "--pixel-spacing", "12"]   # H=24 rows, W=32 columns


def _env(extra=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for k in ("WORLD_SIZE", "RANK"):
        env.pop(k, None)
    env.update(extra or {})
    return env


def _cmd(args):
    return [sys.executable, "-m", "XrayWorldModel", *map(str, args)]


def run_cli(*args, env=None):
    return subprocess.run(_cmd(args), capture_output=True, text=True, cwd=REPO, env=_env(env),
                          timeout=600)


def ok(res):
    assert res.returncode == 0, f"exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    assert "Traceback" not in res.stderr
    return res


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def small_chest(seed):
    return procedural_chest(seed=seed, shape=(40, 40, 32), spacing=(8.0, 8.0, 8.0))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Small CTs in three formats plus a same-stem copy in a subfolder."""
    d = tmp_path_factory.mktemp("cli")
    write_volume(small_chest(1), d / "ct_a.nii.gz")
    write_volume(small_chest(2), d / "ct_b.mha")
    write_volume(small_chest(3), d / "ct_c.nii")
    write_volume(small_chest(4), d / "sub" / "ct_a.nii.gz")
    return d


@pytest.fixture(scope="module")
def single(work):
    """One CT -> one stack, with PNG and DICOM views, 8 angles 45 deg apart."""
    res = ok(run_cli("drr", work / "ct_a.nii.gz", "--out", work / "single" / "drr",
                     "--angle-range", 0, 360, 45, *SMALL, "--png", "--dicom"))
    return res, work / "single"


ANGLES = [0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0]


# ------------------------------------------------------------------------------ one CT
def test_single_stack_nifti(single, work):
    res, out = single
    assert "wrote 1 DRR stack" in res.stdout
    img = sitk.ReadImage(str(out / "drr.nii.gz"))     # .nii.gz appended to --out
    assert img.GetSize() == (32, 24, 8)                 # x = columns, y = rows, z = angle
    assert img.GetSpacing() == pytest.approx((12.0, 12.0, 1.0))
    drrs, geometry, meta = read_drr_stack(out / "drr.nii.gz")
    assert drrs.shape == (8, 24, 32) and drrs.dtype == np.float32
    assert np.array_equal(drrs, sitk.GetArrayFromImage(img))
    # the same numbers as rendering in-process
    from XrayWorldModel.drr import render_drr
    vol = read_ct(work / "ct_a.nii.gz")
    g = ProjectionGeometry(ANGLES, detector_shape=(24, 32), pixel_spacing=12.0).resolve(vol)
    assert geometry == g
    np.testing.assert_allclose(drrs, render_drr(vol, g), rtol=1e-5, atol=1e-5)
    assert drrs.max() > 1.0


def test_single_stack_json(single, work):
    _, out = single
    text = (out / "drr.json").read_text()
    meta = json.loads(text)
    assert list(meta)[-1] == "complete" and meta["complete"] is True
    assert meta["angles_deg"] == ANGLES
    assert meta["geometry"]["angles_deg"] == ANGLES
    assert meta["geometry"]["detector_shape"] == [24, 32]
    assert meta["geometry"]["sdd_mm"] == 1800 and meta["geometry"]["sod_mm"] == 1500
    assert meta["method"] == "fast" and meta["mu_water"] == 0.02
    assert meta["version"] and meta["version"] != "unknown"
    assert meta["inputs"] == [str((work / "ct_a.nii.gz").resolve())]
    assert meta["input_sha256"] == sha(work / "ct_a.nii.gz")
    g = ProjectionGeometry.from_dict(meta["geometry"])
    assert len(meta["detector_affines_lps"]) == 8
    for i, a in enumerate(meta["detector_affines_lps"]):
        np.testing.assert_allclose(a, g.detector_affine(i))
    assert {"read", "render", "write"} <= set(meta["timings_s"])
    assert stack_complete(out / "drr.nii.gz") and stack_complete(out / "drr")
    # an interrupted job (sidecar without the flag) is not complete
    broken = out.parent / "broken"
    broken.mkdir(exist_ok=True)
    shutil.copy(out / "drr.nii.gz", broken / "drr.nii.gz")
    meta.pop("complete")
    (broken / "drr.json").write_text(json.dumps(meta))
    assert not stack_complete(broken / "drr.nii.gz")


def test_single_stack_png(single):
    from PIL import Image
    _, out = single
    files = sorted((out / "drr_png").glob("*.png"))
    assert [f.name for f in files] == [f"drr_{i:03d}_angle{a:06.1f}.png" for i, a in enumerate(ANGLES)]
    drrs, _, _ = read_drr_stack(out / "drr.nii.gz")
    high = np.percentile(drrs, 99.5)                 # one window for the whole stack
    for f, drr in zip(files, drrs):
        im = Image.open(f)
        assert im.mode == "L" and im.size == (32, 24)
        want = np.clip(np.rint(drr / high * 255), 0, 255)   # more attenuation = brighter
        assert np.abs(np.asarray(im, dtype=float) - want).max() <= 1


def test_single_stack_dicom(single):
    import pydicom
    _, out = single
    drrs, _, _ = read_drr_stack(out / "drr.nii.gz")
    files = sorted((out / "drr_dicom").glob("*.dcm"))
    assert len(files) == 8
    views = {0: ("PA", ["L", "F"]), 90: ("LL", ["P", "F"]), 180: ("AP", ["R", "F"]),
             270: ("RL", ["A", "F"]), 45: ("", None)}
    sops = set()
    for i, (f, angle) in enumerate(zip(files, ANGLES)):
        ds = pydicom.dcmread(f)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1" == ds.file_meta.MediaStorageSOPClassUID
        assert ds.Modality == "DX" and ds.PhotometricInterpretation == "MONOCHROME2"
        assert (ds.BitsAllocated, ds.PixelRepresentation, ds.Rows, ds.Columns) == (16, 0, 24, 32)
        assert [float(x) for x in ds.ImagerPixelSpacing] == [12.0, 12.0]
        assert [float(x) for x in ds.PixelSpacing] == pytest.approx([10.0, 10.0])
        assert float(ds.DistanceSourceToDetector) == 1800 and float(ds.DistanceSourceToPatient) == 1500
        assert float(ds.WindowWidth) > 0
        if int(angle) in views:
            view, orient = views[int(angle)]
            assert ds.ViewPosition == view
            if orient:
                assert list(ds.PatientOrientation) == orient
        values = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.abs(values - drrs[i]).max() <= float(ds.RescaleSlope) / 2 + 1e-6
        sops.add(ds.SOPInstanceUID)
    assert len(sops) == 8


def test_recon_command(single, work):
    res = ok(run_cli("recon", single[1] / "drr.nii.gz", "--out", work / "recon.nii.gz",
                     "--size", 16))
    assert "recon.nii.gz" in res.stdout
    vol = read_ct(work / "recon.nii.gz")
    assert vol.shape == (16, 16, 16) and np.isfinite(vol.array).all()
    np.testing.assert_allclose(vol.center, 0.0, atol=1e-3)      # centred on the isocentre
    inner = vol.array[6:10, 6:10, 6:10].mean()                 # mediastinum, not air
    assert inner > -700, inner


# ------------------------------------------------------------------------------ many CTs
def _written(folder):
    return sorted(p.name[: -len(".nii.gz")] for p in folder.glob("*.nii.gz"))


def test_manifest_folder_resume(work):
    manifest = work / "list.txt"
    manifest.write_text("# training CTs\nct_a.nii.gz\n\n  ct_b.mha  \nsub/ct_a.nii.gz\n")
    out = work / "many"
    args = ("drr", manifest, "--out", out, "--angles", "0,90", *SMALL)
    res = ok(run_cli(*args))
    assert _written(out) == ["ct_a", "ct_a_2", "ct_b"]           # stems made unique
    for name, src in [("ct_a", "ct_a.nii.gz"), ("ct_a_2", "sub/ct_a.nii.gz"), ("ct_b", "ct_b.mha")]:
        meta = json.loads((out / f"{name}.json").read_text())
        assert meta["complete"] is True and meta["input_sha256"] == sha(work / src)
    assert "wrote 3" in res.stdout
    mtime = (out / "ct_a.nii.gz").stat().st_mtime_ns

    res = ok(run_cli(*args))                                       # resumed: nothing to do
    assert "skipped 3 already complete" in res.stdout and "wrote 0" in res.stdout
    assert (out / "ct_a.nii.gz").stat().st_mtime_ns == mtime

    (out / "ct_b.json").unlink()                                   # as if interrupted
    res = ok(run_cli(*args))
    assert "wrote 1" in res.stdout and "skipped 2 already complete" in res.stdout
    assert stack_complete(out / "ct_b.nii.gz")
    assert (out / "ct_a.nii.gz").stat().st_mtime_ns == mtime


def test_shards_cover_inputs_once(work):
    inputs = [work / "ct_a.nii.gz", work / "ct_b.mha", work / "ct_c.nii", "phantom:chest:1"]
    out = work / "sharded"
    argv = _cmd(["drr", *inputs, "--out", out, "--angles", "0,90", *SMALL])
    # shard 0 from the options, shard 1 from torchrun's environment, side by side
    procs = [subprocess.Popen(argv + ["--num-shards", "2", "--shard-index", "0"], cwd=REPO,
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
             subprocess.Popen(argv, cwd=REPO, env=_env({"WORLD_SIZE": "2", "RANK": "1"}),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr
        assert "Traceback" not in stderr
        assert "wrote 2 DRR stacks" in stdout and "of 2: 2 of 4 inputs" in stdout, stdout
    assert _written(out) == ["ct_a", "ct_b", "ct_c", "phantom_chest_1"]
    shard = {n: json.loads((out / f"{n}.json").read_text())["shard"] for n in _written(out)}
    assert shard == {"ct_a": [0, 2], "ct_c": [0, 2], "ct_b": [1, 2], "phantom_chest_1": [1, 2]}
    meta = json.loads((out / "phantom_chest_1.json").read_text())
    assert meta["inputs"] == ["phantom:chest:1"] and meta["complete"] is True


def test_dataset_job_warns_and_continues(bad_dir):
    """A bad CT in a many-CT job is reported (one line) and the others are still rendered;
    a package warning (detector plane inside the body) is one line too."""
    out = bad_dir / "mixed"
    res = run_cli("drr", bad_dir / "ct_c.nii", bad_dir / "notes.md", "--out", out,
                  "--angles", "0", "--sdd", "1600", "--sod", "1500", *SMALL)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 2, res.stderr
    assert lines[0].startswith("xray2xray: warning:") and "detector plane" in lines[0]
    assert lines[1].startswith("xray2xray: error:") and "notes.md" in lines[1]
    assert "wrote 1 DRR stack" in res.stdout and "1 failed" in res.stdout
    assert _written(out) == ["ct_c"] and stack_complete(out / "ct_c.nii.gz")


# ------------------------------------------------------------------------------ phantom
def test_phantom_command(work):
    out = work / "ph_chest.nii.gz"
    ok(run_cli("phantom", "--kind", "chest", "--seed", 3, "--shape", 32, 32, 24,
               "--spacing", 10, "--out", out))
    vol = read_ct(out)
    want = procedural_chest(seed=3, shape=(32, 32, 24), spacing=10.0)
    assert vol.shape == (32, 32, 24)
    np.testing.assert_allclose(vol.array, want.array, atol=1e-3)
    np.testing.assert_allclose(vol.affine, want.affine, atol=1e-4)

    out = work / "ph_ell.nii.gz"
    ok(run_cli("phantom", "--kind", "ellipsoid", "--shape", 32, "--spacing", 8, "--out", out))
    vol = read_ct(out)
    assert vol.shape == (32, 32, 32)
    assert vol.array[0, 0, 0] == pytest.approx(-1000.0)           # air: mu = 0
    centre = np.rint(vol.lps_to_index([0.0, 0.0, 0.0])).astype(int)
    assert vol.array[tuple(centre)] == pytest.approx(-100.0, abs=0.5)   # 0.018 /mm soft tissue


def test_version_and_usage():
    res = ok(run_cli("--version"))
    assert res.stdout.startswith("xray2xray ")
    res = run_cli("drr", "phantom:chest")                          # no --out, no angles
    assert res.returncode == 2 and "Traceback" not in res.stderr


# ------------------------------------------------------------------------------ bad input
def _bad_inputs(d: Path):
    """Each case: (argv, the file name the message must contain or None)."""
    (d / "notes.md").write_text("this is not a CT\n")
    from PIL import Image
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(d / "image.png")
    data = (d / "ct_a.nii.gz").read_bytes()
    (d / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    (d / "empty_dir").mkdir(exist_ok=True)
    arr = small_chest(1).array.copy()
    arr[3, 4, 5] = np.nan
    write_volume(Volume(arr, np.eye(4) * [8, 8, 8, 1]), d / "nan.nii.gz")
    (d / "missing_entry.txt").write_text("ct_a.nii.gz\nnot_there.nii.gz\n")


BAD = {
    "missing file": (["drr", "{d}/nope.nii.gz"], "nope.nii.gz"),
    "text file": (["drr", "{d}/notes.md"], "notes.md"),
    "png": (["drr", "{d}/image.png"], "image.png"),
    "truncated nifti": (["drr", "{d}/truncated.nii.gz"], "truncated.nii.gz"),
    "empty folder": (["drr", "{d}/empty_dir"], "empty_dir"),
    "nan nifti": (["drr", "{d}/nan.nii.gz"], "nan.nii.gz"),
    "manifest entry": (["drr", "{d}/missing_entry.txt"], "not_there.nii.gz"),
    "radiograph": (["drr", "{shared}/chest_cr_pa.dcm"], "chest_cr_pa.dcm"),
    "bad angles": (["drr", "{d}/ct_a.nii.gz", "--angles", "0,ninety"], None),
    "sod >= sdd": (["drr", "{d}/ct_a.nii.gz", "--sdd", "1500", "--sod", "1800"], None),
    "unwritable out": (["drr", "{d}/ct_a.nii.gz", "--out", "{d}/notes.md/sub/x.nii.gz"], "notes.md"),
    "ct to recon": (["recon", "{d}/ct_a.nii.gz", "--out", "{d}/r.nii.gz"], "ct_a.nii.gz"),
}


@pytest.fixture(scope="module")
def bad_dir(work):
    _bad_inputs(work)
    return work


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line(bad_dir, case):
    argv, name = BAD[case]
    if "{shared}" in " ".join(argv) and not (SHARED_DATA / "chest_cr_pa.dcm").is_file():
        pytest.skip(f"real radiograph absent: {SHARED_DATA} is not here (fresh clone)")
    argv = [a.format(d=bad_dir, shared=SHARED_DATA) for a in argv]
    if argv[0] == "drr":
        if "--out" not in argv:
            argv += ["--out", str(bad_dir / "bad_out" / case.replace(" ", "_"))]
        if "--angles" not in argv:
            argv += ["--angles", "0"]
        argv += SMALL
    res = run_cli(*argv)
    lines = res.stderr.splitlines()
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("xray2xray: error:"), lines[0]
    if name is not None:
        assert name in lines[0], lines[0]
    if case == "bad angles":
        assert "ninety" in lines[0]
    if case == "sod >= sdd":
        assert "SOD" in lines[0] and "SDD" in lines[0]


# ------------------------------------------------------------------------------ structure
def test_command_line_is_built_without_torch():
    """`xray2xray --help` and `models list` stay quick: building the parser imports no torch,
    numba, scipy or scikit-image (each command imports what it needs when it runs; scipy
    came in through the phantom generators and cost `infer` 0.2 s)."""
    code = ("import sys, XrayWorldModel.cli as c; c.build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} "
            "& {'torch', 'numba', 'scipy', 'skimage'}))")
    res = ok(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, env=_env(), timeout=120))
    assert res.stdout.strip() == "[]", res.stdout


def test_one_phantom_source_syntax():
    """The DRR job and the training data read `phantom:...` with the same parser."""
    from XrayWorldModel.data import resolve_source
    from XrayWorldModel.drr.batch import expand_inputs
    from XrayWorldModel.errors import InputError
    from XrayWorldModel.phantom.source import PhantomSource, parse_phantom_source
    assert parse_phantom_source("phantom:chest") == PhantomSource("chest", 0, 1)
    assert parse_phantom_source("phantom:Chest:7") == PhantomSource("chest", 7, 1)
    assert parse_phantom_source("phantom:ellipsoid") == PhantomSource("ellipsoid", 0, 1)
    assert parse_phantom_source("phantom:3:10") == PhantomSource("chest", 10, 3)
    for bad in ("phantom:lung", "phantom:chest:x", "phantom:ellipsoid:2", "phantom:0", "phantom:"):
        with pytest.raises(InputError, match="phantom"):
            parse_phantom_source(bad)
    sources, manifest = expand_inputs(["phantom:chest", "phantom:2:5"])
    assert [s.spec for s in sources] == ["phantom:chest", "phantom:chest:5", "phantom:chest:6"]
    assert [s.stem() for s in sources] == ["phantom_chest", "phantom_chest_5", "phantom_chest_6"]
    assert not manifest
    assert [i.spec for i in resolve_source("phantom:2:5")] == ["phantom:chest:5", "phantom:chest:6"]
    assert [i.spec for i in resolve_source("phantom:chest:5")] == ["phantom:chest:5"]
    with pytest.raises(InputError, match="phantom:N"):
        resolve_source("phantom:ellipsoid")


def test_train_module_entry_point_reports_like_the_cli(tmp_path):
    """`python -m XrayWorldModel.train` (torchrun's entry) parses as `xray2xray train`."""
    res = subprocess.run([sys.executable, "-m", "XrayWorldModel.train", "--config", "nope"],
                         capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.splitlines() == [res.stderr.strip()]
    assert res.stderr.startswith("xray2xray: error: nope")
    res = subprocess.run([sys.executable, "-m", "XrayWorldModel.train"], capture_output=True,
                         text=True, cwd=tmp_path, env=_env(), timeout=120)
    assert res.returncode == 2 and "xray2xray train: error:" in res.stderr


# ------------------------------------------------------------------------------ progress
def test_line_progress_prints_at_most_one_line_per_interval(capsys):
    from XrayWorldModel.console import LineProgress
    now = [0.0]
    bar = LineProgress(total=100, desc="DRR (fast)", unit="view", interval=5.0,
                       clock=lambda: now[0])
    for _ in range(100):
        now[0] += 0.25                                   # 4 views/s, 25 s in all
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 6, lines                        # every 5 s, then the closing line
    assert lines[0] == "xray2xray: DRR (fast) 20/100 views (20%), 4 views/s, ETA 20 s"
    assert lines[-1] == "xray2xray: DRR (fast) 100/100 views (100%), done in 25 s"
    quick = LineProgress(range(3), desc="CTs", unit="CT", clock=lambda: 0.0)
    assert list(quick) == [0, 1, 2]
    assert capsys.readouterr().err == ""                 # short work prints nothing


def test_progress_modes(monkeypatch, capsys):
    from XrayWorldModel import console
    monkeypatch.setattr(console.sys.stderr, "isatty", lambda: False, raising=False)
    assert console.show_progress() == console.LINES
    assert console.show_progress(quiet=True) == console.QUIET
    monkeypatch.setattr(console.sys.stderr, "isatty", lambda: True, raising=False)
    assert console.show_progress() == console.BAR
    assert isinstance(console.progress_bar(range(2), console.LINES), console.LineProgress)
    assert list(console.progress_bar(range(2), console.QUIET)) == [0, 1]
    assert list(console.progress_bar(range(2), False)) == [0, 1]
    assert capsys.readouterr().err == ""
    assert console.format_duration(3725) == "1 h 02 min"
    assert console.format_duration(65) == "1 min 05 s"


def test_quiet_drr_prints_no_progress(work):
    res = ok(run_cli("drr", work / "ct_a.nii.gz", "phantom:chest:2", "--out", work / "quiet",
                     "--angles", "0", *SMALL, "--quiet"))
    assert res.stderr == "" and "wrote 2 DRR stacks" in res.stdout


# ------------------------------------------------------------------------------ --out kinds
def test_drr_out_kinds(work, tmp_path):
    """drr's --out: a .nii/.nii.gz stack file, a folder, or a plain name (.nii.gz appended);
    never a file of another kind; and the check creates nothing."""
    from XrayWorldModel.drr.batch import plan_batch
    from XrayWorldModel.errors import InputError
    ct = str(work / "ct_a.nii.gz")
    assert plan_batch([ct], tmp_path / "s.nii").targets == [tmp_path / "s.nii"]
    assert plan_batch([ct], tmp_path / "new" / "sweep_1.5mm").targets == [
        tmp_path / "new" / "sweep_1.5mm.nii.gz"]
    assert plan_batch([ct], tmp_path).targets == [tmp_path / "ct_a.nii.gz"]
    (tmp_path / "notes.txt").write_text("x")
    for out, phrase in ((tmp_path / "notes.txt", "neither a folder nor a DRR stack"),
                        (tmp_path / "x.mha", "not a .mha file"),
                        (tmp_path / "notes.txt" / "x.nii.gz", "is a file")):
        with pytest.raises(InputError, match=phrase):
            plan_batch([ct], out)
    with pytest.raises(InputError, match="several inputs --out names a folder"):
        plan_batch([ct, "phantom:chest"], tmp_path / "both.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_output_checks_honour_a_read_only_folder(tmp_path):
    from XrayWorldModel.errors import InputError
    from XrayWorldModel.fileutil import check_output_file, check_output_folder
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(InputError, match="read-only"):
            check_output_folder(ro)
        with pytest.raises(InputError, match="ro is read-only"):
            check_output_folder(ro / "a" / "b")
        with pytest.raises(InputError, match="read-only"):
            check_output_file(ro / "x.json")
    finally:
        ro.chmod(0o755)
    assert check_output_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()
    with pytest.raises(InputError, match="names a volume ending in .nii"):
        check_output_file(tmp_path / "v.txt", suffixes=(".nii",), what="volume")


def test_study_log_in_a_pipe_keeps_stages_and_thins_step_lines(monkeypatch, capsys):
    from XrayWorldModel.console import BAR, LINES, QUIET
    from XrayWorldModel.study import cli as study_cli
    now = [0.0]
    monkeypatch.setattr("XrayWorldModel.console.time.monotonic", lambda: now[0])
    log = study_cli.study_log(LINES)
    for k in range(1, 21):
        now[0] += 1.0
        log(f"  mae: step {k}/20 loss 0.5")
    log("study [2/6] baselines")
    assert capsys.readouterr().err.splitlines() == [
        f"mae: step {k}/20 loss 0.5" for k in (5, 10, 15, 20)] + ["study [2/6] baselines"]
    study_cli.study_log(QUIET)("study [1/6] cohort")
    study_cli.study_log(BAR)("  mae: step 1/20 loss 0.5")
    assert capsys.readouterr().err.splitlines() == ["mae: step 1/20 loss 0.5"]

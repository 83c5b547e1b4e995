"""eval-views and eval-volume on every kind of --model (registry name, model file, checkpoint,
run folder) and of --data (a NIfTI CT, phantoms), the mean-view baseline a model file
carries, and the leave-one-patient-out folds of tools/lopo.py. Real commands in real
subprocesses where it is the point (the CLI on a model file and a NIfTI, the LOPO script),
else through the CLI's own entry point in-process (torch imported once); on the built-in
model, a run folder of a tiny config and phantoms written as NIfTI."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from test_train import TINY, _cli, _env
from XrayWorldModel.cli import main
from XrayWorldModel.config import TrainConfig
from XrayWorldModel.data import PreprocessedCache, RenderedViewSet, VolumeProvider, resolve_source
from XrayWorldModel.io import write_volume
from XrayWorldModel.metrics import psnr
from XrayWorldModel.models import EMAEncoder, WorldModel
from XrayWorldModel.phantom import procedural_chest
from XrayWorldModel.train.checkpoint import model_tensors, save_checkpoint
from XrayWorldModel.train.mean_views import STORED_ANGLES, TENSOR_KEY
from XrayWorldModel.version import __version__
from XrayWorldModel.weights.loading import add_mean_views, export_checkpoint
from XrayWorldModel.weights.model_file import read_card
from XrayWorldModel.weights.registry import DEFAULT_MODEL, resolve_model

REPO = Path(__file__).resolve().parents[1]
#: Where the mean views of the test's model file come from (small, so the test is quick).
MEAN_SOURCE = "phantom:2:800"


def _write_phantom(path: Path, seed: int) -> Path:
    """A procedural chest written as a CT file with the package's own writer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_volume(procedural_chest(seed, (96, 96, 72), (3.7, 3.7, 4.6)), path)


def _json(r):
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _run(capsys, *argv):
    """(exit status, stdout, stderr) of ``xray2xray ARGV`` through its entry point."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _eval(capsys, *argv):
    rc, out, err = _run(capsys, *argv)
    assert rc == 0, err
    return json.loads(out)


def _write_checkpoint(run: Path) -> None:
    """A run folder holding one step-3 checkpoint of the tiny config, written by the
    trainer's own writer with the card the trainer gives it (untrained weights: what is
    tested is how a checkpoint is found and read, not what it learnt)."""
    cfg = TrainConfig.from_dict(json.loads(json.dumps(TINY)))
    torch.manual_seed(0)
    model = WorldModel(cfg.model)
    card = {"config": cfg.to_dict(), "metrics": {}, "package_version": __version__,
            "model": "xray2xray-world-model", "training_data": cfg.data.source}
    save_checkpoint(run / "checkpoints", 3, model_tensors(model, EMAEncoder(model.encoder)), card)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A module folder with: the demo model plus mean views, a phantom NIfTI and a run
    folder; every CT cache goes under it."""
    d = tmp_path_factory.mktemp("eval_models")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XRAY2XRAY_CACHE", str(d / "cache"))
        add_mean_views(resolve_model(DEFAULT_MODEL), d / "demo-mv.safetensors", source=MEAN_SOURCE)
        _write_phantom(d / "ct" / "chest.nii.gz", 5003)
        _write_checkpoint(d / "run")
        yield d


@pytest.fixture
def cached(work, monkeypatch):
    monkeypatch.setenv("XRAY2XRAY_CACHE", str(work / "cache"))
    return work


def test_eval_views_on_model_file_and_nifti_reports_model_and_both_baselines(cached, capsys):
    work = cached
    out = _json(_cli(["eval-views", "--model", "demo-mv.safetensors", "--data",
                      "ct/chest.nii.gz", "--angles", "0,90"], work, timeout=300))
    assert out["model_kind"] == "model file" and out["n_ct"] == 1
    assert out["mean_view"]["available"] and MEAN_SOURCE in out["mean_view"]["source"]
    # target = context: copying the input view is exact, the model and the mean view are not
    assert out["angles"]["0"]["copy_input_psnr"] == float("inf")
    row = out["angles"]["90"]
    for name in ("world_model", "copy_input", "mean_view"):
        assert np.isfinite(row[f"{name}_psnr"]) and -1 <= row[f"{name}_ssim"] <= 1
    assert row["world_model_psnr"] > row["copy_input_psnr"]     # a lateral is not the PA view
    # the stored (float16) mean views score as those rendered now from the same CTs
    again = _eval(capsys, "eval-views", "--model", work / "demo-mv.safetensors", "--data",
                  work / "ct" / "chest.nii.gz", "--angles", "90", "--baseline-source", MEAN_SOURCE)
    assert again["angles"]["90"]["mean_view_psnr"] == pytest.approx(row["mean_view_psnr"], abs=0.05)
    assert again["angles"]["90"]["world_model_psnr"] == row["world_model_psnr"]


def test_registry_name_equals_the_same_model_file(cached, capsys):
    path = resolve_model(DEFAULT_MODEL)
    args = ["--data", cached / "ct" / "chest.nii.gz", "--angles", "90"]
    rc, out, err = _run(capsys, "eval-views", "--model", DEFAULT_MODEL, *args)
    assert rc == 0, err
    a, b = json.loads(out), _eval(capsys, "eval-views", "--model", path, *args)
    assert a["angles"] == b["angles"] and a["sha256"] == b["sha256"] == read_card(path)["content_sha256"]
    assert a["model_path"] == b["model_path"] == str(path)
    if "mean_views" in read_card(path):
        assert a["mean_view"]["available"]
    else:       # said plainly, in the JSON and on stderr; the other numbers are still there
        assert not a["mean_view"]["available"] and a["angles"]["90"]["mean_view_psnr"] is None
        assert "mean-view baseline unavailable" in err
        assert np.isfinite(a["angles"]["90"]["copy_input_psnr"])


def test_checkpoint_files_and_run_folder_give_the_same_numbers(cached, capsys):
    ck = cached / "run" / "checkpoints"
    results = [_eval(capsys, "eval-views", "--model", spec, "--data", cached / "ct" / "chest.nii.gz",
                     "--angles", "90")
               for spec in (cached / "run", ck / "step-0000003.json", ck / "step-0000003.safetensors")]
    for out in results:
        assert out["model_kind"] == "checkpoint" and out["step"] == 3
        assert out["mean_view"]["available"]       # rendered from the run's training phantoms
        assert out["angles"] == results[0]["angles"]
        assert np.isfinite(out["angles"]["90"]["mean_view_psnr"])


@pytest.mark.slow
def test_eval_volume_takes_a_model_file_and_a_run_folder(cached, capsys):
    for model in ("demo-mv.safetensors", "run"):
        out = _eval(capsys, "eval-volume", "--model", cached / model, "--data",
                    cached / "ct" / "chest.nii.gz", "--baseline-source", MEAN_SOURCE,
                    "--volume-size", "32")
        assert out["n_ct"] == 1 and out["mean_ct_source"] == {"source": MEAN_SOURCE, "n_ct": 2}
        for name in ("world_model", "mean_ct", "copied_frontal_fdk"):
            assert -1 <= out[name]["pearson_r"] <= 1
        prior = out["prior"]
        if model == "run":      # a checkpoint: its mean-CT prior is judged on validation phantoms
            v = prior["validation"]
            assert v["source"] == "phantom:16:7000" and v["n_ct"] == 16
            assert prior["used"] == (v["r_on_prior"] > v["r_views_only"])
        # the reported volume is the one infer would make: on the prior only when it is used
        shown = "world_model_on_prior" if prior["used"] else "world_model_fdk_only"
        assert out["world_model"] == out[shown]


def test_eval_volume_of_a_model_file_away_from_its_training_cts_scores_against_its_prior(
        cached, capsys, tmp_path):
    """A shipped model's training CTs are not on the user's disk: without --baseline-source
    the mean-CT baseline is the model file's volume prior, which is the mean of those CTs,
    so the figures match what the CTs themselves give while they are at hand."""
    from XrayWorldModel.infer import prior as prior_module
    from XrayWorldModel.infer.evaluate import read_volumes
    from XrayWorldModel.infer.pipeline import isocentric_geometry
    from XrayWorldModel.weights.model_file import load_model_file, save_model_file
    manifest = tmp_path / "train.csv"
    cts = [_write_phantom(tmp_path / f"t{seed}.nii.gz", seed) for seed in (5101, 5102)]
    manifest.write_text("path\n" + "".join(f"{p.name}\n" for p in cts))
    tensors, card = load_model_file(cached / "demo-mv.safetensors")
    card["config"]["data"]["source"] = str(manifest)
    cfg = TrainConfig.from_dict(card["config"])
    prior = prior_module.VolumePrior.from_volumes(
        read_volumes(resolve_source(str(manifest)), cfg, PreprocessedCache(tmp_path / "c")),
        isocentric_geometry(cfg.views, [0.0]), 32, source="the two CTs")   # on the scoring grid
    card[prior_module.CARD_KEY] = prior.card_entry()
    tensors = {k: v for k, v in tensors.items() if not k.startswith("prior.")}
    model = save_model_file(tmp_path / "m.safetensors", {**tensors, **prior.tensors()}, card)
    argv = ("eval-volume", "--model", model, "--data", cached / "ct" / "chest.nii.gz",
            "--volume-size", "32")
    at_hand = _eval(capsys, *argv)
    for ct in cts:
        ct.unlink()
    away = _eval(capsys, *argv)
    assert at_hand["mean_ct_source"]["source"].startswith("training data")
    assert away["mean_ct_source"] == {"source": "the model file's volume prior (the two CTs)", "n_ct": 2}
    assert away["mean_ct"]["pearson_r"] == pytest.approx(at_hand["mean_ct"]["pearson_r"], abs=1e-3)
    assert away["world_model"] == at_hand["world_model"]
    with pytest.raises(AssertionError, match="does not exist"):   # a named source must exist
        _eval(capsys, *argv, "--baseline-source", str(manifest))


@pytest.mark.parametrize("command", ["eval-views", "eval-volume"])
@pytest.mark.parametrize("model,needles", [
    ("no-such-model", ["unknown model 'no-such-model'", DEFAULT_MODEL]),
    ("gone/m.safetensors", ["m.safetensors", "no such checkpoint, model file or run folder"]),
    ("ct/chest.nii.gz", ["chest.nii.gz", "not a model file"]),
])
def test_a_bad_model_is_one_line_and_exit_2(cached, capsys, monkeypatch, command, model, needles):
    monkeypatch.chdir(cached)
    rc, _, err = _run(capsys, command, "--model", model, "--data", "phantom:1")
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("xray2xray: error:")
    assert all(n in lines[0] for n in needles), lines[0]


def test_export_stores_the_mean_training_views(work, tmp_path):
    out = export_checkpoint(work / "run", tmp_path / "m.safetensors")
    card = read_card(out)
    entry = card["mean_views"]
    assert entry["angles"] == list(STORED_ANGLES) and entry["dtype"] == "float16"
    with safe_open(str(out), framework="pt") as f:
        stored = f.get_tensor(TENSOR_KEY)
    assert str(stored.dtype) == "torch.float16" and tuple(stored.shape) == (24, 32, 32)
    # oracle: the trainer's own mean views of its training phantoms (the last is validation)
    cfg = TrainConfig.from_dict(card["config"])
    items = resolve_source(cfg.data.source)[:-cfg.data.val_count]
    data = RenderedViewSet(VolumeProvider(items, PreprocessedCache(tmp_path / "c"),
                                          cfg.data.preprocessing(), len(items)), cfg.views)
    want = data.mean_views([90.0], 16)[90.0]
    got = stored[STORED_ANGLES.index(90.0)].float().numpy()
    assert entry["n_cases"] == len(items) and psnr(got, want) > 50


# ------------------------------------------------------------------ leave one patient out
def _lopo():
    spec = importlib.util.spec_from_file_location("lopo", REPO / "tools" / "lopo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["lopo"] = module        # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_lopo_folds_never_train_on_the_held_out_patient(tmp_path):
    lopo = _lopo()
    patients = {pid: tmp_path / f"{pid}.nii.gz" for pid in lopo.PATIENTS}
    for p in patients.values():
        p.write_bytes(b"")
    folds = lopo.build_folds(patients)
    assert sorted(f.held_out for f in folds) == sorted(patients)
    for fold in folds:
        manifest = lopo.write_manifest(fold, tmp_path / fold.held_out)
        with open(manifest, newline="") as f:
            rows = list(csv.DictReader(f))
        listed = {Path(r["path"]).resolve() for r in rows}
        assert fold.held_out_path.resolve() not in listed
        assert fold.held_out not in {r["id"] for r in rows}
        assert listed | {fold.held_out_path.resolve()} == {p.resolve() for p in patients.values()}
        assert {i.spec for i in resolve_source(str(manifest))} == {str(p) for p in listed}
    assert [f.held_out for f in lopo.build_folds(patients, ["chest_ct"])] == ["chest_ct"]
    with pytest.raises(SystemExit, match="unknown fold"):
        lopo.build_folds(patients, ["nobody"])


def test_lopo_train_on_restricts_the_training_patients_never_to_the_held_out_one(tmp_path):
    lopo = _lopo()
    patients = {pid: tmp_path / f"{pid}.nii.gz" for pid in lopo.PATIENTS}
    ids = list(patients)
    folds = lopo.build_folds(patients, train_on=ids[:2])
    assert {f.held_out: sorted(f.train) for f in folds} == {
        ids[0]: [ids[1]], ids[1]: [ids[0]], ids[2]: sorted(ids[:2])}
    with pytest.raises(SystemExit, match="no real patient"):
        lopo.build_folds(patients, [ids[0]], train_on=[ids[0]])
    with pytest.raises(SystemExit, match="unknown training patient"):
        lopo.build_folds(patients, train_on=["nobody"])
    out = subprocess.run([sys.executable, str(REPO / "tools" / "lopo.py"), "--work",
                          str(tmp_path / "w"), "--dry-run", "--folds", ids[2], "--train-on",
                          ids[0]], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"lists {ids[0]}=" in out.stdout and f"{ids[1]}=" not in out.stdout


def test_lopo_dry_run_prints_each_fold_on_the_mixed_source_syntax(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "tools" / "lopo.py"), "--work",
                          str(tmp_path / "w"), "--dry-run", "--steps", "50"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    trains = [line for line in out.stdout.splitlines() if " train " in line]
    assert len(trains) == 3 and not (tmp_path / "w").exists()
    for line in trains:
        fold = line.split("run.out_dir=")[1].split("/run")[0]
        assert f"phantom:512+anatomy:64:{fold}/train.csv" in line and "optim.steps=50" in line
    assert out.stdout.count("--baseline-source") == 6


def test_lopo_and_demo_recipes_pass_named_anatomy_ranges_to_the_training_source(tmp_path):
    """``--anatomy-ranges wide`` reaches ``data.source`` in the spelling the sources read
    back as wide patients of the fold's manifest (lopo) or of the three CTs (train_demo)."""
    from XrayWorldModel.data.sources import parse_anatomy_source
    for tool in ("lopo.py", "train_demo.py"):
        out = subprocess.run([sys.executable, str(REPO / "tools" / tool), "--work", str(tmp_path / tool),
                              "--dry-run", "--anatomy-ranges", "wide"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        sources = [w.split("=", 1)[1] for w in out.stdout.split() if w.startswith("data.source=")]
        assert sources, out.stdout
        for source in sources:
            part = next(p for p in source.split("+") if p.startswith("anatomy:"))
            parsed = parse_anatomy_source(part)
            assert parsed.ranges == "wide" and parsed.source.endswith("train.csv"), part


def test_lopo_re_evaluation_keeps_the_fold_s_training_record(tmp_path):
    """Re-evaluating a fold's own run (--skip-train --model WORK/ID/run) keeps how it was
    trained; evaluating another model, or training anew, records this run's settings."""
    lopo = _lopo()
    run = tmp_path / "chest_ct" / "run"
    previous = {"model": str(run), "commands": {"train": "xray2xray train ...", "views": "old"},
                "train_s": 4200.0, "settings": {"steps": 4000}}
    settings = {"steps": None}
    again = lopo.keep_training_record(previous, {"model": str(tmp_path / "chest_ct" / "." / "run"),
                                                 "commands": {"views": "new"}}, settings)
    assert again["commands"] == {"train": "xray2xray train ...", "views": "new"}
    assert again["train_s"] == 4200.0 and again["settings"] == {"steps": 4000} and again["re_evaluated"]
    other = lopo.keep_training_record(previous, {"model": "xray2xray-demo", "commands": {"views": "new"}},
                                      settings)
    assert "train" not in other["commands"] and other["settings"] == settings
    retrained = lopo.keep_training_record(previous, {"model": str(run), "commands": {"train": "t2"}},
                                          settings)
    assert retrained["commands"] == {"train": "t2"} and retrained["settings"] == settings
    assert lopo.keep_training_record(None, {"model": str(run), "commands": {}}, settings)["settings"] == settings


@pytest.mark.slow
def test_lopo_evaluation_half_on_phantom_patients(work, tmp_path):
    """--skip-train --model on three phantom CTs saved under the real CTs' names: the
    JSON and table are written, and each margin is the model minus the best baseline."""
    lopo = _lopo()
    for seed, rel in enumerate(lopo.PATIENTS.values(), start=5100):
        _write_phantom(tmp_path / "data" / rel, seed)
    r = subprocess.run([sys.executable, str(REPO / "tools" / "lopo.py"), "--work",
                        str(tmp_path / "w"), "--skip-train", "--model",
                        str(work / "demo-mv.safetensors"), "--data-dir", str(tmp_path / "data"),
                        "--folds", "chest_ct"], capture_output=True, text=True, timeout=600,
                       env=_env(work))
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "w" / "lopo.json").read_text())
    fold = res["folds"]["chest_ct"]
    assert "lidc_idri_0314" in fold["train"] and "chest_ct" not in fold["train"]
    for key, row in fold["views"].items():
        baselines = [row[k][0] for k in ("copy_input", "mean_view_training",
                                         "mean_view_real_train_cts")]
        assert row["margin_db"] == pytest.approx(row["world_model"][0] - max(baselines))
    assert set(fold["views"]) == {"30", "60", "90", "120", "150"}
    assert "| chest_ct | 90 deg |" in (tmp_path / "w" / "lopo.md").read_text()


# ------------------------------------------------------------------ demo model 2.0 tooling
def _tool(name):
    sys.path.insert(0, str(REPO / "tools"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "tools"))


def test_demo_card_names_the_real_cts_it_trained_on_with_their_licences(tmp_path):
    """A run whose source lists real CTs gets a card naming each with its collection and
    licence, and saying it was trained on them; a phantom-only run keeps the phantom text."""
    real_cts, build_demo = _tool("real_cts"), _tool("build_demo")
    manifest = real_cts.write_manifest(real_cts.paths(tmp_path), tmp_path / "train.csv")
    assert real_cts.manifest_ids(manifest) == list(real_cts.PATIENTS)
    real = build_demo.real_training_data(f"phantom:8+phantom:8:100:chest2+anatomy:4:{manifest}")
    readme = (REPO.parent / "shared" / "data" / "README.md")
    for entry in real:
        assert entry["licence"] in ("MIT", "CC BY 3.0", "CC BY 4.0")
        if readme.is_file():         # the licence the data folder states for that file
            row = next(line for line in readme.read_text().splitlines()
                       if line.startswith(f"| {real_cts.PATIENTS[entry['id']].file} "))
            assert entry["licence"] in row, row
    assert [e["id"] for e in real] == list(real_cts.PATIENTS)
    # a seed offset or named ranges in the spelling name the same manifest
    for spelling in (f"anatomy:4:7:{manifest}", f"anatomy:4:wide:{manifest}", f"anatomy:4:7:wide:{manifest}"):
        assert build_demo.real_training_data(f"phantom:8+{spelling}") == real, spelling
    texts = build_demo.card_texts(real)
    for key in ("description", "intended_use", "disclaimer"):
        assert "3 real chest CTs" in texts[key] and "phantom" in texts[key], key
    assert "not for clinical use" in texts["disclaimer"] and "synthetic" in texts["disclaimer"]
    assert build_demo.card_texts(build_demo.real_training_data("phantom:16"))["disclaimer"] \
        == build_demo.DISCLAIMER


def test_demo_reference_cts_spread_over_a_mixed_source():
    """The prior and domain references sample the whole training mix, not its first part."""
    build_demo = _tool("build_demo")
    cfg = TrainConfig.from_dict({"data": {"source": "phantom:40+phantom:40:1000:chest2"}})
    items = build_demo.reference_items(cfg, 8)
    specs = [it.spec for it in items]
    assert len(items) == 8 and sum("chest2" in s for s in specs) == 4, specs


def test_train_demo_dry_run_trains_on_all_three_patients(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "tools" / "train_demo.py"), "--work",
                          str(tmp_path / "d"), "--steps", "50", "--dry-run"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert f"+anatomy:256:{(tmp_path / 'd' / 'train.csv').resolve()}" in line
    assert "optim.steps=50" in line and not (tmp_path / "d").exists()


def test_train_demo_refuses_missing_cts_and_an_existing_run_in_one_line(tmp_path):
    """Missing real CTs and a run folder that already holds checkpoints (without --resume)
    stop before training, each with one line naming what to do."""
    tool = [sys.executable, str(REPO / "tools" / "train_demo.py"), "--work", str(tmp_path / "d")]
    env = dict(os.environ, XRAY2XRAY_SHARED_DATA=str(tmp_path / "no-data"))
    out = subprocess.run(tool, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode != 0 and "real CTs missing" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "d").exists()
    (tmp_path / "d" / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "d" / "run" / "checkpoints" / "step-0000010.json").write_text("{}")
    out = subprocess.run(tool + ["--dry-run"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "pass --resume" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_stopping_a_release_tool_stops_its_training_child_with_a_checkpoint(tmp_path):
    """SIGTERM to ``lopo.py``/``train_demo.py`` reaches the training child (which writes its
    interrupt checkpoint and exits 143) instead of leaving it running as an orphan."""
    ready, marker = tmp_path / "ready", tmp_path / "checkpointed"
    child = ("import os, signal, sys, time\n"
             "def stop(*_):\n"
             f"    open({str(marker)!r}, 'w').write('x'); sys.exit(143)\n"
             "signal.signal(signal.SIGTERM, stop)\n"
             f"open({str(ready)!r}, 'w').write(str(os.getpid()))\n"
             "time.sleep(60)\n")
    parent = (f"import sys; sys.path.insert(0, {str(REPO / 'tools')!r})\n"
              "from child import run_child\n"
              f"sys.exit(run_child([sys.executable, '-c', {child!r}]))\n")
    proc = subprocess.Popen([sys.executable, "-c", parent])
    deadline = time.time() + 60
    while not ready.exists() or not ready.read_text():
        assert time.time() < deadline and proc.poll() is None, "child never started"
        time.sleep(0.05)
    child_pid = int(ready.read_text())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert marker.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(child_pid, 0)


def test_body_offset_measures_how_far_a_body_lies_from_its_scan_centre():
    """tools/body_offset.py: a chest moved 4 voxels posterior inside its grid is reported
    that much further posterior, one moved 3 voxels up has its lungs reported that much
    higher; a CT with no body is refused with exit 2."""
    from XrayWorldModel.phantom import procedural_chest
    from XrayWorldModel.volume import Volume
    tool = _tool("body_offset")
    chest = procedural_chest(2, (48, 48, 40), 7.0)
    axis = int(np.argmax(np.abs(chest.direction[1])))          # the array axis along LPS y
    step = float(chest.affine[1, axis])                         # mm per voxel along +y
    moved = Volume(np.roll(chest.array, 4, axis=axis), chest.affine.copy())
    a, b = tool.body_offset(chest), tool.body_offset(moved)
    assert b["posterior_mm"] - a["posterior_mm"] == pytest.approx(4 * step, abs=0.5)
    assert abs(b["left_mm"] - a["left_mm"]) < 0.5 and b["ap_extent_mm"] == pytest.approx(a["ap_extent_mm"])
    # the chest's depth follows a front-to-back stretch of the grid, not a left-right one
    for grid_axis, deeper in ((1, True), (0, False)):
        scale = np.ones(3)
        scale[grid_axis] = 1.2
        stretched = Volume(chest.array, chest.affine @ np.diag([*scale, 1.0]))
        ratio = tool.body_offset(stretched)["chest_depth_mm"] / a["chest_depth_mm"]
        assert ratio == pytest.approx(1.2 if deeper else 1.0, abs=0.02), (grid_axis, ratio)
    si = int(np.argmax(np.abs(chest.direction[2])))             # the array axis along LPS z
    up = 3 * float(chest.affine[2, si])                          # mm moved along +z (superior)
    pad = [(6, 6) if k == si else (0, 0) for k in range(3)]      # air above and below: no apex lost
    tall = np.pad(chest.array, pad, constant_values=-1000.0)
    level, raised = (tool.body_offset(Volume(np.roll(tall, r, axis=si), chest.affine.copy()))
                     for r in (0, 3))
    assert level["lung_top_mm"] > level["lung_bottom_mm"]
    assert raised["lung_top_mm"] - level["lung_top_mm"] == pytest.approx(up, abs=0.5)
    assert raised["lung_bottom_mm"] - level["lung_bottom_mm"] == pytest.approx(up, abs=0.5)
    air = Volume(np.full((8, 8, 8), -1000.0, np.float32), np.eye(4))
    with pytest.raises(Exception, match="no body"):
        tool.body_offset(air)
    with pytest.raises(Exception, match="no lungs found"):               # solid tissue, no air
        tool.body_offset(Volume(np.full((8, 8, 8), 40.0, np.float32), np.eye(4)))


def test_body_offset_reads_lungs_where_the_chosen_training_cube_puts_them(tmp_path, capsys):
    """``--centre-on chest``: the CT file's lung apices are reported 130 mm above the cube's
    centre (the placement rule), while ``--centre-on scan`` reports where the scan had them."""
    from XrayWorldModel.io import write_volume
    from XrayWorldModel.phantom import procedural_chest
    tool = _tool("body_offset")
    chest = procedural_chest(2, (48, 48, 40), 7.0)
    si = int(np.argmax(np.abs(chest.direction[2])))
    pad = [(0, 8) if k == si else (0, 0) for k in range(3)]       # a scan reaching 56 mm further
    write_volume(type(chest)(np.pad(chest.array, pad, constant_values=-1000.0), chest.affine),
                 tmp_path / "ct.nii.gz")
    tops = {}
    for where in ("scan", "chest"):
        assert tool.main(["--centre-on", where, str(tmp_path / "ct.nii.gz")]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        column = [c.strip() for c in lines[0].split("|")].index("lung top (mm)")
        tops[where] = float(lines[-1].split("|")[column])
    assert tops["chest"] == pytest.approx(130.0, abs=7.0)
    assert abs(tops["scan"] - 130.0) > 14.0
    with pytest.raises(SystemExit) as bad:                          # a placement that does not exist
        tool.main(["--centre-on", "table", str(tmp_path / "ct.nii.gz")])
    assert bad.value.code == 2 and "invalid choice: 'table'" in capsys.readouterr().err


def test_self_redraw_scores_how_closely_a_model_redraws_its_input(tmp_path, capsys):
    """tools/self_redraw.py: NCC ignores gain and offset (1 for a rescaled copy, -1 for an
    inverted one), and the built-in model redraws a procedural chest's frontal DRR (its
    training kind) almost exactly, more closely than another chest's DRR matches it."""
    from XrayWorldModel.io import write_volume
    from XrayWorldModel.phantom import procedural_chest
    tool = _tool("self_redraw")
    a = np.random.default_rng(0).random((16, 16))
    assert tool.ncc(3.0 * a + 2.0, a) == pytest.approx(1.0)
    assert tool.ncc(-a, a) == pytest.approx(-1.0)
    write_volume(procedural_chest(5001, (64, 64, 48), (5.6, 5.6, 7.0)), tmp_path / "ct.nii.gz")
    assert tool.main(["--ct", str(tmp_path / "ct.nii.gz")]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1].split("|")
    assert row[1].strip() == "ct.nii.gz (DRR)" and float(row[3]) > 0.99    # another chest: 0.98


def test_self_redraw_refuses_no_input_and_a_missing_file_in_one_line(tmp_path, capsys):
    """tools/self_redraw.py with nothing to score, or a radiograph that is not there: exit 2
    and one line saying why, no traceback."""
    tool = _tool("self_redraw")
    with pytest.raises(SystemExit) as none:
        tool.main([])
    assert none.value.code == 2 and "give at least one --cxr or --ct" in capsys.readouterr().err
    assert tool.main(["--cxr", str(tmp_path / "missing.dcm")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("self_redraw: ") and "missing.dcm" in err[0]


def test_self_redraw_reports_how_far_in_the_radiograph_edges_lie():
    """The edges column: a radiograph covering rows 8-53 and columns 16-47 of a 64-px field
    lies 12.5 and 15.6 % in from top and bottom, 25 % from left and right."""
    covered = np.zeros((64, 64), bool)
    covered[8:54, 16:48] = True
    assert _tool("self_redraw")._edges(covered) == "12, 16, 25, 25"


def test_mapping_check_own_quantiles_undo_a_monotone_display():
    """tools/mapping_check.py's ceiling: a display that windows the DRR (gain and offset)
    mapped onto the DRR's own body quantiles gives the DRR back inside the body; the card's
    pooled quantiles and the plain spread do not (the gap the tool measures)."""
    from XrayWorldModel.drr import DRRRenderer
    from XrayWorldModel.infer.domain import to_model_input
    from XrayWorldModel.infer.pipeline import isocentric_geometry
    from XrayWorldModel.infer.prior import centred
    from XrayWorldModel.radiograph import Radiograph
    from XrayWorldModel.weights.loading import load_world_model
    tool = _tool("mapping_check")
    _, card = load_world_model(None)
    views = TrainConfig.from_dict(card["config"]).views
    vol = procedural_chest(5002, (64, 64, 48), (5.6, 5.6, 7.0))
    drr = DRRRenderer(centred(vol), "fast", "cpu", views.mu_water).render(
        isocentric_geometry(views, [0.0]))[0]
    variants = tool.domain_variants(card["domain"], drr)
    assert variants["card"] == card["domain"] and variants["own"]["anatomy"] == card["domain"]["anatomy"]
    display = Radiograph(0.2 + 0.7 * drr / drr.max(), (views.pixel_spacing,) * 2, "PA",
                         {"magnification": views.sdd / views.sod})   # the DRR's own
    body = drr > 0.1 * drr.max()
    err = {name: float(np.abs(to_model_input(display, views, ref, check_spacing=False,
                                             place=False).image - drr)[body].mean())
           for name, ref in variants.items()}
    assert err["own"] < 1e-3 * drr.max()
    assert err["card"] > 5 * err["own"] and err["plain"] > 5 * err["own"]


def test_mapping_check_feeds_each_mapping_to_the_inference(capsys):
    """tools/mapping_check.py on a held-out phantom: one row per mapping, scores in range,
    and the mappings reach the model (their 90-deg PSNRs differ)."""
    tool = _tool("mapping_check")
    assert tool.main(["--data", "phantom:1:5000", "--styles", "1"]) == 0
    rows = [r.split("|") for r in capsys.readouterr().out.splitlines() if r.startswith("| all")]
    assert [r[2].strip() for r in rows] == list(tool.MAPPINGS)
    psnrs = [float(r[3]) for r in rows]
    assert all(10 < p < 60 for p in psnrs) and len(set(psnrs)) == 3
    assert all(0 < float(r[5]) <= 1 for r in rows)


def test_mapping_check_per_image_rows_are_what_the_means_average(capsys):
    """--per-image: a row per styled image and mapping; with two images per CT, each
    mapping's mean row is the mean of its two image rows."""
    assert _tool("mapping_check").main(["--data", "phantom:1:5000", "--styles", "2",
                                        "--per-image"]) == 0
    rows = [r.split("|") for r in capsys.readouterr().out.splitlines() if r.startswith("| 0")]
    for m in ("card", "plain", "own"):
        images = [float(r[3]) for r in rows if "seed" in r[1] and r[2].strip() == m]
        mean = [float(r[3]) for r in rows if r[1].strip() == "0" and r[2].strip() == m]
        assert len(images) == 2 and mean[0] == pytest.approx(np.mean(images), abs=0.006)


def test_fine_band_share_grows_with_fine_detail_and_ignores_the_outline(capsys):
    """tools/fine_band.py: a smooth disc's share is small and does not count the disc's own
    edge; the same disc with pixel-scale texture inside scores higher; nothing to measure:
    exit 2 and one line."""
    tool = _tool("fine_band")
    yy, xx = np.mgrid[:64, :64]
    body = (yy - 32) ** 2 + (xx - 32) ** 2 < 26 ** 2
    smooth = np.where(body, 3.0 - ((yy - 32) ** 2 + (xx - 32) ** 2) / 400.0, 0.0)
    textured = smooth + 0.3 * body * ((yy + xx) % 2)
    assert tool.fine_share(smooth, body) < 0.02
    assert tool.fine_share(textured, body) > 10 * tool.fine_share(smooth, body)
    with pytest.raises(SystemExit) as none:
        tool.main([])
    assert none.value.code == 2 and "give at least one --cxr or --ct" in capsys.readouterr().err


def test_magnification_check_shows_what_the_correction_is_worth(capsys):
    """tools/magnification_check.py on a held-out phantom taken as a PA radiograph: the
    lateral predicted with the PA magnification assumed (what infer does) beats the one
    without the correction, by more than anatomy noise could give (it was 5 dB); at 1800 mm
    the assumed magnification is the true one, so stating it changes nothing."""
    tool = _tool("magnification_check")
    assert tool.main(["--data", "phantom:1:5000", "--pixels", "128"]) == 0
    rows = {r.split("|")[2].strip(): float(r.split("|")[3])
            for r in capsys.readouterr().out.splitlines() if r.startswith("| all")}
    assert list(rows) == [label for label, _ in tool.READINGS]
    assert rows["nothing stated (infer assumes 1.08)"] > rows["model's stated (no correction)"] + 2.0
    assert rows["its own stated"] == rows["nothing stated (infer assumes 1.08)"]   # PA: 1.08


@pytest.mark.parametrize("tool, argv, says", [
    ("magnification_check", ["--data", "MISSING"], "no such file or folder"),
    ("magnification_check", ["--data", "phantom:1", "--pixels", "0"], "must be at least 1"),
    ("magnification_check", ["--data", "phantom:1", "--source-distance", "100"],
     "at least 500 mm from the detector, got 100"),
    ("mapping_check", ["--data", "MISSING"], "no such file or folder"),
    ("mapping_check", ["--data", "phantom:1:5000", "--styles", "0"], "must be at least 1, got 0"),
    ("fine_band", ["--ct", "MISSING"], "no such file or folder"),
    ("fine_band", ["--ct", "MISSING", "--seeds", "x"], "'x' is not a whole number"),
])
def test_measuring_tools_refuse_bad_input_in_one_line(tmp_path, capsys, tool, argv, says):
    """tools/mapping_check.py, magnification_check.py and fine_band.py on a CT that is not
    there or a count below 1:
    exit 2 and one line saying why, no traceback."""
    argv = [str(tmp_path / "missing.nii.gz") if a == "MISSING" else a for a in argv]
    try:
        code = _tool(tool).main(argv)
    except SystemExit as exc:                     # argparse's refusal
        code = exc.code
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line]
    assert code == 2 and says in err[-1] and "Traceback" not in "".join(err)

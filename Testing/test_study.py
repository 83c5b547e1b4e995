"""The in-silico study (``xray2xray study``): the smoke configuration end to end through the
real CLI (twice, for same-seed reproducibility), its outputs, the config's error handling,
and the pieces the numbers rest on (split, labelled subsets, MAE's visible-token encoder).

The smoke study is a pipeline check (12 tiny cases, a few steps per method), not a result;
each run takes about 10-15 s on one core.
"""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
METHODS = ("supervised", "mae", "xray2xray", "oracle")
TASKS = ("atelectasis", "cardiomegaly", "consolidation", "edema", "pleural_effusion",
         "pathology_macro", "event", "c_index")
FRACTIONS = ("0.1", "1.0")
#: Keys whose values legitimately differ between two runs (clock, machine, paths).
UNSTABLE = {"timing", "wall_s", "environment", "checkpoints"}


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(k, None)
    return env


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "XrayWorldModel", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or REPO, env=_env(),
                          timeout=600)


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Two smoke studies with the same seed, in two folders."""
    root = tmp_path_factory.mktemp("study")
    outs = []
    for name in ("a", "b"):
        out = root / name
        res = run_cli("study", "--config", "insilico-smoke", "--out", out, "--seed", "0",
                      cwd=root)
        assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
        assert "Traceback" not in res.stderr
        outs.append((out, res))
    return outs


def _ci_ok(entry):
    ci = entry.get("ci95")
    if entry.get("value") is None:
        return ci is None
    return ci is None or ci[0] <= entry["value"] <= ci[1]


def test_smoke_study_writes_every_method_task_and_fraction(smoke_runs):
    out, res = smoke_runs[0]
    for name in ("results.json", "results.md", "predictions.csv", "roc.png", "views.png",
                 "splits/train.csv", "splits/test.csv"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    r = json.loads((out / "results.json").read_text())
    assert r["format"] == "xray2xray-study" and r["config_name"] == "insilico-smoke"
    assert r["label_fractions"] == list(FRACTIONS)
    assert set(r["results"]) == set(METHODS)
    present = 0
    for m in METHODS:
        for f in FRACTIONS:
            assert set(r["results"][m][f]) == set(TASKS), (m, f)
            for t in TASKS:
                e = r["results"][m][f][t]
                assert e["metric"] == ("c_index" if t == "c_index" else "auroc")
                assert _ci_ok(e), (m, f, t, e)
                if e["value"] is not None:
                    assert 0.0 <= e["value"] <= 1.0
                    present += 1
    # the split and labelled subsets are drawn so that every task can be scored
    assert present == len(METHODS) * len(FRACTIONS) * len(TASKS)
    # Xray2Xray against each other method, every task, with a p-value in [0, 1]
    assert set(r["comparisons"]) == {"supervised", "mae", "oracle"}
    for other, by_frac in r["comparisons"].items():
        for f in FRACTIONS:
            for t in TASKS:
                c = by_frac[f][t]
                assert c is not None and 0.0 <= c["p_value"] <= 1.0, (other, f, t)
                assert c["ci95"][0] <= c["ci95"][1]
    # matched compute: every trained arm saw the same number of encoder samples
    samples = {r["methods"]["mae"]["training"]["encoder_samples"],
               r["methods"]["xray2xray"]["training"]["encoder_samples"],
               *(v["encoder_samples"] for v in r["methods"]["supervised"]["training"].values())}
    assert samples == {r["config"]["budget"]["encoder_samples"]}
    assert r["methods"]["oracle"]["training"] is None
    # world model: novel view and volume correlation next to their baselines
    nv = r["world_model"]["novel_view"]["90"]
    assert {"world_model_psnr", "world_model_ssim", "mean_view_psnr", "copy_input_psnr"} <= set(nv)
    vol = r["world_model"]["volume"]
    assert vol["n_ct"] == 2 and -1.0 <= vol["world_model"]["pearson_r"] <= 1.0
    # train and test are disjoint; labelled subsets are nested inside train
    assert not set(r["cohort"]["train_ids"]) & set(r["cohort"]["test_ids"])
    lab10, lab100 = (set(r["labelled"][f]["ids"]) for f in FRACTIONS)
    assert lab10 <= lab100 <= set(r["cohort"]["train_ids"])
    # the markdown table has a row per method in each fraction's table, and progress lines
    md = (out / "results.md").read_text()
    for title in ("Supervised", "Masked autoencoder", "Xray2Xray", "Oracle"):
        assert md.count(f"| {title}") >= len(FRACTIONS)
    assert "Smoke configuration" in md
    assert "study [1/6] cohort" in res.stderr and "study: done" in res.stderr
    assert "xray2xray" in res.stdout and "C-index" in res.stdout


def _numbers(obj, path=""):
    """Flatten a results tree to {path: value}, leaving out clock and machine entries."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k not in UNSTABLE:
                out.update(_numbers(v, f"{path}/{k}"))
        return out
    if isinstance(obj, list):
        out = {}
        for i, v in enumerate(obj):
            out.update(_numbers(v, f"{path}[{i}]"))
        return out
    return {path: obj}


def test_smoke_study_same_seed_same_numbers(smoke_runs):
    (a, _), (b, _) = smoke_runs
    ra = _numbers(json.loads((a / "results.json").read_text()))
    rb = _numbers(json.loads((b / "results.json").read_text()))
    assert ra.keys() == rb.keys()
    n_float = 0
    for key, va in ra.items():
        vb = rb[key]
        if isinstance(va, float) and isinstance(vb, float):
            assert math.isclose(va, vb, rel_tol=0, abs_tol=1e-6), (key, va, vb)
            n_float += 1
        else:
            assert va == vb, (key, va, vb)
    assert n_float > 300     # metrics, CIs, p-values, losses, view and volume scores
    pa = list(csv.reader(open(a / "predictions.csv")))
    pb = list(csv.reader(open(b / "predictions.csv")))
    assert len(pa) == len(pb) > 1
    for x, y in zip(pa[1:], pb[1:]):
        assert x[:4] == y[:4] and abs(float(x[4]) - float(y[4])) <= 1e-6


def test_bad_config_key_is_one_line_exit_2(tmp_path):
    res = run_cli("study", "--config", "insilico-smoke", "--out", tmp_path / "o",
                  "cohort.bogus=1", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xray2xray: error:"), res.stderr
    assert "unknown key cohort.bogus" in lines[0] and "test_fraction" in lines[0]
    assert not (tmp_path / "o").exists()      # nothing was started


@pytest.mark.parametrize("override, message", [
    ("probe.bootstrap=many", "probe.bootstrap must be int"),
    ("probe.label_fractions=[0.1,1.5]", "label_fractions must lie in (0, 1]"),
    ("run.methods=[\"xray2xray\",\"vae\"]", "run.methods must list distinct methods"),
    ("model.embed_dim=30", "embed_dim"),
    ("nosection=1", "must look like section.key=value"),
    ("data.centre_on=table", "data.centre_on must be one of body, chest, scan"),
])
def test_bad_config_values_one_line(tmp_path, capsys, override, message):
    from XrayWorldModel.cli import main
    assert main(["study", "--config", "insilico-smoke", "--out", str(tmp_path / "o"),
                 override]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xray2xray: error:"), lines
    assert message in lines[0]
    assert not (tmp_path / "o").exists()


def test_unknown_preset_and_bad_file(tmp_path, capsys):
    from XrayWorldModel.cli import main
    assert main(["study", "--config", "insilico-nope"]) == 2
    err = capsys.readouterr().err
    assert "insilico-smoke" in err and "insilico-cpu" in err and "insilico-gpu" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["study", "--config", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    bad.write_text('{"cohortt": {"n_cases": 10}}')
    assert main(["study", "--config", str(bad)]) == 2
    assert "unknown key 'cohortt'" in capsys.readouterr().err


def test_shipped_configs_load_and_match_budgets():
    from XrayWorldModel.study import load_study_config
    for name in ("insilico-smoke", "insilico-cpu", "insilico-gpu"):
        cfg = load_study_config(name)
        assert cfg.comment, name                 # each documents what it is for
        assert [float(f) for f in cfg.probe.label_fractions] == [0.1, 1.0]
        assert set(cfg.methods) == set(METHODS)
        samples = {cfg.steps(m) * getattr(cfg, s).batch_size
                   for m, s in (("supervised", "supervised"), ("mae", "mae"),
                                ("xray2xray", "world_model"))}
        assert min(samples) >= cfg.budget.encoder_samples
        assert max(samples) - cfg.budget.encoder_samples < max(
            cfg.supervised.batch_size, cfg.mae.batch_size, cfg.world_model.batch_size)
    cfg = load_study_config("insilico-smoke", ["cohort.n_cases=20", "probe.C=auto"], seed=5)
    assert cfg.cohort.n_cases == 20 and cfg.probe.C == "auto" and cfg.seed == 5
    assert cfg.first_seed() == 100


def test_encode_visible_with_every_token_is_the_encoder():
    import torch
    from XrayWorldModel.models import WorldModelConfig
    from XrayWorldModel.study.baselines import MaskedAutoencoder, build_encoder, encode_visible
    cfg = WorldModelConfig(image_size=32, patch_size=8, embed_dim=32, depth=1, heads=2,
                           transition_depth=1, decoder_dim=32, decoder_depth=1,
                           decoder_heads=2, n_freq=2)
    enc = build_encoder(cfg, seed=3).eval()
    x = torch.rand(2, 1, 32, 32)
    a = torch.tensor([0.0, 10.0])
    keep = torch.arange(enc.num_tokens).expand(2, -1)
    with torch.no_grad():
        torch.testing.assert_close(encode_visible(enc, x, a, keep), enc(x, a))
    # same seed, same initial encoder (every arm starts from the same weights)
    for p, q in zip(enc.parameters(), build_encoder(cfg, seed=3).parameters()):
        assert torch.equal(p, q)
    mae = MaskedAutoencoder(enc, dim=32, depth=1, heads=2)
    loss = mae(x, a, keep[:, :4])
    loss.backward()
    assert torch.isfinite(loss) and enc.patch_embed.weight.grad is not None


def test_mae_on_row_band_tokens_predicts_whole_rows():
    """With row-band tokens (patch 2 rows x the full width) each MAE target is two image
    rows, in the encoder's token order, and the loss trains the encoder."""
    import torch
    from XrayWorldModel.models import WorldModelConfig
    from XrayWorldModel.study.baselines import MaskedAutoencoder, build_encoder, patchify
    img = torch.arange(2 * 32 * 32, dtype=torch.float32).reshape(2, 1, 32, 32)
    tokens = patchify(img, (2, 32))
    assert tokens.shape == (2, 16, 64)
    torch.testing.assert_close(tokens[1, 5], img[1, 0, 10:12].reshape(-1))
    torch.testing.assert_close(patchify(img, 8), patchify(img, (8, 8)))
    cfg = WorldModelConfig(image_size=32, patch_size=2, patch_width=32, embed_dim=32, depth=1,
                           heads=2, transition_depth=1, decoder_dim=32, decoder_depth=1,
                           decoder_heads=2, n_freq=2)
    enc = build_encoder(cfg, seed=0)
    mae = MaskedAutoencoder(enc, dim=32, depth=1, heads=2)
    assert mae.head.out_features == 64
    keep = torch.arange(4).expand(2, -1)
    loss = mae(torch.rand(2, 1, 32, 32), torch.zeros(2), keep)
    loss.backward()
    assert torch.isfinite(loss) and enc.patch_embed.weight.grad.abs().sum() > 0


def test_split_and_labelled_subsets_have_both_classes(tmp_path):
    from XrayWorldModel.phantom.cohort import sample_case_labels
    from XrayWorldModel.study.data import (BINARY_TASKS, Cohort, labelled_subsets,
                                           split_cases)
    rows = [sample_case_labels(s) for s in range(80)]
    labels = {k: np.array([r[k] for r in rows], float) for k in rows[0]}
    cohort = Cohort(tmp_path / "labels.csv", [f"c{i}" for i in range(80)], [None] * 80, labels)
    train, test = split_cases(cohort, 0.3, seed=1)
    assert len(test) == 24 and not set(train) & set(test) and len(train) + len(test) == 80
    assert np.array_equal(split_cases(cohort, 0.3, seed=1)[1], test)
    assert not np.array_equal(split_cases(cohort, 0.3, seed=2)[1], test)
    subsets = labelled_subsets(cohort, train, [0.1, 0.5, 1.0], min_labelled=8, seed=1)
    assert len(subsets[0.1]) == 8 and len(subsets[1.0]) == len(train)
    assert set(subsets[0.1]) <= set(subsets[0.5]) <= set(train)
    for rows_ in (train, test, subsets[0.1]):
        for t in BINARY_TASKS:
            y = labels[t][rows_]
            assert 0 < y.sum() < len(y), t


def test_interval_always_contains_its_estimate():
    from XrayWorldModel.study.probes import _entry, roc_curve
    e = _entry("auroc", 0.9, [0.3, 0.8])
    assert e["ci95"] == [0.3, 0.9] and e["ci_widened"]
    assert _entry("auroc", float("nan"), [0.1, 0.2]) == {"metric": "auroc", "value": None,
                                                        "ci95": None}
    fpr, tpr = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.isclose(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2), 0.75)


def test_figures_without_matplotlib(tmp_path, monkeypatch):
    """Pillow draws the same two figures where matplotlib is not installed."""
    from PIL import Image
    from XrayWorldModel.study import figures
    monkeypatch.setattr(figures, "_matplotlib", lambda: None)
    fpr, tpr = np.array([0.0, 0.5, 1.0]), np.array([0.0, 0.8, 1.0])
    curves = {t: {"xray2xray": {0.1: (fpr, tpr, 0.7), 1.0: (fpr, tpr, None)},
                  "oracle": {1.0: (fpr, tpr, 0.9)}} for t in ("edema", "event")}
    roc = figures.roc_figure(tmp_path / "roc.png", curves, {"edema": "Edema"}, {})
    row = {k: np.random.default_rng(0).normal(size=(16, 16)) for k, _ in figures.PANELS}
    views = figures.views_figure(tmp_path / "views.png", [row, row], ["a", "b"])
    for p in (roc, views):
        with Image.open(p) as im:
            assert im.size[0] > 100 and im.size[1] > 100


def test_study_real_anatomy(smoke_runs):
    """The world model on the real CT's DRRs and the real radiograph when ../shared/data is
    there (found from a working folder elsewhere), a stated skip when it is not."""
    out, _ = smoke_runs[0]
    r = json.loads((out / "results.json").read_text())
    real = r["world_model"]["real_anatomy"]
    data = REPO.parent / "shared" / "data"
    if not (data / "chest_ct.nii.gz").is_file():
        assert "no file at" in real["ct"]["skipped"]
        return
    ct = real["ct"]
    assert ct["file"] == "chest_ct.nii.gz"
    nv = ct["novel_view"]["90"]
    assert math.isfinite(nv["world_model_psnr"]) and 0 < nv["mean_view_ssim"] <= 1
    for name in ("world_model", "world_model_fdk_only", "mean_ct", "copied_frontal_fdk"):
        assert -1.0 <= ct["volume"][name]["pearson_r"] <= 1.0
    assert ct["volume"]["n_ct"] == 1
    cxr = real["cxr"]
    assert cxr["file"] == "chest_cr_pa.dcm" and -1.0 <= cxr["consistency"] <= 1.0
    assert any("pixel spacing" in n for n in cxr["preprocessing"]["notes"])   # broken header
    assert (out / "real_anatomy.png").stat().st_size > 1000
    assert "## Real anatomy" in (out / "results.md").read_text()


def test_real_anatomy_file_lookup(tmp_path, monkeypatch):
    from XrayWorldModel.study.real_anatomy import find_file
    assert find_file(None) == (None, "not configured")
    path, why = find_file(str(tmp_path / "absent.nii.gz"))
    assert path is None and "no file at" in why
    (tmp_path / "here.nii.gz").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert find_file("here.nii.gz") == ((tmp_path / "here.nii.gz").resolve(), None)


def test_hidden_findings_split_the_positives(smoke_runs):
    """Visible and hidden positives partition each hideable finding's test positives (read
    from the cohort labels), and each method and fraction has both AUROCs or a reason."""
    out, _ = smoke_runs[0]
    r = json.loads((out / "results.json").read_text())
    with open(next((out / "cohort").glob("*.csv")), newline="") as f:
        labels = {row["id"]: row for row in csv.DictReader(f)}
    test_ids = r["cohort"]["test_ids"]
    hf = r["hidden_findings"]
    for task in ("atelectasis", "consolidation", "pleural_effusion"):
        hidden = sum(int(float(labels[i][task])) and int(float(labels[i][f"{task}_hidden"]))
                     for i in test_ids)
        for m in METHODS:
            for frac in FRACTIONS:
                e = hf["results"][m][frac][task]
                assert e["visible"]["n_pos"] + e["hidden"]["n_pos"] == \
                    r["cohort"]["test_positives"][task]
                assert e["hidden"]["n_pos"] == hidden
                for part in ("visible", "hidden"):
                    v = e[part]["value"]
                    assert (v is None and e[part]["note"]) or 0.0 <= v <= 1.0
        assert set(hf["comparisons"]) == {"supervised", "mae", "oracle"}
    assert "## Findings the frontal view hides" in (out / "results.md").read_text()


def test_study_analysis_agrees_with_the_study(smoke_runs, tmp_path):
    """``study-analysis`` on a finished run: its probe on the study's own world-model
    features reproduces the study's numbers, and the event AUROC of the true risk
    probability matches one computed from the cohort labels directly."""
    import shutil
    from sklearn.metrics import roc_auc_score
    run = tmp_path / "run"
    shutil.copytree(smoke_runs[0][0], run)
    res = run_cli("study-analysis", run)
    assert res.returncode == 0, res.stderr
    a = json.loads((run / "analysis.json").read_text())
    r = json.loads((run / "results.json").read_text())
    study_row = next(v for k, v in a["probe_ablation"].items() if "the study's" in k)
    for frac in FRACTIONS:
        for task in ("pathology_macro", "event", "c_index"):
            assert study_row[frac][task]["value"] == pytest.approx(
                r["results"]["xray2xray"][frac][task]["value"], abs=1e-9)
    with open(next((run / "cohort").glob("*.csv")), newline="") as f:
        labels = {row["id"]: row for row in csv.DictReader(f)}
    ids = r["cohort"]["test_ids"]
    y = [int(float(labels[i]["event"])) for i in ids]
    p = [float(labels[i]["risk_prob"]) for i in ids]
    assert a["event_from_truth"]["risk_prob"]["value"] == pytest.approx(roc_auc_score(y, p))
    assert set(next(iter(a["linear_readout_r2"].values()))) == {"log calcium volume", "heart scale"}
    assert "# Study analysis" in res.stdout
    bad = run_cli("study-analysis", tmp_path / "nothing")
    assert bad.returncode == 2 and "not a finished study folder" in bad.stderr

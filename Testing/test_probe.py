"""Probes (``XrayWorldModel.probe``): heads recover known signals, metrics match brute
force, bootstrap CIs behave, JSON heads apply without scikit-learn, and ``xray2xray probe``
runs end to end on phantoms with a tiny real WorldModel saved as a model file."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from XrayWorldModel.cli import main
from XrayWorldModel.probe import (PATHOLOGIES, apply_heads, auroc, auroc_ci, c_index, c_index_ci,
                                  cv_cox, cv_logistic, fit_cox, fit_logistic, multilabel_auroc_ci,
                                  paired_bootstrap)
from XrayWorldModel.probe.heads import _standardise

REPO = Path(__file__).resolve().parents[1]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _logistic_data(n, seed=0, f=8):
    """Features on mixed scales; labels from a known logistic model of two of them."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, f)) * rng.uniform(0.5, 4.0, f) + rng.normal(0, 3, f)
    Z = (X - X.mean(0)) / X.std(0)
    p1 = _sigmoid(1.5 * Z[:, 0] - 1.0 * Z[:, 1] - 0.3)
    p2 = _sigmoid(-1.2 * Z[:, 2] + 0.5)
    Y = np.stack([rng.uniform(size=n) < p1, rng.uniform(size=n) < p2], axis=1).astype(float)
    return X, Y, np.stack([p1, p2], axis=1)


# ----------------------------------------------------------------------------- heads
def test_logistic_heads_recover_signal_and_json_matches_sklearn():
    from sklearn.linear_model import LogisticRegression
    X, Y, P = _logistic_data(600)
    Y[::17, 1] = np.nan                          # missing labels are left out per label
    oof = cv_logistic(X, Y, ["a", "b"], folds=5, seed=1)
    for j in range(2):
        keep = ~np.isnan(Y[:, j])
        true_auc = auroc(Y[keep, j], P[keep, j])
        assert abs(auroc(Y[keep, j], oof[keep, j]) - true_auc) < 0.04
    assert np.isnan(oof[::17, 1]).all() and not np.isnan(oof[:, 0]).any()

    head = json.loads(json.dumps(fit_logistic(X, Y, ["a", "b"], C=0.5)))
    assert head["kind"] == "logistic" and head["labels"] == ["a", "b"]
    assert set(head) >= {"mean", "scale", "coef", "intercept", "C"}
    coef = np.asarray(head["coef"])
    assert coef[0, 0] > 0.8 and coef[0, 1] < -0.5 and coef[1, 2] < -0.6   # the true signs
    Z = _standardise(head, X)
    out = apply_heads(head, X)
    for j, name in enumerate(["a", "b"]):
        keep = ~np.isnan(Y[:, j])
        sk = LogisticRegression(C=0.5, max_iter=5000, tol=1e-6).fit(Z[keep], Y[keep, j])
        np.testing.assert_allclose(out[name], sk.predict_proba(Z)[:, 1], atol=1e-6)
    one = apply_heads(head, X[0])                 # one vector in: floats out
    assert isinstance(one["a"], float) and one["a"] == pytest.approx(out["a"][0])

    auto = fit_logistic(X, Y, ["a", "b"])         # C chosen by inner CV from the grid
    assert all(c > 0 for c in auto["C"])


def test_apply_heads_needs_neither_sklearn_nor_torch(tmp_path):
    X, Y, _ = _logistic_data(200)
    rng = np.random.default_rng(0)
    entry = {"format": "xray2xray-probe", "version": 1, "task": "risk", "features": {},
             "heads": [fit_logistic(X, Y[:, :1], ["event"], C=1.0),
                       fit_cox(X, rng.exponential(size=200), Y[:, 1], alpha=0.1)]}
    (tmp_path / "heads.json").write_text(json.dumps({"risk": entry}))
    code = ("import json, sys, numpy as np\n"
            "from XrayWorldModel.probe import apply_heads\n"
            f"h = json.load(open({str(tmp_path / 'heads.json')!r}))\n"
            "out = apply_heads(h, np.zeros(8))['risk']\n"
            "assert set(out) == {'event', 'risk_score', 'hazard_ratio', "
            "'event_probability_at_horizon'}, out\n"
            "assert 'sklearn' not in sys.modules and 'torch' not in sys.modules\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_apply_heads_refuses_wrong_feature_count():
    from XrayWorldModel.probe import ProbeError
    X, Y, _ = _logistic_data(100)
    head = fit_logistic(X, Y[:, :1], ["a"], C=1.0)
    with pytest.raises(ProbeError, match="expects 8 features, got 5"):
        apply_heads(head, np.zeros((2, 5)))


def _survival_data(n, beta=1.0, seed=0):
    """Exponential event times with hazard exp(beta * z0) (z standardised), exponential
    censoring (about a third censored)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)) * [2.0, 1.0, 0.5, 3.0] + [1.0, 0.0, -2.0, 5.0]
    z = (X[:, 0] - X[:, 0].mean()) / X[:, 0].std()
    t_event = rng.exponential(1.0 / np.exp(beta * z))
    t_cens = rng.exponential(2.0, n)
    return X, np.minimum(t_event, t_cens), (t_event <= t_cens).astype(float), z


def test_cox_recovers_sign_and_magnitude():
    X, time, event, z = _survival_data(800, beta=1.0)
    assert 0.2 < 1 - event.mean() < 0.6
    head = fit_cox(X, time, event, alpha=1e-3)
    coef = np.asarray(head["coef"])
    assert 0.8 < coef[0] < 1.2                    # standardised units: beta itself
    assert np.all(np.abs(coef[1:]) < 0.15)
    out = apply_heads(json.loads(json.dumps(head)), X)
    assert c_index(time, event, out["risk_score"]) > 0.65
    assert np.all((out["event_probability_at_horizon"] > 0) & (out["event_probability_at_horizon"] < 1))
    np.testing.assert_allclose(out["hazard_ratio"], np.exp(out["risk_score"]))
    neg = fit_cox(X, time, event, alpha=1e-3, seed=0)
    X2, t2, e2, _ = _survival_data(800, beta=-1.0, seed=3)
    assert fit_cox(X2, t2, e2, alpha=1e-3)["coef"][0] < -0.8 and neg["alpha"] == 1e-3
    auto = fit_cox(X, time, event)                # penalty from inner CV: still the right sign
    assert auto["coef"][0] > 0.3 and auto["alpha"] > 0
    oof = cv_cox(X, time, event, folds=4, seed=0, alpha=0.01)
    assert c_index(time, event, oof) > 0.65


# ----------------------------------------------------------------------------- metrics
def _brute_c(time, event, score):
    conc = comp = 0.0
    n = len(time)
    for i in range(n):
        for j in range(n):
            if i == j or not event[i]:
                continue
            if time[i] < time[j] or (time[i] == time[j] and not event[j]):
                comp += 1
                conc += 1.0 if score[i] > score[j] else 0.5 if score[i] == score[j] else 0.0
    return conc / comp


def test_c_index_matches_brute_force_pair_count():
    rng = np.random.default_rng(4)
    for _ in range(5):
        n = 25
        time = rng.integers(1, 8, n).astype(float)       # many tied times
        event = rng.uniform(size=n) < 0.6
        score = rng.integers(0, 5, n).astype(float)      # and tied scores
        assert c_index(time, event, score) == pytest.approx(_brute_c(time, event, score))
        assert c_index(time, event, score, block=7) == pytest.approx(_brute_c(time, event, score))
    # perfect and reversed orderings
    t = np.arange(1.0, 11.0)
    assert c_index(t, np.ones(10), -t) == 1.0 and c_index(t, np.ones(10), t) == 0.0


def test_auroc_matches_pair_count():
    rng = np.random.default_rng(1)
    y = rng.uniform(size=60) < 0.4
    s = rng.integers(0, 6, 60).astype(float)
    pos, neg = s[y], s[~y]
    brute = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
    assert auroc(y, s) == pytest.approx(brute)
    assert np.isnan(auroc(np.ones(5), np.arange(5)))


def test_bootstrap_ci_contains_estimate_and_narrows_with_n():
    widths, cwidths = [], []
    for n in (100, 2000):
        X, Y, P = _logistic_data(n, seed=2)
        r = auroc_ci(Y[:, 0], P[:, 0], n_boot=300, seed=0)
        assert r["ci95"][0] <= r["auroc"] <= r["ci95"][1]
        widths.append(r["ci95"][1] - r["ci95"][0])
        again = auroc_ci(Y[:, 0], P[:, 0], n_boot=300, seed=0)
        assert again == r                                     # seeded
        X, time, event, z = _survival_data(n, seed=5)
        c = c_index_ci(time, event, z, n_boot=300, seed=0)
        assert c["ci95"][0] <= c["c_index"] <= c["ci95"][1]
        assert c["c_index"] == pytest.approx(c_index(time, event, z))
        cwidths.append(c["ci95"][1] - c["ci95"][0])
    assert widths[1] < 0.5 * widths[0] and cwidths[1] < 0.5 * cwidths[0]

    X, Y, P = _logistic_data(300, seed=3)
    m = multilabel_auroc_ci(Y, P, ["a", "b"], n_boot=200, seed=0)
    assert set(m["labels"]) == {"a", "b"}
    assert m["macro_auroc"]["auroc"] == pytest.approx(np.mean([m["labels"][k]["auroc"]
                                                               for k in "ab"]))
    lo, hi = m["macro_auroc"]["ci95"]
    assert lo <= m["macro_auroc"]["auroc"] <= hi


def test_paired_bootstrap():
    X, Y, P = _logistic_data(400, seed=6)
    rng = np.random.default_rng(0)
    noise = rng.uniform(size=400)
    assert paired_bootstrap(Y[:, 0], P[:, 0], noise, n_boot=500) < 0.01
    assert paired_bootstrap(Y[:, 0], P[:, 0], P[:, 0], n_boot=200) == 1.0
    slight = P[:, 0] + rng.normal(0, 0.01, 400)
    assert paired_bootstrap(Y[:, 0], P[:, 0], slight, n_boot=500) > 0.05


# ----------------------------------------------------------------------------- CLI
N_CT = 12
TINY_MODEL = {"image_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 1, "heads": 2,
              "transition_depth": 1, "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2,
              "decoder_channels": 0, "n_freq": 2}


def tiny_model_file(path: Path, **card) -> Path:
    """An untrained TINY_MODEL (seed 0) saved as a model file whose config views it at 32
    pixels on a 32^3 x 11 mm cube; ``card``: more card fields."""
    from XrayWorldModel.models import WorldModel, WorldModelConfig
    from XrayWorldModel.config import TrainConfig, load_config
    from XrayWorldModel.weights import save_model_file
    cfg = load_config("cpu-small").to_dict()
    cfg["model"] = WorldModelConfig(**TINY_MODEL).to_dict()
    cfg["views"]["image_size"] = 32
    cfg["data"].update(grid_size=32, grid_spacing=11.0)
    cfg = TrainConfig.from_dict(cfg).to_dict()
    torch.manual_seed(0)
    model = WorldModel(WorldModelConfig(**TINY_MODEL)).eval()
    return save_model_file(path, {f"model.{k}": v for k, v in model.state_dict().items()},
                           {"name": "tiny", "version": "1.0", "config": cfg, **card})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model file, a labels CSV for phantom:12, and a shared preprocessing cache."""
    root = tmp_path_factory.mktemp("probe")
    path = tiny_model_file(root / "tiny.safetensors", heads={"other": {"kept": True}})
    from XrayWorldModel.weights.model_file import load_model_file
    tensors, card = load_model_file(path)
    cfg = card["config"]
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_CT):
        row = {"id": f"phantom-{i:05d}", "path": "unused.nii.gz"}
        rows.append(row)
    for name in PATHOLOGIES:                     # balanced 0/1 per label, shuffled
        for row, v in zip(rows, rng.permutation([0, 1] * (N_CT // 2))):
            row[name] = int(v)
    for row, v in zip(rows, rng.permutation([0, 1] * (N_CT // 2))):
        row["event"] = int(v)
        row["censored"] = 1 - int(v)
        row["time"] = round(float(rng.exponential(5.0)), 3)
        row["risk_prob"] = 0.5
    rows.append({"id": "not-a-ct", **{k: 0 for k in rows[0] if k != "id"}})   # extra row: fine
    labels = root / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XRAY2XRAY_CACHE", str(root / "cache"))
        mp.setenv("XRAY2XRAY_MODELS", str(root / "models"))
        yield {"root": root, "model": path, "labels": labels, "rows": rows, "config": cfg,
               "tensors": tensors}


def _run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_probe_end_to_end(setup, capsys):
    from XrayWorldModel.probe import predict_heads, render_frontal_views
    from XrayWorldModel.data import resolve_source
    from XrayWorldModel.weights import load_world_model, read_card
    root = setup["root"]
    saved = root / "with-pathology.safetensors"
    code, out, err = _run(["probe", "--model", str(setup["model"]), "--data", f"phantom:{N_CT}",
                           "--labels", str(setup["labels"]), "--task", "pathology",
                           "--folds", "3", "--bootstrap", "50", "--C", "1",
                           "--out", str(root / "heads.json"), "--save-into", str(saved)], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["task"] == "pathology" and res["n"] == N_CT
    assert res["features"]["n_features"] == 16 * 2 and res["features"]["imagined"] == [90.0]
    m = res["metrics"]
    assert set(m["labels"]) == set(PATHOLOGIES) and m["folds"] == 3
    for v in m["labels"].values():
        assert 0.0 <= v["auroc"] <= 1.0 and v["n_pos"] == v["n_neg"] == N_CT // 2
    assert 0.0 <= m["macro_auroc"]["auroc"] <= 1.0 and len(m["macro_auroc"]["ci95"]) == 2
    entry = json.loads((root / "heads.json").read_text())
    assert entry["format"] == "xray2xray-probe" and entry["heads"][0]["labels"] == list(PATHOLOGIES)

    # risk on the saved model: logistic on event + Cox on time; heads merge in the card
    both = root / "with-both.safetensors"
    code, out, err = _run(["probe", "--model", str(saved), "--data", f"phantom:{N_CT}",
                           "--labels", str(setup["labels"]), "--task", "risk", "--folds", "3",
                           "--bootstrap", "50", "--imagined", "90,270", "--cox-alpha", "0.1",
                           "--save-into", str(both)], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert set(res["metrics"]["labels"]) == {"event"}
    assert 0.0 <= res["metrics"]["c_index"]["c_index"] <= 1.0
    assert [h["kind"] for h in res["heads"]] == ["logistic", "cox"]
    card = read_card(both)
    assert set(card["heads"]) == {"other", "pathology", "risk"}
    assert card["heads"]["risk"]["features"]["imagined"] == [90.0, 270.0]

    # the saved card's heads apply to the model's own features (what infer does)
    model, card = load_world_model(both)
    images, ids = render_frontal_views(resolve_source("phantom:3"), card)
    assert images.shape == (3, 1, 32, 32) and ids == [f"phantom-{i:05d}" for i in range(3)]
    heads = {k: v for k, v in card["heads"].items() if k in ("pathology", "risk")}
    pred = predict_heads(model, images, heads)
    assert set(pred["pathology"]) == set(PATHOLOGIES)
    assert set(pred["risk"]) == {"event", "risk_score", "hazard_ratio",
                                 "event_probability_at_horizon"}
    assert all(np.all((p >= 0) & (p <= 1)) for p in pred["pathology"].values())


def test_features_are_pooled_observed_and_imagined_latents(setup):
    from XrayWorldModel.probe import extract_features, pooled_features
    from XrayWorldModel.weights import load_world_model
    model, _ = load_world_model(setup["model"])
    images = torch.rand(5, 1, 32, 32) * 3.0
    f = extract_features(model, images, angle=0.0, imagined=(90.0, 270.0), batch_size=2)
    assert f.shape == (5, 16 * 3)
    with torch.no_grad():
        state = model.encode(images, 0.0)
        lateral = model.step(state, torch.full((5,), 90.0), torch.zeros(5))
    np.testing.assert_allclose(f[:, :16], state.mean(1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f[:, 16:32], lateral.mean(1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pooled_features(model, state, (90.0, 270.0)), f, rtol=1e-5,
                               atol=1e-6)
    assert extract_features(model, images.numpy()[:, 0], imagined=()).shape == (5, 16)
    with pytest.raises(Exception, match=r"images must be \[B, 1, 32, 32\]"):
        extract_features(model, np.zeros((2, 1, 16, 16)))


def test_save_heads_into_checkpoint_and_model_file(setup):
    """A training run folder becomes a model file carrying the heads; a model file keeps
    its other heads and gets the new task replaced."""
    from XrayWorldModel.probe import save_heads_into
    from XrayWorldModel.train import save_checkpoint
    from XrayWorldModel.weights import load_world_model, read_card
    run = setup["root"] / "run"
    save_checkpoint(run / "checkpoints", 5, setup["tensors"],
                    {"config": setup["config"], "model": "xray2xray-world-model"})
    entry = {"format": "xray2xray-probe", "version": 1, "task": "risk", "heads": []}
    out = save_heads_into(run, setup["root"] / "from-run.safetensors", {"risk": entry})
    assert read_card(out)["heads"] == {"risk": entry}
    load_world_model(out)                          # loads: digest and weights check out
    new = dict(entry, metrics={"x": 1})
    out2 = save_heads_into(setup["model"], setup["root"] / "m2.safetensors", {"other": new})
    assert read_card(out2)["heads"] == {"other": new}


def _write_csv(path, rows, fields=None):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields or list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.mark.parametrize("case, message", [
    ("missing", "lacks column 'edema'"),
    ("ids", "no CT id of the data source has a row in the labels CSV"),
    ("single", "column 'cardiomegaly': label 'cardiomegaly' has a single class"),
    ("noid", "labels CSV has no 'id' column"),
    ("notbinary", "label 'atelectasis' must be 0 or 1"),
])
def test_cli_bad_labels_one_line(setup, capsys, case, message):
    rows = [dict(r) for r in setup["rows"]]
    if case == "missing":
        for r in rows:
            r.pop("edema")
    elif case == "ids":
        for k, r in enumerate(rows):
            r["id"] = f"ct{k}"
    elif case == "single":
        for r in rows:
            r["cardiomegaly"] = 0
    elif case == "noid":
        for r in rows:
            r["case"] = r.pop("id")
    elif case == "notbinary":
        rows[0]["atelectasis"] = 2
    bad = _write_csv(setup["root"] / f"bad-{case}.csv", rows)
    code, out, err = _run(["probe", "--model", str(setup["model"]), "--data", f"phantom:{N_CT}",
                           "--labels", str(bad), "--task", "pathology"], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xray2xray: error: ") and message in lines[0], err


def test_cli_risk_missing_time_column(setup, capsys):
    rows = [{k: v for k, v in r.items() if k != "time"} for r in setup["rows"]]
    bad = _write_csv(setup["root"] / "no-time.csv", rows)
    code, out, err = _run(["probe", "--model", str(setup["model"]), "--data", f"phantom:{N_CT}",
                           "--labels", str(bad), "--task", "risk"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "lacks column 'time'" in err


def test_probe_writes_calibration_ood_reference_and_diagrams(setup, capsys):
    """Issue 13: probe calibrates each logistic head on its out-of-fold logits (ECE before
    and after reported), fits the OOD reference on the same features and sets its threshold
    to the 99th percentile of the --heldout CTs' scores, and writes reliability diagrams."""
    from XrayWorldModel.data import resolve_source
    from XrayWorldModel.probe.acquisition import render_acquired_views
    from XrayWorldModel.probe.features import extract_features
    from XrayWorldModel.probe.ood import scores
    from XrayWorldModel.weights import load_world_model, read_card
    root = setup["root"] / "trust"
    saved = root / "calibrated.safetensors"
    code, out, err = _run(["probe", "--model", str(setup["model"]), "--data", f"phantom:{N_CT}",
                           "--labels", str(setup["labels"]), "--task", "pathology",
                           "--folds", "3", "--bootstrap", "20", "--C", "1", "--views", "2",
                           "--heldout", "phantom:12:100", "--save-into", str(saved)], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["metrics"]["n"] == N_CT and res["metrics"]["n_views"] == 2 * N_CT
    assert set(res["calibration"]["labels"]) == set(PATHOLOGIES)
    for v in res["calibration"]["labels"].values():
        assert 0 <= v["ece_after"] <= 1 and 0 <= v["ece_before"] <= 1
    assert Path(res["diagrams"]["cv"]).is_file() and Path(res["diagrams"]["cv"]).stat().st_size > 1000
    card = read_card(saved)
    head = card["heads"]["pathology"]["heads"][0]
    assert head["calibration"]["method"] == "platt" and len(head["calibration"]["a"]) == 5
    ood = card["ood"]
    assert ood["n"] == 2 * N_CT and ood["fitted_on"]["n"] == N_CT      # views, CTs
    assert ood["features"]["n_features"] == 32 and len(ood["components"]) <= 32
    # the threshold: recompute the held-out views the way probe makes them (seed + 1)
    model, _ = load_world_model(saved)
    images, ids, groups = render_acquired_views(resolve_source("phantom:12:100"), card, 2, seed=1)
    s = scores(ood, extract_features(model, images, 0.0, [90.0]))
    assert len(ids) == 12 and ood["threshold"] == pytest.approx(np.quantile(s, 0.99), rel=1e-6)
    assert res["heldout"]["n"] == 12 and res["ood"]["threshold"] == ood["threshold"]


def test_acquisitions_are_seeded_and_go_through_the_inference_preprocessing(setup):
    """Each CT is seen through N different acquisitions (shift, tilt, detector, display),
    the same ones for the same seed; views of one CT share its group."""
    from XrayWorldModel.data import resolve_source
    from XrayWorldModel.probe.acquisition import render_acquired_views
    from XrayWorldModel.weights import read_card
    card = read_card(setup["model"])
    items = resolve_source("phantom:2")
    a, ids, groups = render_acquired_views(items, card, 3, seed=7)
    b, _, _ = render_acquired_views(items, card, 3, seed=7)
    c, _, _ = render_acquired_views(items, card, 3, seed=8)
    assert a.shape == (6, 1, 32, 32) and ids == ["phantom-00000", "phantom-00001"]
    assert groups.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a[0], a[1])              # two acquisitions of one CT differ
    assert np.isfinite(a).all() and a.min() >= -0.5 and a.max() > 1.0


def test_averaged_head_is_the_mean_of_its_fold_heads_logits():
    """The stored head of a label is one linear map whose logit equals the mean of the K
    fold heads' logits on any features (each fold head standardised on its own folds)."""
    from XrayWorldModel.probe.evaluate import cv_logistic
    from XrayWorldModel.probe.heads import average_logistic, linear_predictor
    X, Y, _ = _logistic_data(200, seed=4)
    labels = [f"y{j}" for j in range(Y.shape[1])]
    folds = {}
    cv_logistic(X, Y, labels, folds=4, C=1.0, fold_heads=folds)
    head = average_logistic(folds, labels, X)
    new = np.random.default_rng(9).normal(size=(13, X.shape[1])) * 3
    for j, name in enumerate(labels):
        assert len(folds[name]) == 4
        expected = np.mean([linear_predictor(h, new)[:, 0] for h in folds[name]], axis=0)
        np.testing.assert_allclose(linear_predictor(head, new)[:, j], expected, rtol=1e-9, atol=1e-9)
    assert head["cross_fitted"] == 4


def test_bootstrap_resamples_patients_not_their_images():
    """Five near-copies of each patient's image: resampling images treats them as five
    independent cases and narrows the CI about sqrt(5)-fold; resampling patients gives the
    width of one image per patient. Oracle: the CI on one image per patient."""
    from XrayWorldModel.probe.metrics import c_index_ci, multilabel_auroc_ci
    rng = np.random.default_rng(3)
    n_pat, copies = 60, 5
    y = (rng.random(n_pat) < 0.5).astype(float)
    s = y + rng.normal(0, 1.0, n_pat)
    patients = np.repeat(np.arange(n_pat), copies)
    Y = np.repeat(y, copies)[:, None]
    S = (np.repeat(s, copies) + rng.normal(0, 1e-3, n_pat * copies))[:, None]
    width = lambda r: r["ci95"][1] - r["ci95"][0]
    one = width(multilabel_auroc_ci(y[:, None], s[:, None], ["a"], 2000, 0)["labels"]["a"])
    rows = width(multilabel_auroc_ci(Y, S, ["a"], 2000, 0)["labels"]["a"])
    grouped = width(multilabel_auroc_ci(Y, S, ["a"], 2000, 0, clusters=patients)["labels"]["a"])
    assert 0.75 < grouped / one < 1.33 and rows / one < 0.6
    t = np.repeat(rng.exponential(5.0, n_pat), copies)
    e = np.repeat(rng.random(n_pat) < 0.7, copies)
    risk = -np.log(t) + rng.normal(0, 1.0, t.size)
    c_one = width(c_index_ci(t[::copies], e[::copies], risk[::copies], 1000, 0))
    c_rows = width(c_index_ci(t, e, risk, 1000, 0))
    c_grouped = width(c_index_ci(t, e, risk, 1000, 0, clusters=patients))
    assert c_rows / c_grouped < 0.7 and c_grouped > 0.6 * c_one

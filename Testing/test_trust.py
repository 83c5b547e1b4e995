"""Outputs a clinician-researcher can trust (issue 13): the out-of-distribution score, the
trust verdict and the gating of scores, calibration, honest precision, and the end-to-end
cases: a PA DRR of an abdomen/pelvis is flagged with its scores withheld, a chest is not."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from XrayWorldModel.cli import main
from XrayWorldModel.conventions import PROBABILITY_FLOOR, clip_probability, format_probability
from XrayWorldModel.infer.trust import (MIN_CONSISTENCY, NO_REFERENCE, output_scores,
                                        score_lines, verdict)
from XrayWorldModel.probe.calibration import (calibrate_labels, cross_fitted, ece, fit_platt,
                                              reliability, sigmoid)
from XrayWorldModel.probe.ood import check_reference, fit_reference, scores, set_threshold

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (test extra) validates results.json")


# ----------------------------------------------------------------------------- OOD score
def _cohort(n=300, f=24, seed=0):
    """Cases of one distribution (``seed`` draws the cases, not the distribution): features
    with four strong directions and small isotropic noise, like pooled latents."""
    basis = np.linalg.qr(np.random.default_rng(99).normal(size=(f, f)))[0][:, :4]
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)) * [5.0, 3.0, 2.0, 1.5] @ basis.T \
        + 0.2 * rng.normal(size=(n, f)) + 10.0, basis


def test_ood_score_is_the_mahalanobis_distance_of_the_stored_summary():
    """The score equals sqrt(z' S^-1 z) for the covariance the card's summary describes:
    the k leading eigenpairs plus the residual variance on the rest (checked with a dense
    inverse); with k = F it is the Mahalanobis distance under the Ledoit-Wolf covariance."""
    from sklearn.covariance import LedoitWolf
    X, _ = _cohort()
    test = X[:7] + np.random.default_rng(1).normal(size=(7, X.shape[1]))
    ref = fit_reference(X, n_components=6)
    V, lam = np.asarray(ref["components"]), np.asarray(ref["variances"])
    S = V.T @ np.diag(lam) @ V + ref["residual_variance"] * (np.eye(X.shape[1]) - V.T @ V)
    z = (test - np.asarray(ref["mean"])) / np.asarray(ref["scale"])
    dense = np.sqrt(np.einsum("ni,ij,nj->n", z, np.linalg.inv(S), z))
    np.testing.assert_allclose(scores(ref, test), dense, rtol=1e-4)
    full = fit_reference(X, n_components=X.shape[1])
    Z = (X - X.mean(0)) / X.std(0)
    lw = LedoitWolf(assume_centered=True).fit(Z)
    np.testing.assert_allclose(scores(full, test) ** 2, lw.mahalanobis(z), rtol=1e-4)


def test_residual_term_sees_a_shift_the_leading_components_never_varied_along():
    """A case moved off the cohort's subspace is flagged: the residual term carries it."""
    X, basis = _cohort()
    ref = set_threshold(fit_reference(X, n_components=4), _cohort(seed=2)[0])
    rng = np.random.default_rng(3)
    off = np.linalg.qr(np.c_[basis, rng.normal(size=(X.shape[1], 1))])[0][:, -1]   # orthogonal
    case = X[:1] + 3.0 * off          # 3 units: small next to the cohort's spread (5, 3, 2)
    assert scores(ref, case)[0] > ref["threshold"] > scores(ref, X[:1])[0]
    # the leading components alone would let it through
    no_residual = set_threshold(dict(ref, residual_variance=0.0), _cohort(seed=2)[0])
    assert scores(no_residual, case)[0] < no_residual["threshold"]


def test_threshold_is_the_99th_percentile_of_held_out_scores():
    X, _ = _cohort()
    held = _cohort(n=500, seed=5)[0]
    ref = set_threshold(fit_reference(X), held)
    s = scores(ref, held)
    assert ref["threshold"] == pytest.approx(np.quantile(s, 0.99))
    assert np.mean(s > ref["threshold"]) <= 0.011
    assert ref["heldout"]["n"] == 500
    # fresh in-domain cases: about 1 % above it; a reference without threshold is not usable
    fresh = scores(ref, _cohort(n=2000, seed=6)[0])
    assert np.mean(fresh > ref["threshold"]) < 0.03
    assert check_reference(fit_reference(X)) is None and check_reference(ref) is not None
    assert check_reference({"format": "something else"}) is None


# ----------------------------------------------------------------------------- calibration
def test_platt_recovers_the_true_calibration_map():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, 20000)
    y = rng.random(z.size) < sigmoid(0.4 * z - 0.8)
    cal = fit_platt(z, y)
    assert cal["a"] == pytest.approx(0.4, abs=0.03) and cal["b"] == pytest.approx(-0.8, abs=0.05)


def test_ece_matches_a_hand_computation_and_separates_calibrated_from_overconfident():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.05, 0.15, 0.15, 0.95, 0.99])
    # bins: [0, 0.1) -> {0.05: y 0}; [0.1, 0.2) -> {0.15, 0.15: y 0, 1}; [0.9, 1] -> {0.95, 0.99: 1, 1}
    hand = (1 * abs(0 - 0.05) + 2 * abs(0.5 - 0.15) + 2 * abs(1 - 0.97)) / 5
    assert ece(y, p) == pytest.approx(hand)
    assert reliability(y, p)["count"][1] == 2
    rng = np.random.default_rng(1)
    q = rng.random(20000)
    truth = rng.random(q.size) < q
    assert ece(truth, q) < 0.02
    assert ece(truth, np.clip((q - 0.5) * 3 + 0.5, 0, 1)) > 0.1      # over-confident


def test_calibration_of_out_of_fold_logits_lowers_the_ece_honestly():
    """Over-confident logits (3x too large): Platt scaling fitted out of fold brings the
    cross-fitted ECE down, and the stored slope undoes the inflation."""
    rng = np.random.default_rng(2)
    true = rng.normal(0, 1.5, (2000, 2))
    Y = (rng.random(true.shape) < sigmoid(true)).astype(float)
    cal = calibrate_labels(3.0 * true - 1.0, Y, ["a", "b"])
    for j in range(2):
        assert cal["ece_after"][j] < 0.03 < cal["ece_before"][j]
        assert cal["a"][j] == pytest.approx(1 / 3, rel=0.15)
    assert cal["method"] == "platt" and cal["fitted_on"] == "out-of-fold logits"
    groups = np.repeat(np.arange(1000), 2)
    p = cross_fitted(3.0 * true[:, 0] - 1.0, Y[:, 0], groups=groups)
    assert p.shape == (2000,) and ece(Y[:, 0], p) < 0.03


# ----------------------------------------------------------------------------- precision
def test_probabilities_are_never_shown_or_stored_as_zero_or_one():
    for p in [0.0, 1e-9, 0.004, 0.0099, 0.01, 0.37, 0.99, 0.994, 0.995, 0.9999, 1.0]:
        text = format_probability(p)
        assert text not in ("0.00", "1.00", "0.000", "1.000", "0", "1")
        assert PROBABILITY_FLOOR <= clip_probability(p) <= 1 - PROBABILITY_FLOOR
    assert format_probability(0.9951) == "> 0.99" and format_probability(0.001) == "< 0.01"
    assert format_probability(0.456) == "0.46" and format_probability(None) == "n/a"


# ----------------------------------------------------------------------------- verdict
RAW = {"risk": 0.99995, "risk_logit": 9.9, "risk_details": {"hazard_ratio": 3.0,
                                                          "event_probability_at_horizon": 1.0},
       "pathologies": {"edema": 1.0, "cardiomegaly": 0.2}, "calibrated": True,
       "pathology_logits": {"edema": 40.0, "cardiomegaly": -1.386}}


def test_verdict_combines_ood_score_consistency_and_input_checks():
    ok = verdict({"score": 5.0, "threshold": 9.0}, 0.95)
    assert ok["in_distribution"] and ok["reasons"] == [] and ok["reference"]
    far = verdict({"score": 30.0, "threshold": 9.0}, 0.95)
    assert not far["in_distribution"] and "OOD score 30.0 > threshold 9.0" in far["reasons"][0]
    bad = verdict({"score": 5.0, "threshold": 9.0}, MIN_CONSISTENCY - 0.01)
    assert not bad["in_distribution"] and "consistency" in bad["reasons"][0]
    mirrored = verdict({"score": 5.0, "threshold": 9.0}, 0.95, ["the radiograph looks mirrored"])
    assert not mirrored["in_distribution"] and "mirrored" in mirrored["reasons"][0]
    # an old model file: no reference, so the consistency score alone decides, and it says so
    old_ok, old_bad = verdict(None, 0.95), verdict(None, 0.3)
    assert old_ok["in_distribution"] and old_ok["reasons"] == [NO_REFERENCE]
    assert not old_bad["in_distribution"] and NO_REFERENCE in old_bad["reasons"]
    assert old_ok["ood_score"] is None and old_ok["reference"] is False


def test_out_of_distribution_scores_are_withheld_unless_forced():
    trust = verdict({"score": 30.0, "threshold": 9.0}, 0.95)
    held = output_scores(RAW, trust)
    assert all(held[k] is None for k in ("risk", "risk_logit", "risk_details", "pathologies",
                                        "pathology_logits"))
    assert held["withheld"].startswith("out of distribution") and "OOD score" in held["withheld"]
    lines = score_lines({"trust": trust, "scores": held})
    assert len(lines) == 1 and lines[0].startswith("scores withheld") and not re.search(r"\d\.\d{3}", lines[0])
    forced = output_scores(RAW, trust, force=True, note="demo")
    assert forced["withheld"] is None and forced["forced"] and forced["out_of_distribution"]
    assert forced["pathologies"]["edema"] == 1 - PROBABILITY_FLOOR
    assert forced["pathology_logits"]["edema"] == 40.0           # the raw logit beside it
    assert forced["risk_details"]["event_probability_at_horizon"] == 1 - PROBABILITY_FLOOR
    text = "\n".join(score_lines({"trust": trust, "scores": forced}))
    assert "OUT OF DISTRIBUTION" in text and "> 0.99" in text and "0.20" in text and "demo" in text
    assert "1.000" not in text and "0.000" not in text
    shown = output_scores(RAW, verdict({"score": 5.0, "threshold": 9.0}, 0.95))
    assert shown["withheld"] is None and not shown["forced"] and not shown["out_of_distribution"]
    assert shown["pathologies"]["cardiomegaly"] == 0.2


# ----------------------------------------------------------------------------- end to end
def _drr_dicom(volume, work: Path, name: str) -> Path:
    """``xray2xray drr CT --out STACK --angles 0 --dicom``: the PA DX DICOM of a CT file."""
    from XrayWorldModel.io import write_volume
    from XrayWorldModel.io.drr_stack import dicom_dir
    ct = write_volume(volume, work / f"{name}.nii.gz")
    stack = work / f"{name}-drr.nii.gz"
    assert main(["drr", str(ct), "--out", str(stack), "--angles", "0", "--dicom",
                 "--device", "cpu"]) == 0
    dicoms = sorted(dicom_dir(stack).glob("*.dcm"))
    assert len(dicoms) == 1
    return dicoms[0]


def _infer(dicom: Path, out: Path, capsys, *extra) -> dict:
    capsys.readouterr()
    assert main(["infer", str(dicom), "--out", str(out), "--volume-size", "32",
                 "--uncertainty", "0", "--views", "90", *extra]) == 0
    data = json.loads((out / "results.json").read_text())
    from XrayWorldModel.infer.outputs import load_schema
    jsonschema.validate(data, load_schema())
    data["stdout"] = capsys.readouterr().out
    return data


@pytest.fixture(scope="module")
def builtin_has_reference():
    """The shipped model carries an OOD reference with its threshold (tools/build_demo.py)."""
    from XrayWorldModel.weights.model_file import read_card
    from XrayWorldModel.weights.registry import resolve_model
    card = read_card(resolve_model(None))
    assert check_reference(card.get("ood")) is not None, "the built-in model has no OOD reference"
    return card


def test_abdomen_drr_is_flagged_and_a_chest_drr_is_not(tmp_path, capsys, builtin_has_reference):
    """Acceptance: a PA DRR of a synthetic abdomen/pelvis, written by ``xray2xray drr
    --dicom`` and given to ``xray2xray infer``, is out of distribution with its scores
    withheld; the same commands on a chest phantom the model never saw keep the scores."""
    from XrayWorldModel.phantom.abdomen import procedural_abdomen
    from XrayWorldModel.phantom import procedural_chest
    dicom = _drr_dicom(procedural_abdomen(7), tmp_path, "abdomen")
    abdomen = _infer(dicom, tmp_path / "a", capsys)
    t, s = abdomen["trust"], abdomen["scores"]
    assert t["in_distribution"] is False and t["ood_score"] > t["ood_threshold"]
    assert any("OOD score" in r for r in t["reasons"])
    assert s["pathologies"] is None and s["risk"] is None and "OOD score" in s["withheld"]
    assert "scores withheld" in abdomen["stdout"] and "pathologies:" not in abdomen["stdout"]
    assert (tmp_path / "a" / "volume.nii.gz").is_file()            # still written
    # report.png says the same: the verdict and "withheld" with the reason, no numbers
    from XrayWorldModel.infer import run_inference
    from XrayWorldModel.infer.demo import render_report, report_lines
    from XrayWorldModel.io import read_cxr
    result = run_inference(read_cxr(dicom), None, views=(90,), volume_size=24, uncertainty=0)
    lines = report_lines(result)
    assert any(line.startswith("scores withheld: out of distribution") for line in lines)
    assert not any(line.startswith(("pathologies:", "cardiovascular risk ")) for line in lines)
    png = render_report(tmp_path / "report.png", result, result.model_input.image, None, "abdomen")
    assert png.stat().st_size > 1000
    chest = _infer(_drr_dicom(procedural_chest(90210), tmp_path, "chest"), tmp_path / "c", capsys)
    assert chest["trust"]["in_distribution"] is True, chest["trust"]
    assert chest["trust"]["ood_score"] < chest["trust"]["ood_threshold"] < t["ood_score"]
    assert chest["scores"]["withheld"] is None and set(chest["scores"]["pathologies"])
    assert "pathologies:" in chest["stdout"] and "trust: in distribution" in chest["stdout"]


def test_abdomen_phantom_has_no_lungs_and_the_pelvis():
    from XrayWorldModel.phantom.abdomen import ABDOMEN_LABELS, procedural_abdomen
    vol, lab = procedural_abdomen(3, shape=(64, 64, 48), spacing=(5.6, 5.6, 7.0), return_labels=True)
    names = {ABDOMEN_LABELS[v] for v in np.unique(lab.array) if v}
    assert {"liver", "bowel_gas", "spine", "pelvis", "femur"} <= names
    body = lab.array > 0
    assert np.mean(vol.array[body] < -700) < 0.08          # gas pockets only, no lung fields
    again = procedural_abdomen(3, shape=(64, 64, 48), spacing=(5.6, 5.6, 7.0))
    np.testing.assert_array_equal(vol.array, again.array)
    # patient's right (-x in LPS) holds the liver
    liver = np.argwhere(lab.array == 2)
    assert (liver[:, 0] < 32).mean() > 0.8


def test_real_radiograph_verdict_and_honest_precision(tmp_path, capsys, shared_data,
                                                      builtin_has_reference):
    """Acceptance: the shared real CR with the built-in model: the verdict and its reasons
    are in results.json; no probability is printed as 1.000 or 0.000, forced or not."""
    cr = shared_data / "chest_cr_pa.dcm"
    data = _infer(cr, tmp_path / "cr", capsys)
    t = data["trust"]
    assert t["reference"] is True and t["reasons"] and t["ood_score"] is not None
    assert t["in_distribution"] == (t["ood_score"] <= t["ood_threshold"]
                                    and t["consistency"] >= t["min_consistency"])
    forced = _infer(cr, tmp_path / "cr-forced", capsys, "--force-scores")
    for text in (data["stdout"], forced["stdout"]):
        assert not re.search(r"\b[01]\.000\b", text)
    assert forced["scores"]["pathologies"] is not None
    assert all(1e-3 <= p <= 1 - 1e-3 for p in forced["scores"]["pathologies"].values())


def test_noise_is_refused_before_the_model_is_loaded(tmp_path):
    """check_radiograph runs first in run_inference: a noise image fails as noise even with
    a model that does not exist."""
    from XrayWorldModel.errors import NotARadiographError
    from XrayWorldModel.infer import run_inference
    from XrayWorldModel.radiograph import Radiograph
    noise = Radiograph(np.random.default_rng(0).random((128, 128)), (1.0, 1.0), "PA")
    with pytest.raises(NotARadiographError, match="noise"):
        run_inference(noise, model=str(tmp_path / "missing.safetensors"))
    tiny = Radiograph(np.ones((8, 8)), (1.0, 1.0), "PA")
    with pytest.raises(NotARadiographError, match="too small"):
        run_inference(tiny, model=str(tmp_path / "missing.safetensors"))


def test_drr_dicom_reads_back_as_the_acquisitions_the_heads_were_fitted_on(tmp_path):
    """``xray2xray drr --dicom`` then the inference preprocessing gives the model input the
    probe's acquisition of the same CT at the same detector gives (the heads, calibration
    and OOD reference are fitted on those): the DICOM's window is read as written."""
    from dataclasses import replace
    from XrayWorldModel.config import TrainConfig
    from XrayWorldModel.drr import DRRRenderer
    from XrayWorldModel.geometry import ProjectionGeometry
    from XrayWorldModel.infer.domain import to_model_input
    from XrayWorldModel.io import read_cxr
    from XrayWorldModel.phantom import procedural_chest
    from XrayWorldModel.probe.acquisition import Acquisition, acquired_view
    from XrayWorldModel.weights.model_file import read_card
    from XrayWorldModel.weights.registry import resolve_model
    card = read_card(resolve_model(None))
    sampling = replace(TrainConfig.from_dict(card["config"]).views, noise_std=0.0)
    vol = procedural_chest(11)
    rad = read_cxr(_drr_dicom(vol, tmp_path, "chest"))
    g = ProjectionGeometry(angles=(0.0,), detector_shape=(256, 256), pixel_spacing=(1.6, 1.6),
                           isocenter=tuple(vol.center))
    drr = DRRRenderer(vol, "fast", "cpu", sampling.mu_water).render(g)[0]
    np.testing.assert_allclose(rad.image, np.clip(drr / np.percentile(drr, 99.5), 0, 1), atol=2e-3)
    acq = Acquisition((0.0, 0.0, 0.0), 0.0, 1.0, 1.6, 256, 1.0, 0)
    simulated = acquired_view(vol, sampling, acq, card["domain"])
    assert np.abs(to_model_input(rad, sampling, card["domain"]).image - simulated).mean() < 0.02


def test_recalibration_on_held_out_cases_recovers_the_true_platt_map():
    """With a small labelled held-out cohort (under ISOTONIC_MIN_CASES CTs), each logistic
    head's Platt map is refitted on the head's own logits for those CTs (in place): an
    over-confident head (logits 2.5x too large, shifted) gets slope ~0.4 and the
    cross-fitted ECE after is small."""
    from XrayWorldModel.probe.heads import fit_logistic, linear_predictor
    from XrayWorldModel.probe.heldout import recalibrate
    rng = np.random.default_rng(4)
    X = rng.normal(size=(3000, 6))
    truth = 1.2 * X[:, 0] - 0.8 * X[:, 1]
    y = (rng.random(3000) < sigmoid(truth)).astype(float)
    head = fit_logistic(X[:500], y[:500, None], ["a"], C=1.0)
    z = linear_predictor(head, X)[:, 0]
    head["coef"] = [list(np.asarray(head["coef"][0]) * 2.5)]      # make it over-confident
    head["intercept"] = [head["intercept"][0] * 2.5 + 1.0]
    head["calibration"] = {"method": "platt", "a": [1.0], "b": [0.0]}
    entry = {"heads": [head]}
    groups = np.repeat(np.arange(250), 10)                         # ten views per CT
    report = recalibrate(entry, X[500:], groups, y[500:, None], ["a"], "held-out test")
    cal = head["calibration"]
    assert cal["method"] == "platt"
    np.testing.assert_allclose(cal["a"][0] * 2.5, fit_platt(z[500:], y[500:])["a"], rtol=1e-3)
    assert cal["a"][0] == pytest.approx(0.4, abs=0.06)
    assert report["a"]["ece_before"] > 0.1 > 0.03 > report["a"]["ece_after"]
    assert report["a"]["n"] == 250 and cal["fitted_on"].startswith("held-out cohort")


def test_a_large_held_out_cohort_gets_an_isotonic_map_where_a_sigmoid_cannot_fit():
    """A head whose true probability is not a sigmoid of its logit (flat in the middle,
    steep at the ends), with ISOTONIC_MIN_CASES CTs or more: the map becomes isotonic, its
    cross-fitted ECE is below Platt's on the same logits, and the shown probability is the
    interpolated step (oracle: np.interp of the stored steps), monotone in the logit and
    never 0 or 1."""
    from XrayWorldModel.probe.calibration import ISOTONIC_MIN_CASES, P_MIN
    from XrayWorldModel.probe.heads import apply_heads, fit_logistic, linear_predictor
    from XrayWorldModel.probe.heldout import recalibrate
    rng = np.random.default_rng(5)
    X = rng.normal(size=(4500, 4))
    s = X[:, 0]
    truth = np.clip(0.5 + 0.45 * np.sign(s) * np.abs(s) ** 3 / 8, 0.02, 0.98)
    y = (rng.random(len(s)) < truth).astype(float)
    head = fit_logistic(X[:500], y[:500, None], ["a"], C=1.0)
    head["calibration"] = {"method": "platt", "a": [1.0], "b": [0.0]}
    n_cts = 500
    assert n_cts >= ISOTONIC_MIN_CASES
    groups = np.repeat(np.arange(n_cts), 8)                        # eight views per CT
    report = recalibrate({"heads": [head]}, X[500:], groups, y[500:, None], ["a"], "test")
    cal = head["calibration"]
    assert cal["method"] == "isotonic" and "a" not in cal and len(cal["x"][0]) > 3
    z = linear_predictor(head, X[500:])[:, 0]
    platt = cross_fitted(z, y[500:], groups=groups)
    assert report["a"]["ece_after"] < 0.03 and report["a"]["ece_after"] < ece(y[500:], platt) - 0.01
    probe_x = rng.normal(size=(200, 4)) * 3
    shown = apply_heads(head, probe_x)["a"]
    zp = linear_predictor(head, probe_x)[:, 0]
    np.testing.assert_allclose(shown, np.interp(zp, cal["x"][0], cal["y"][0]), rtol=1e-9)
    order = np.argsort(zp)
    assert np.all(np.diff(shown[order]) >= -1e-12)
    assert shown.min() >= P_MIN and shown.max() <= 1 - P_MIN


def test_shown_probabilities_are_the_heads_platt_calibrated_ones():
    """Oracle from the head's JSON alone: standardise, dot the coefficients, add the
    intercept, then the label's Platt map ``a * z + b`` and the logistic function."""
    from XrayWorldModel.probe.heads import apply_heads, fit_logistic
    rng = np.random.default_rng(7)
    X = rng.normal(size=(300, 5))
    Y = (rng.random((300, 2)) < sigmoid(X[:, :2] @ np.array([[1.5, -0.5], [0.3, 2.0]]))).astype(float)
    head = fit_logistic(X, Y, ["a", "b"], C=1.0)
    head["calibration"] = {"method": "platt", "a": [0.4, 1.7], "b": [-0.8, 0.3]}
    x = rng.normal(size=(6, 5))
    z = ((x - np.asarray(head["mean"])) / np.asarray(head["scale"])) @ np.asarray(head["coef"]).T \
        + np.asarray(head["intercept"])
    expected = 1.0 / (1.0 + np.exp(-(z * [0.4, 1.7] + [-0.8, 0.3])))
    out = apply_heads(head, x)
    np.testing.assert_allclose(np.stack([out["a"], out["b"]], axis=1), expected, rtol=1e-9)


def test_calibration_maps_refuse_a_single_class_in_one_line():
    from XrayWorldModel.probe.calibration import fit_isotonic
    from XrayWorldModel.probe.metrics import ProbeError
    z, y = np.linspace(-2, 2, 50), np.zeros(50)
    for fit in (fit_platt, fit_isotonic):
        with pytest.raises(ProbeError, match="needs both classes") as err:
            fit(z, y)
        assert "\n" not in str(err.value)

"""Measure the trust acceptance numbers of a model (issue 13) through the real commands.

    python tools/trust_acceptance.py [--model M] [--n 200] [--first-seed 52000]
                                     [--abdomen 20] [--work DIR] [--json OUT]

For each held-out cohort case (seeds ``--first-seed``.., never used to fit the heads, their
calibration or the OOD threshold: the demo model used 50000.. and 51000..):

1. ``xray2xray phantom --cohort`` writes the CT (here: :func:`write_cohort`, the same code);
2. ``xray2xray drr CT --out STACK --angles 0 --dicom`` renders its PA radiograph as a DX DICOM
   (the command's defaults: 256 x 256 pixels of 1.6 mm);
3. ``xray2xray infer DICOM --out DIR --force-scores`` runs the model on it (forced, so the
   probabilities of the few flagged cases still count in the calibration error).

Reported: the fraction flagged out of distribution (the whole verdict: OOD score,
consistency, input checks), the expected calibration error of every pathology head before
(the heads' raw logits, from ``pathology_logits`` undone through the card's calibration) and
after calibration, and AUROC; then the same pipeline on ``--abdomen`` synthetic abdomen/pelvis
CTs (:mod:`XrayWorldModel.phantom.abdomen`), every one of which should be flagged.

The ECE of 200 cases is mostly sampling noise (a perfectly calibrated head scores 0.04-0.07
there), so ``--ece-cases`` more held-out cases (default 1000, the same first seed) are also
scored without the reconstruction: each CT (built in memory, preprocessed as in training)
taken once as a random acquisition (:mod:`XrayWorldModel.probe.acquisition`, the views the
heads were fitted on), its features through the card's heads and OOD reference.

The commands run in this process (``XrayWorldModel.cli.main``), so torch is imported once.
A release script, not part of the installed package.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from XrayWorldModel.cli import main as cli  # noqa: E402
from XrayWorldModel.io import write_volume  # noqa: E402
from XrayWorldModel.io.drr_stack import dicom_dir  # noqa: E402
from XrayWorldModel.phantom.abdomen import procedural_abdomen  # noqa: E402
from XrayWorldModel.phantom.cohort import write_cohort  # noqa: E402
from XrayWorldModel.probe import PATHOLOGIES  # noqa: E402
from XrayWorldModel.probe.calibration import ece, sigmoid  # noqa: E402
from XrayWorldModel.probe.metrics import auroc  # noqa: E402
from XrayWorldModel.weights.registry import resolve_model  # noqa: E402
from XrayWorldModel.weights.model_file import read_card  # noqa: E402


def run(*args) -> None:
    """One ``xray2xray`` command, quietly; a failure stops the measurement."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = cli([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"xray2xray {' '.join(map(str, args))} failed: {err.getvalue()[-500:]}")


def infer_ct(ct: Path, work: Path, model) -> dict:
    """drr --dicom, then infer --force-scores on that DICOM: its results.json."""
    stack = work / f"{ct.name.split('.')[0]}-drr.nii.gz"
    run("drr", ct, "--out", stack, "--angles", "0", "--dicom", "--device", "cpu")
    dicom = sorted(dicom_dir(stack).glob("*.dcm"))[0]
    out = work / f"{ct.name.split('.')[0]}-infer"
    model_args = ["--model", model] if model else []
    run("infer", dicom, "--out", out, "--volume-size", "64", "--uncertainty", "0",
        "--views", "", "--force-scores", *model_args)
    return json.loads((out / "results.json").read_text())


def raw_logits(results: dict, head: dict):
    """The head's logits before a Platt map, (calibrated - b) / a; None for an isotonic map,
    whose flat steps cannot be undone (the acquisition path reports its ECE before)."""
    cal = head.get("calibration") or {}
    if cal and cal.get("method", "platt") != "platt":
        return None
    out = {}
    for j, name in enumerate(head["labels"]):
        z = results["scores"]["pathology_logits"][name]
        out[name] = (z - cal["b"][j]) / cal["a"][j] if cal else z
    return out


def cohort_report(results, labels, head) -> dict:
    flagged = [not r["trust"]["in_distribution"] for r in results]
    report = {"n": len(results), "flagged": int(sum(flagged)),
              "flagged_fraction": float(np.mean(flagged)),
              "ood_score_median": float(np.median([r["trust"]["ood_score"] for r in results])),
              "threshold": results[0]["trust"]["ood_threshold"],
              "consistency_min": float(min(r["trust"]["consistency"] for r in results)),
              "labels": {}}
    for name in PATHOLOGIES:
        y = np.array([float(lab[name]) for lab in labels])
        after = np.array([r["scores"]["pathologies"][name] for r in results])
        raw = [raw_logits(r, head) for r in results]
        report["labels"][name] = {"auroc": auroc(y, after), "ece_after": ece(y, after),
                                  "ece_before": None if raw[0] is None else
                                  ece(y, sigmoid([z[name] for z in raw]))}
    return report


def acquisition_report(model_spec, first_seed: int, n: int) -> dict:
    """OOD flags and ECE / AUROC per pathology head on ``n`` held-out cohort CTs, one random
    acquisition each, features only (no reconstruction, so no consistency score)."""
    from XrayWorldModel.config import TrainConfig
    from XrayWorldModel.data.cache import preprocess
    from XrayWorldModel.phantom.cohort import cohort_case
    from XrayWorldModel.probe.acquisition import Acquisition, acquired_view
    from XrayWorldModel.probe.features import extract_features
    from XrayWorldModel.probe.heads import calibrated_logits, linear_predictor
    from XrayWorldModel.probe.ood import scores
    from XrayWorldModel.weights.loading import load_world_model
    model, card = load_world_model(model_spec)
    cfg = TrainConfig.from_dict(card["config"])
    images, Y = [], []
    for seed in range(first_seed, first_seed + n):
        vol, labels = cohort_case(seed)
        vol = preprocess(vol, cfg.data.preprocessing())
        vol.array = vol.array.astype(np.float16).astype(np.float32)    # as the cache stores it
        rng = np.random.default_rng(np.random.SeedSequence([9, seed]))
        images.append(acquired_view(vol, cfg.views, Acquisition.draw(rng, cfg.views),
                                    card.get("domain")))
        Y.append([labels[name] for name in PATHOLOGIES])
    X = extract_features(model, np.stack(images), 0.0, card["ood"]["features"]["imagined"])
    Y = np.asarray(Y, dtype=np.float64)
    head = card["heads"]["pathology"]["heads"][0]
    raw, cal = linear_predictor(head, X), calibrated_logits(head, X)
    s = scores(card["ood"], X)
    out = {"n": n, "seeds": [first_seed, first_seed + n - 1],
           "ood_flagged_fraction": float(np.mean(s > card["ood"]["threshold"])), "labels": {}}
    for j, name in enumerate(head["labels"]):
        y = Y[:, PATHOLOGIES.index(name)]
        out["labels"][name] = {"auroc": auroc(y, raw[:, j]), "ece_before": ece(y, sigmoid(raw[:, j])),
                               "ece_after": ece(y, sigmoid(cal[:, j]))}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model name or file (default: the built-in)")
    ap.add_argument("--n", type=int, default=200,
                    help="held-out cohort cases through the real commands (default 200; 0: skip)")
    ap.add_argument("--first-seed", type=int, default=52_000)
    ap.add_argument("--abdomen", type=int, default=20, help="abdomen/pelvis phantoms (default 20)")
    ap.add_argument("--ece-cases", type=int, default=1000,
                    help="held-out cases for the acquisition-path ECE (default 1000; 0: skip)")
    ap.add_argument("--work", default="trust-acceptance")
    ap.add_argument("--json", default=None, help="also write the report here")
    args = ap.parse_args(argv)
    work = Path(args.work)
    card = read_card(resolve_model(args.model))
    head = card["heads"]["pathology"]["heads"][0]
    report = {"model": {k: card.get(k) for k in ("name", "version", "disclaimer")}}
    if args.n > 0:            # 0: the acquisition path only (another block of seeds)
        write_cohort(args.n, work / "cohort", first_seed=args.first_seed, progress=True)
        sidecars = sorted((work / "cohort").glob("cohort-*.json"))
        labels = [json.loads(p.read_text())["labels"] for p in sidecars]
        results = [infer_ct(p.with_suffix("").with_suffix(".nii.gz"), work / "runs", args.model)
                   for p in sidecars]
        report = {"model": results[0]["model"], "cohort": cohort_report(results, labels, head)}
    abdomen = []
    for seed in range(args.abdomen):
        ct = write_volume(procedural_abdomen(seed), work / "abdomen" / f"abdomen-{seed:03d}.nii.gz")
        r = infer_ct(Path(ct), work / "runs", args.model)
        abdomen.append({"seed": seed, "in_distribution": r["trust"]["in_distribution"],
                        "ood_score": r["trust"]["ood_score"], "reasons": r["trust"]["reasons"]})
    if args.ece_cases:
        report["acquisitions"] = acquisition_report(resolve_model(args.model), args.first_seed,
                                                    args.ece_cases)
    report["abdomen"] = {"n": len(abdomen), "flagged": sum(not a["in_distribution"] for a in abdomen),
                         "ood_score_min": min((a["ood_score"] for a in abdomen), default=None),
                         "cases": abdomen}
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

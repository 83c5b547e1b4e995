"""A probe on a radiograph dataset, end to end (``xray2xray probe --data`` a radiograph
folder, manifest or NIH / CheXpert / MIMIC label file): images and labels
(:mod:`.datasets`) -> features through the inference path, cached (:mod:`.radiograph_features`)
-> patient-grouped cross-validated heads, their calibration and the OOD reference
(:mod:`.run`, :mod:`.ood`) -> optionally an official test split -> JSON and a model file.

* **Folds by patient.** Images of one patient (NIH "Patient ID", CheXpert's
  ``patientNNNNN``, MIMIC's ``subject_id``, a manifest's ``patient_id``) stay in one fold,
  so no patient is both fitted on and scored. AUROC is over every image.
* **Test split.** With ``test_csv`` the heads fitted on the training images (cross-validated
  as above) are scored on the test images, never used to fit anything.
* **OOD threshold.** The 99th percentile of the OOD score on in-domain images never used to
  fit the reference: the ``heldout`` images when given (as for CTs), else cross-fitted:
  each patient-grouped fold scored by a reference fitted on the others.
* **Shards.** With ``shard=(I, N)`` only the features of shard I are extracted and cached;
  a run without a shard then fits from the cache.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..weights.loading import load_world_model
from . import PATHOLOGIES, RISK_LABELS
from .calibration import ece, sigmoid
from .datasets import (DatasetError, RadiographDataset, label_counts, patient_groups,
                       read_dataset, split_off_test)
from .features import DEFAULT_IMAGINED, feature_spec
from .heads import apply_head, calibrated_logits, linear_predictor
from .heldout import heldout_report
from .metrics import c_index_ci, multilabel_auroc_ci, shared_clusters
from .ood import THRESHOLD_QUANTILE, fit_reference, scores
from .radiograph_features import Extraction, extract_dataset_features
from .run import (EVENT_COLUMN, TIME_COLUMN, LabelTable, Targets, _model_id, _summary,
                  _write_all, build_targets, fit_task, parse_columns)

#: The observed angle of each projection when ``angle`` is not given.
PROJECTION_ANGLE = {"frontal": 0.0, "lateral": 90.0}


def table_of(records) -> LabelTable:
    """The records' labels as the label table :func:`.run.build_targets` checks."""
    rows, columns = {}, []
    for r in records:
        rows[r.id] = {k: ("" if math.isnan(v) else repr(float(v))) for k, v in r.labels.items()}
        columns += [k for k in r.labels if k not in columns]
    return LabelTable(rows, columns, None)


def _targets(task, records, names, time_col, event_col):
    try:
        return build_targets(task, table_of(records), [r.id for r in records],
                             [(n, n) for n in names], time_col, event_col)
    except InputError as exc:      # name the images, not "the labels CSV" of CTs
        raise DatasetError(exc.reason.replace("CTs", "images")) from None


def cross_fitted_threshold(reference: Dict[str, Any], features: np.ndarray, patients,
                           folds: int, source: str) -> Tuple[Dict[str, Any], Optional[str]]:
    """``reference`` with the 99th percentile of cross-fitted OOD scores as its threshold
    (each patient-grouped fold scored by a reference fitted on the other folds), or
    unchanged with the reason when the images are too few."""
    from sklearn.model_selection import GroupKFold
    n_groups = len(np.unique(patients))
    k = int(min(folds, n_groups))
    if len(features) < 20 or k < 2 or len(features) * (k - 1) / k < 10:
        return reference, (f"no OOD threshold: {len(features)} images are too few to "
                           "cross-fit one (give --heldout images)")
    s = np.empty(len(features))
    for tr, te in GroupKFold(k).split(features, groups=patients):
        ref = fit_reference(features[tr], n_components=len(reference["variances"]))
        s[te] = scores(ref, features[te])
    out = dict(reference)
    out.update(threshold=float(np.quantile(s, THRESHOLD_QUANTILE)),
               threshold_quantile=THRESHOLD_QUANTILE,
               heldout={"n": int(s.size), "source": f"{source} (cross-fitted over {k} "
                        "patient-grouped folds)",
                        "quantiles": {q: float(np.quantile(s, float(q)))
                                      for q in ("0.5", "0.9", "0.99")}})
    return out, None


def split_targets(task: str, records, names, time_col, event_col) -> Targets:
    """The labels of test images as they are: unlike for fitting, a label with one class in
    the test split is no error (its AUROC is null)."""
    t = Targets(task, [r.id for r in records], list(names))
    t.Y = np.array([[r.labels.get(n, math.nan) for n in names] for r in records],
                   dtype=np.float64).reshape(len(records), len(names))
    if time_col:
        time = np.array([r.labels.get(time_col, math.nan) for r in records])
        event = np.array([r.labels.get(event_col, math.nan) for r in records])
        keep = np.flatnonzero(np.isfinite(time) & np.isfinite(event))
        t.time, t.event, t.survival_rows = time[keep], event[keep].astype(bool), keep
    return t


def _finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def evaluate_test(entry: Dict[str, Any], features: np.ndarray, targets, n_boot: int,
                  seed: int, patients: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """The fitted heads of ``entry`` scored on test images: AUROC per label (bootstrap CI
    over patients when ``patients`` gives several images to one; null for a label with one
    class there) and macro, ECE of the calibrated probabilities, C-index of a Cox head."""
    out: Dict[str, Any] = {"n": len(targets.ids)}
    clusters = None if patients is None else shared_clusters(patients)
    for head in entry["heads"]:
        if head["kind"] == "logistic":
            z = linear_predictor(head, features)
            out.update(multilabel_auroc_ci(targets.Y, z, head["labels"], n_boot, seed,
                                           clusters=clusters))
            p = sigmoid(calibrated_logits(head, features))
            for j, name in enumerate(head["labels"]):
                keep = np.isfinite(targets.Y[:, j])
                res = out["labels"][name]
                res["auroc"] = _finite(res["auroc"])
                res["ece"] = ece(targets.Y[keep, j], p[keep, j]) if keep.any() else None
            out["macro_auroc"]["auroc"] = _finite(out["macro_auroc"]["auroc"])
        elif head["kind"] == "cox" and targets.time is not None and targets.event.any():
            rows = targets.survival_rows
            risk = apply_head(head, features[rows])["risk_score"]
            out["c_index"] = c_index_ci(targets.time, targets.event, risk, n_boot, seed,
                                        clusters=None if clusters is None else clusters[rows])
    return out


def _read_all(data, task, columns, labels, images, id_column, uncertain, projection,
              test_csv, time_col, event_col):
    """(training dataset, test dataset or None, label names), labels checked."""
    numeric = [c for c in (time_col, event_col if task == "risk" else None) if c]
    dataset = read_dataset(data, columns, labels, images, id_column, uncertain, projection,
                           numeric)
    test = None
    if test_csv:
        dataset, test = split_off_test(dataset, test_csv, columns, labels, images, id_column,
                                       uncertain, projection, numeric)
    names = [n for n, _ in columns]
    _targets(task, dataset.records, names, time_col, event_col)    # fails before the model
    return dataset, test, names


def _extract(records, ctx) -> Extraction:
    return extract_dataset_features(records, ctx["model"], ctx["card"], ctx["spec"],
                                    ctx["cache"], ctx["batch_size"], ctx["workers"],
                                    ctx["pixel_spacing"], ctx["projection"], ctx["progress"])


def _kept(dataset: RadiographDataset, ex: Extraction, projection: str):
    """The records whose features were extracted; an error when none were."""
    kept = [dataset.records[i] for i in ex.rows]
    if kept:
        return kept
    if ex.skipped_views and not ex.unreadable:
        raise DatasetError(f"no {'PA/AP (frontal)' if projection == 'frontal' else 'lateral'} "
                           f"images among its {len(dataset.records)} images ("
                           + ", ".join(f"{n} {v}" for v, n in ex.skipped_views.items())
                           + "): the model takes frontal chest radiographs", dataset.source)
    first = ex.unreadable[0] if ex.unreadable else ("?", "no images")
    raise DatasetError(f"none of its {len(dataset.records)} images could be read (first: "
                       f"{first[1]})", dataset.source)


def _heldout_fields(ctx, entry, ood, features, patients, names, heldout, folds):
    """The OOD threshold and held-out report: from ``heldout`` images, else cross-fitted."""
    if not heldout:
        ref, why = cross_fitted_threshold(ood, features, patients, folds, ctx["data"])
        return ref, ({"note": why} if why else {"source": ref["heldout"]["source"],
                                                 "ood_threshold": ref["threshold"]})
    read = lambda cols: read_dataset(heldout, cols, ctx["labels"], ctx["images"],
                                     ctx["id_column"], ctx["uncertain"], ctx["projection"])
    try:
        held = read(ctx["columns"])
    except DatasetError:            # unlabelled held-out images: the threshold only
        held, names = read([]), []
    ex = _extract(held.records, ctx)
    kept = [held.records[i] for i in ex.rows]
    Y = np.array([[r.labels.get(n, np.nan) for n in names] for r in kept], dtype=np.float64)
    return heldout_report(entry, ood, ex.features.astype(np.float64), np.arange(len(kept)),
                          heldout, Y if names else None, names)


def _test_fields(ctx, entry, test, task, names, time_col, event_col, n_boot, seed):
    if test is None:
        return None
    ex = _extract(test.records, ctx)
    kept = _kept(test, ex, ctx["projection"])
    targets = split_targets(task, kept, names, time_col, event_col)
    out = {"source": test.source, **evaluate_test(entry, ex.features.astype(np.float64),
                                                   targets, n_boot, seed, patient_groups(kept))}
    out["label_counts"] = label_counts(kept, names)
    out["extraction"] = ex.summary()
    return out


def _shard_only(dataset, test, ctx, shard) -> Dict[str, Any]:
    """Extract and cache shard I of N of every image (training and test); no fitting."""
    i, n = shard
    records = (dataset.records + (test.records if test else []))[i::n]
    ex = _extract(records, ctx)
    return {"shard": [i, n], "images": len(records), "extraction": ex.summary(),
            "next": "when every shard is done, run the same command without --shard: the "
                    "features come from the cache and the heads are fitted"}


def probe_radiographs(data: str, task: str, model=None, labels=None,
                      columns: Optional[Sequence[Tuple[str, str]]] = None, id_column: str = "id",
                      time_column: Optional[str] = TIME_COLUMN, event_column: str = EVENT_COLUMN,
                      folds: int = 5, imagined: Sequence[float] = DEFAULT_IMAGINED,
                      angle: Optional[float] = None, C="auto", alpha="auto", n_boot: int = 1000,
                      seed: int = 0, out=None, save_into=None, device="cpu", progress=False,
                      heldout: Optional[str] = None, diagrams=None, images=None,
                      uncertain: str = "zeros", projection: str = "frontal",
                      test_csv: Optional[str] = None, cache=None, batch_size: int = 32,
                      workers: int = 0, shard: Optional[Tuple[int, int]] = None,
                      pixel_spacing: Optional[float] = None) -> Dict[str, Any]:
    """Fit and cross-validate the heads of ``task`` on the radiographs of ``data`` (see the
    module docstring and :func:`.run.probe_task`, whose arguments these share). Returns the
    summary ``xray2xray probe`` prints: the CT probe's, plus the dataset, per-label
    prevalence and counts, the extraction counts and, with ``test_csv``, the test metrics."""
    columns = parse_columns(None, RISK_LABELS if task == "risk" else PATHOLOGIES) \
        if columns is None else list(columns)
    time_col = time_column if task == "risk" else None
    dataset, test, names = _read_all(data, task, columns, labels, images, id_column,
                                     uncertain, projection, test_csv, time_col, event_column)
    if str(device).startswith("cuda") and ":" not in str(device) and os.environ.get("LOCAL_RANK"):
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"     # torchrun: one GPU per rank
    world_model, card = load_world_model(model, device)
    angle = PROJECTION_ANGLE[projection] if angle is None else float(angle)
    spec = dict(feature_spec(world_model, angle, imagined), source="radiographs",
                projection=projection)
    ctx = {"model": world_model, "card": card, "spec": spec, "cache": cache,
           "batch_size": batch_size, "workers": workers, "pixel_spacing": pixel_spacing,
           "projection": projection, "progress": progress, "data": data, "kind": dataset.kind,
           "columns": columns, "labels": labels, "images": images, "id_column": id_column,
           "uncertain": uncertain}
    if shard is not None and shard[1] > 1:
        return _shard_only(dataset, test, ctx, shard)
    ex = _extract(dataset.records, ctx)
    kept = _kept(dataset, ex, projection)
    features = ex.features.astype(np.float64)
    targets = _targets(task, kept, names, time_col, event_column)
    patients = patient_groups(kept)
    model_id = _model_id(card)
    trained_on = {"data": data, "labels": str(Path(labels).resolve()) if labels else
                  dataset.summary()["format"], "columns": dict(columns), "model": model_id,
                  "images": len(kept), "patients": int(len(np.unique(patients)))}
    entry = fit_task(features, targets, spec, folds, seed, n_boot, C, alpha, trained_on,
                     patients=patients)
    entry["metrics"]["folds_grouped_by"] = "patient"
    ood = fit_reference(features, feature_spec=spec,
                        fitted_on={"data": data, "n": len(kept), "n_views": len(kept)})
    ood, report = _heldout_fields(ctx, entry, ood, features, patients, names, heldout, folds)
    test_report = _test_fields(ctx, entry, test, task, names, time_col, event_column, n_boot,
                               seed)
    written = _write_all(entry, ood, report, task, model, out, save_into, diagrams)
    summary = _summary(task, model_id, data, trained_on, kept, spec, entry, ood, report,
                       written)
    summary.update(dataset=dataset.summary(), label_counts=label_counts(kept, names),
                   lateral_skipped=int(dataset.skipped_views.get("lateral", 0)
                                       + ex.skipped_views.get("lateral", 0)),
                   extraction=ex.summary(), test=test_report)
    return summary

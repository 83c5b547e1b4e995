"""The probes every method goes through, and the numbers the study reports.

For one method and one label fraction: linear heads are fitted on the labelled training
cases' features (a logistic head per pathology and for the event, a ridge Cox head on the
event time; :mod:`XrayWorldModel.probe.heads`) and score the test cases. Metrics on the test
split: AUROC per pathology, their macro mean, AUROC of the event, Harrell's C-index of the
Cox risk score, each with a seeded percentile-bootstrap 95 % CI; and the paired bootstrap
difference of Xray2Xray against each other method on the same test cases.

A task that cannot be fitted (one class among the labelled cases, fewer than two events)
or scored (one class among the test cases) is reported with ``value: null`` and a ``note``.
A percentile interval that excludes its own point estimate (possible on tiny test sets) is
widened to include it and flagged ``ci_widened``.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Dict, Mapping, Optional

import numpy as np

from ..probe import PATHOLOGIES
from ..probe.heads import apply_head, fit_cox, fit_logistic
from ..probe.metrics import (ProbeError, auroc, auroc_ci, c_index, c_index_ci,
                             multilabel_auroc_ci, paired_bootstrap_test)

#: Every task of the results table, in order.
TASKS = (*PATHOLOGIES, "pathology_macro", "event", "c_index")
TASK_TITLES = {"atelectasis": "Atelectasis", "cardiomegaly": "Cardiomegaly",
               "consolidation": "Consolidation", "edema": "Edema",
               "pleural_effusion": "Pleural effusion", "pathology_macro": "Pathology (macro)",
               "event": "CV event (AUROC)", "c_index": "Time to event (C-index)"}


def _finite(x) -> Optional[float]:
    x = float(x)
    return x if math.isfinite(x) else None


def _entry(metric: str, value, ci, **extra) -> Dict[str, Any]:
    v = _finite(value)
    out: Dict[str, Any] = {"metric": metric, "value": v, "ci95": None}
    if v is not None and ci is not None:
        lo, hi = float(ci[0]), float(ci[1])
        if not lo <= v <= hi:
            lo, hi = min(lo, v), max(hi, v)
            out["ci_widened"] = True
        out["ci95"] = [lo, hi]
    out.update(extra)
    return out


def fit_and_score(X_lab: np.ndarray, labels_lab: Mapping[str, np.ndarray], X_test: np.ndarray,
                  C, cox_alpha, seed: int) -> Dict[str, Any]:
    """Test-set scores of each binary task and the Cox risk score (``None`` plus a reason
    in ``notes`` where a head cannot be fitted)."""
    scores: Dict[str, Optional[np.ndarray]] = {}
    notes: Dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # sklearn convergence chatter on tiny subsets
        for task in (*PATHOLOGIES, "event"):
            try:
                head = fit_logistic(X_lab, labels_lab[task][:, None], [task], C=C, seed=seed)
                scores[task] = apply_head(head, X_test)[task]
            except ProbeError as exc:
                scores[task], notes[task] = None, str(exc)
        try:
            head = fit_cox(X_lab, labels_lab["time"], labels_lab["event"], alpha=cox_alpha,
                           seed=seed)
            scores["c_index"] = apply_head(head, X_test)["risk_score"]
        except ProbeError as exc:
            scores["c_index"], notes["c_index"] = None, str(exc)
    return {"scores": scores, "notes": notes}


def _macro_inputs(scores, labels_test):
    Y = np.stack([labels_test[t] for t in PATHOLOGIES], axis=1)
    P = np.stack([scores[t] if scores.get(t) is not None else np.full(Y.shape[0], np.nan)
                  for t in PATHOLOGIES], axis=1)
    return Y, P


def task_metrics(fitted: Mapping[str, Any], labels_test: Mapping[str, np.ndarray],
                 n_boot: int, seed: int) -> Dict[str, Dict[str, Any]]:
    """Each task's test metric with its bootstrap CI (resamples shared by all methods: the
    same ``seed``)."""
    scores, notes = fitted["scores"], fitted["notes"]
    out: Dict[str, Dict[str, Any]] = {}
    Y, P = _macro_inputs(scores, labels_test)
    ml = multilabel_auroc_ci(Y, P, PATHOLOGIES, n_boot=n_boot, seed=seed)
    for t in PATHOLOGIES:
        r = ml["labels"][t]
        note = notes.get(t) or (None if _finite(r["auroc"]) is not None
                                else "one class among the test cases")
        out[t] = _entry("auroc", r["auroc"], r["ci95"], n_pos=r["n_pos"], n_neg=r["n_neg"],
                        **({"note": note} if note else {}))
    if all(scores.get(t) is not None for t in PATHOLOGIES):
        out["pathology_macro"] = _entry("auroc", ml["macro_auroc"]["auroc"],
                                        ml["macro_auroc"]["ci95"])
    else:
        out["pathology_macro"] = _entry("auroc", float("nan"), None,
                                        note="not every pathology head could be fitted")
    y = labels_test["event"]
    if scores.get("event") is not None:
        r = auroc_ci(y, scores["event"], n_boot=n_boot, seed=seed)
        out["event"] = _entry("auroc", r["auroc"], r["ci95"], n_pos=r["n_pos"], n_neg=r["n_neg"])
    else:
        out["event"] = _entry("auroc", float("nan"), None, note=notes.get("event", ""))
    if scores.get("c_index") is not None:
        r = c_index_ci(labels_test["time"], y, scores["c_index"], n_boot=n_boot, seed=seed)
        out["c_index"] = _entry("c_index", r["c_index"], r["ci95"], n_events=r["n_events"])
    else:
        out["c_index"] = _entry("c_index", float("nan"), None, note=notes.get("c_index", ""))
    return out


def _macro_auroc(Y, P) -> float:
    vals = [auroc(Y[:, j], P[:, j]) for j in range(Y.shape[1])]
    return float(np.mean(vals))


def _c_index_metric(yt, p) -> float:
    return c_index(yt[:, 0], yt[:, 1], p)


def compare(fitted_a: Mapping[str, Any], fitted_b: Mapping[str, Any],
            labels_test: Mapping[str, np.ndarray], n_boot: int, seed: int
            ) -> Dict[str, Dict[str, Any]]:
    """Per task: the paired bootstrap difference (a - b) of the metric on the same test
    cases, its 95 % CI and the two-sided p-value; ``None`` where either side is missing."""
    sa, sb = fitted_a["scores"], fitted_b["scores"]
    out: Dict[str, Dict[str, Any]] = {}

    def test(y, pa, pb, metric):
        with np.errstate(invalid="ignore"):
            r = paired_bootstrap_test(y, pa, pb, n_boot=n_boot, seed=seed, metric=metric)
        d = _finite(r["difference"])
        return {"difference": d, "ci95": r["ci95"] if d is not None else None,
                "p_value": r["p_value"] if d is not None else None, "n_boot": r["n_boot"]}

    for t in (*PATHOLOGIES, "event"):
        out[t] = (test(labels_test[t], sa[t], sb[t], auroc)
                  if sa.get(t) is not None and sb.get(t) is not None else None)
    if all(sa.get(t) is not None and sb.get(t) is not None for t in PATHOLOGIES):
        Y, Pa = _macro_inputs(sa, labels_test)
        _, Pb = _macro_inputs(sb, labels_test)
        out["pathology_macro"] = test(Y, Pa, Pb, _macro_auroc)
    else:
        out["pathology_macro"] = None
    if sa.get("c_index") is not None and sb.get("c_index") is not None:
        yt = np.stack([labels_test["time"], labels_test["event"]], axis=1)
        out["c_index"] = test(yt, sa["c_index"], sb["c_index"], _c_index_metric)
    else:
        out["c_index"] = None
    return out


def hidden_subgroups(fitted: Mapping[str, Any], labels_test: Mapping[str, np.ndarray],
                     hidden_test: Mapping[str, np.ndarray], n_boot: int, seed: int
                     ) -> Dict[str, Dict[str, Any]]:
    """The study's hypothesis, per hideable finding: AUROC of the positives the frontal view
    shows (``visible``) and of those it hides by superposition (``hidden``), each against
    all negatives, with bootstrap CIs. A volumetric representation should lose less on the
    hidden ones."""
    out: Dict[str, Dict[str, Any]] = {}
    for task, hidden in hidden_test.items():
        s = fitted["scores"].get(task)
        y = labels_test[task].astype(bool)
        out[task] = {}
        for name, pos in (("visible", y & ~hidden), ("hidden", y & hidden)):
            sel = ~y | pos
            if s is None or not pos.any():
                out[task][name] = _entry("auroc", float("nan"), None, n_pos=int(pos.sum()),
                                         note="no head" if s is None else "no such positives")
                continue
            r = auroc_ci(pos[sel], s[sel], n_boot=n_boot, seed=seed)
            out[task][name] = _entry("auroc", r["auroc"], r["ci95"], n_pos=r["n_pos"],
                                     n_neg=r["n_neg"])
    return out


def compare_hidden(fitted_a: Mapping[str, Any], fitted_b: Mapping[str, Any],
                   labels_test: Mapping[str, np.ndarray], hidden_test: Mapping[str, np.ndarray],
                   n_boot: int, seed: int) -> Dict[str, Optional[Dict[str, Any]]]:
    """Paired bootstrap difference (a - b) of the AUROC on the hidden positives against
    all negatives, per hideable finding."""
    out: Dict[str, Optional[Dict[str, Any]]] = {}
    for task, hidden in hidden_test.items():
        sa, sb = fitted_a["scores"].get(task), fitted_b["scores"].get(task)
        y = labels_test[task].astype(bool)
        sel = ~y | (y & hidden)
        if sa is None or sb is None or not (y & hidden).any():
            out[task] = None
            continue
        r = paired_bootstrap_test(y[sel], sa[sel], sb[sel], n_boot=n_boot, seed=seed)
        out[task] = {"difference": _finite(r["difference"]), "ci95": r["ci95"],
                     "p_value": r["p_value"], "n_boot": r["n_boot"]}
    return out


def roc_curve(y: np.ndarray, score: np.ndarray):
    """(false positive rate, true positive rate) of ``score`` for the binary ``y``, with
    ties stepped diagonally; from (0, 0) to (1, 1)."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    P, N = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return np.r_[0.0, fps / N], np.r_[0.0, tps / P]


__all__ = ["TASKS", "TASK_TITLES", "fit_and_score", "task_metrics", "compare", "roc_curve",
           "hidden_subgroups", "compare_hidden"]

"""What a probe's trust fields are measured on: held-out in-domain CTs, never used to fit.

:func:`heldout_report` takes the features of held-out CTs (rendered like the fitting
cohort, :mod:`.acquisition`) and

* sets the OOD threshold: the 99th percentile of their OOD scores (:mod:`.ood`);
* when they carry labels, scores the task's final heads on them: AUROC, and the expected
  calibration error of every logistic label before (the head's raw probability) and after
  its Platt calibration, with the reliability bins for the diagrams.

Labels are scored on each CT's first view (one radiograph per case, as inference sees it);
the threshold uses every view.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from .calibration import ece, reliability, reliability_diagram, sigmoid
from .heads import calibrated_logits, linear_predictor
from .metrics import auroc
from .ood import scores, set_threshold


def first_views(groups: Sequence[int]) -> np.ndarray:
    """Row of each group's (CT's) first view, in group order."""
    return np.unique(np.asarray(groups), return_index=True)[1]


def label_report(entry: Mapping[str, Any], features: np.ndarray, Y: np.ndarray,
                 labels: Sequence[str]) -> Dict[str, Any]:
    """AUROC and ECE before / after calibration of the logistic heads of task ``entry`` on
    ``features`` [N, F] with 0/1 labels ``Y`` [N, L] (NaN: missing)."""
    out: Dict[str, Any] = {}
    for head in entry.get("heads", []):
        if head.get("kind") != "logistic":
            continue
        raw, cal = linear_predictor(head, features), calibrated_logits(head, features)
        for j, name in enumerate(head["labels"]):
            if name not in labels:
                continue
            y = Y[:, list(labels).index(name)]
            keep = np.isfinite(y)
            p0, p1 = sigmoid(raw[keep, j]), sigmoid(cal[keep, j])
            out[name] = {"n": int(keep.sum()), "auroc": auroc(y[keep], raw[keep, j]),
                         "ece_before": ece(y[keep], p0), "ece_after": ece(y[keep], p1),
                         "reliability": {"before": reliability(y[keep], p0),
                                         "after": reliability(y[keep], p1)}}
    return out


def heldout_report(entry: Mapping[str, Any], reference: Mapping[str, Any],
                   features: np.ndarray, groups: Sequence[int], source: str,
                   Y: Optional[np.ndarray] = None, labels: Sequence[str] = ()
                   ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(the OOD reference with its threshold, the held-out report). ``Y`` [N_CT, L]: labels
    of the held-out CTs (None: threshold only)."""
    groups = np.asarray(groups, dtype=np.int64)
    ref = set_threshold(reference, features, source=source)
    first = first_views(groups)
    report: Dict[str, Any] = {
        "source": source, "n": int(first.size), "n_views": int(len(groups)),
        "ood_threshold": ref["threshold"],
        "ood_flagged_first_view": float(np.mean(scores(ref, features[first]) > ref["threshold"]))}
    if Y is not None and len(labels):
        report["labels"] = label_report(entry, features[first], np.asarray(Y, float), labels)
    return ref, report


def write_diagrams(folder, task: str, cv_curves: Mapping[str, Any],
                   heldout_labels: Optional[Mapping[str, Any]] = None) -> Dict[str, str]:
    """Reliability diagrams of the cross-validated (cross-fitted) calibration and, when
    given, of the held-out cases: ``reliability_<task>_cv.png`` / ``_heldout.png``."""
    folder = Path(folder).expanduser()
    written = {}
    if cv_curves:
        written["cv"] = str(reliability_diagram(
            folder / f"reliability_{task}_cv.png", cv_curves,
            f"{task}: out-of-fold predictions, before / after Platt scaling (cross-fitted)"))
    if heldout_labels:
        curves = {k: v["reliability"] for k, v in heldout_labels.items()}
        written["heldout"] = str(reliability_diagram(
            folder / f"reliability_{task}_heldout.png", curves,
            f"{task}: held-out CTs, before / after Platt scaling"))
    return written

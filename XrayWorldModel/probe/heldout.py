"""What a probe's trust fields are measured on: held-out in-domain CTs, never used to fit.

:func:`heldout_report` takes the features of held-out CTs (rendered like the fitting
cohort, :mod:`.acquisition`) and

* sets the OOD threshold: the 99th percentile of their OOD scores (:mod:`.ood`);
* when they carry labels, refits each logistic head's calibration map (isotonic, or Platt
  for a small cohort) on the head's own logits
  for them (:func:`recalibrate`) and reports AUROC and the expected calibration error of
  every label before (the head's raw probability) and after (cross-fitted within the
  held-out CTs), with the reliability bins for the diagrams.

Every view counts, grouped by CT wherever folds are drawn.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from .calibration import (ISOTONIC_MIN_CASES, cross_fitted, ece, fit_isotonic, fit_platt,
                          reliability, reliability_diagram, sigmoid)
from .heads import linear_predictor
from .metrics import auroc
from .ood import scores, set_threshold


def first_views(groups: Sequence[int]) -> np.ndarray:
    """Row of each group's (CT's) first view, in group order."""
    return np.unique(np.asarray(groups), return_index=True)[1]


def recalibrate(entry: Mapping[str, Any], features: np.ndarray, groups: np.ndarray,
                Y: np.ndarray, labels: Sequence[str], source: str) -> Dict[str, Any]:
    """Refit each logistic head's calibration map on its own logits for the held-out views
    (``features`` [N, F], ``groups`` their CTs, ``Y`` [N, L] per view), in place, and
    report per label: AUROC, the ECE before (the head's raw probabilities) and after (the
    map cross-fitted over the held-out CTs, so no CT calibrates itself) and the
    reliability bins of both. The map is isotonic when at least ``ISOTONIC_MIN_CASES`` CTs
    carry every label of the head, else Platt (:mod:`.calibration` says why).

    Why here rather than only out of fold: pooled out-of-fold logits come from K heads of
    slightly different scales, and their Platt slope measured too small for the final head
    (the mean of those K heads) on independent cohorts (for the demo model, atelectasis
    0.58 out of fold against 0.85 on two independent cohorts), so out-of-fold Platt
    scaling left it under-confident. The held-out cohort shows the final head itself on
    cases it never saw."""
    out: Dict[str, Any] = {}
    n_cts = len(np.unique(groups))
    for head in entry.get("heads", []):
        if head.get("kind") != "logistic" or "calibration" not in head:
            continue
        raw = linear_predictor(head, features)
        cal = head["calibration"]
        present = [name for name in head["labels"] if name in labels]
        method = "isotonic" if (present == list(head["labels"])
                                and n_cts >= ISOTONIC_MIN_CASES) else "platt"
        steps = {"x": [], "y": []}
        for j, name in enumerate(head["labels"]):
            if name not in labels:
                continue
            y = Y[:, list(labels).index(name)]
            keep = np.isfinite(y)
            if method == "isotonic":
                fit = fit_isotonic(raw[keep, j], y[keep])
                steps["x"].append(fit["x"])
                steps["y"].append(fit["y"])
            else:
                fit = fit_platt(raw[keep, j], y[keep])
                cal["a"][j], cal["b"][j] = fit["a"], fit["b"]
            p0 = sigmoid(raw[keep, j])
            p1 = cross_fitted(raw[keep, j], y[keep], groups=groups[keep], method=method)
            out[name] = {"n": int(len(np.unique(groups[keep]))), "n_views": int(keep.sum()),
                         "auroc": auroc(y[keep], raw[keep, j]),
                         "ece_before": ece(y[keep], p0), "ece_after": ece(y[keep], p1),
                         "reliability": {"before": reliability(y[keep], p0),
                                         "after": reliability(y[keep], p1)}}
        if method == "isotonic":
            for key in ("a", "b"):
                cal.pop(key, None)
            cal.update(method="isotonic", x=steps["x"], y=steps["y"])
        cal.update(fitted_on=f"held-out cohort logits ({source})",
                   ece_before=[out[n]["ece_before"] for n in head["labels"] if n in out],
                   ece_after=[out[n]["ece_after"] for n in head["labels"] if n in out])
    return out


def heldout_report(entry: Mapping[str, Any], reference: Mapping[str, Any],
                   features: np.ndarray, groups: Sequence[int], source: str,
                   Y: Optional[np.ndarray] = None, labels: Sequence[str] = ()
                   ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(the OOD reference with its threshold, the held-out report). ``Y`` [N_CT, L]: labels
    of the held-out CTs (None: threshold only); with them the logistic heads of ``entry``
    are recalibrated on these CTs (:func:`recalibrate`, in place)."""
    groups = np.asarray(groups, dtype=np.int64)
    ref = set_threshold(reference, features, source=source)
    first = first_views(groups)
    report: Dict[str, Any] = {
        "source": source, "n": int(first.size), "n_views": int(len(groups)),
        "ood_threshold": ref["threshold"],
        "ood_flagged_first_view": float(np.mean(scores(ref, features[first]) > ref["threshold"]))}
    if Y is not None and len(labels):
        report["labels"] = recalibrate(entry, features, groups, np.asarray(Y, float)[groups],
                                       labels, source)
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

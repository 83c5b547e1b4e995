"""How good a probe is: stratified K-fold cross-validation of the heads of :mod:`.heads`
(scikit-learn folds), giving the out-of-fold predictions that :mod:`.metrics` scores
(cross-validated AUROC per label and the macro mean, Harrell's C-index, each with a seeded
bootstrap 95% CI). Every random choice takes a ``seed``: same inputs and seed, same numbers.
"""
from __future__ import annotations

import warnings
from typing import Dict, Optional, Sequence, Union

import numpy as np

from .heads import (apply_head, check_binary, check_survival, class_counts, fit_cox,
                    fit_logistic, grouped_folds, linear_predictor)
from .metrics import ProbeError


class FoldWarning(UserWarning):
    """Fewer folds than asked for, because a class has fewer members than folds."""


# ----------------------------------------------------------------------------- CV
def _n_folds(folds: int, counts: Sequence[int], what: str) -> int:
    smallest = int(min(counts))
    if folds < 2:
        raise ProbeError(f"--folds must be at least 2, got {folds}")
    if smallest < 2:
        raise ProbeError(f"{what} has {smallest} case(s) in its smaller class; "
                         "cross-validation needs at least 2 of each")
    if smallest < folds:
        warnings.warn(f"{what}: only {smallest} cases in the smaller class, using "
                      f"{smallest} folds instead of {folds}", FoldWarning, stacklevel=3)
    return min(folds, smallest)


def cv_logistic(X, Y, labels: Sequence[str], folds: int = 5, seed: int = 0,
                C: Union[float, str] = "auto", folds_used: Optional[Dict[str, int]] = None,
                groups: Optional[np.ndarray] = None, logits: bool = False,
                fold_heads: Optional[Dict[str, list]] = None) -> np.ndarray:
    """Out-of-fold probabilities [N, L] (NaN where a label is missing): per label, stratified
    K-fold (shuffled, seeded), a logistic head fitted on the other folds scores each fold.
    ``folds_used`` (a dict) receives each label's number of folds (fewer than ``folds`` when
    a class is smaller than that). ``groups``: the CT of each row (several views of one CT
    stay in one fold); ``logits``: out-of-fold log-odds instead of probabilities (what
    calibration is fitted on); ``fold_heads`` (a dict) receives each label's K fold heads."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64).reshape(X.shape[0], -1)
    out = np.full(Y.shape, np.nan)
    for j, name in enumerate(labels):
        rows = np.flatnonzero(~np.isnan(Y[:, j]))
        y = check_binary(Y[rows, j], name)
        g = None if groups is None else np.asarray(groups)[rows]
        k = _n_folds(folds, class_counts(y, g), f"label {name!r}")
        if folds_used is not None:
            folds_used[name] = k
        for tr, te in grouped_folds(y, k, seed, g):
            head = fit_logistic(X[rows[tr]], y[tr, None], [name], C=C, seed=seed,
                                groups=None if g is None else g[tr])
            if fold_heads is not None:
                fold_heads.setdefault(name, []).append(head)
            out[rows[te], j] = linear_predictor(head, X[rows[te]])[:, 0] if logits else \
                apply_head(head, X[rows[te]])[name]
    return out


def cv_cox(X, time, event, folds: int = 5, seed: int = 0,
           alpha: Union[float, str] = "auto", folds_used: Optional[Dict[str, int]] = None,
           groups: Optional[np.ndarray] = None) -> np.ndarray:
    """Out-of-fold Cox risk scores [N] (K folds stratified on the event indicator; with
    ``groups``, whole CTs per fold)."""
    X = np.asarray(X, dtype=np.float64)
    time, event = check_survival(time, event, X.shape[0])
    counts = class_counts(event.astype(np.int64), groups)
    k = _n_folds(folds, [counts[1], max(counts[0], folds)], "the event indicator")
    if folds_used is not None:
        folds_used["c_index"] = k
    out = np.full(X.shape[0], np.nan)
    for tr, te in grouped_folds(event.astype(np.int64), k, seed, groups):
        head = fit_cox(X[tr], time[tr], event[tr], alpha=alpha, seed=seed,
                       groups=None if groups is None else np.asarray(groups)[tr])
        out[te] = apply_head(head, X[te])["risk_score"]
    return out

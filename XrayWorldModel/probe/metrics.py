"""Metrics of a probe: AUROC (Mann-Whitney) and Harrell's C-index, percentile bootstrap
CIs of them (per label and macro, over the same resampled cases) and a paired bootstrap test
of two models' AUROC on the same cases.

When several rows belong to one patient (``clusters``), a resample draws *patients* with
replacement and keeps all their rows: images of one patient are not independent, and
resampling them one by one makes a CI too narrow (with five near-copies per patient, about
sqrt(5) times too narrow).

numpy and scipy's ``rankdata``, no scikit-learn. Every random choice takes a ``seed``: same
inputs and seed, same numbers.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError

DEFAULT_BOOT = 1000
LEVEL = 0.95


class ProbeError(InputError):
    """Labels or features a probe cannot be fitted to, or a malformed head."""


# ----------------------------------------------------------------------------- metrics
def auroc(y, score) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half); NaN with a single class."""
    from scipy.stats import rankdata   # heavy (~0.5 s): not on inference's import path
    y = np.asarray(y).astype(bool).reshape(-1)
    score = np.asarray(score, dtype=np.float64).reshape(-1)
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def _pair_block(time, event, score, rows) -> Tuple[np.ndarray, np.ndarray]:
    """(comparable, concordant) [len(rows), N] for Harrell's C: pair (i, j) is comparable
    when i had an event and T_i < T_j, or T_i == T_j and j was censored (j survived at least
    as long); concordant when the risk score says i is riskier (ties count half)."""
    ti, ei, si = time[rows, None], event[rows, None], score[rows, None]
    comp = ei & ((ti < time[None]) | ((ti == time[None]) & ~event[None]))
    conc = np.where(si > score[None], 1.0, np.where(si == score[None], 0.5, 0.0))
    return comp.astype(np.float64), conc * comp


def c_index(time, event, risk_score, block: int = 1024) -> float:
    """Harrell's concordance index: the fraction of comparable pairs whose ``risk_score``
    (higher = earlier event) orders them correctly; NaN when no pair is comparable."""
    time, event, score = _survival_arrays(time, event, risk_score)
    comp = conc = 0.0
    for start in range(0, time.size, block):
        a, b = _pair_block(time, event, score, np.arange(start, min(start + block, time.size)))
        comp += a.sum()
        conc += b.sum()
    return float(conc / comp) if comp > 0 else float("nan")


def _survival_arrays(time, event, score):
    time = np.asarray(time, dtype=np.float64).reshape(-1)
    event = np.asarray(event).astype(bool).reshape(-1)
    score = np.asarray(score, dtype=np.float64).reshape(-1)
    if not time.size == event.size == score.size:
        raise ProbeError("time, event and risk score need the same length")
    return time, event, score


# ----------------------------------------------------------------------------- bootstrap
def _interval(values: np.ndarray, level: float = LEVEL) -> Optional[list]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    a = (1.0 - level) / 2.0
    return [float(np.quantile(values, a)), float(np.quantile(values, 1.0 - a))]


def resample_rows(rng: np.random.Generator, n_boot: int, n: int,
                  clusters: Optional[Sequence[int]] = None):
    """``n_boot`` bootstrap index arrays over ``n`` rows: rows drawn with replacement, or,
    given each row's cluster, whole clusters drawn with replacement (all their rows kept)."""
    if clusters is None:
        yield from rng.integers(0, n, size=(n_boot, n))
        return
    clusters = np.asarray(clusters)
    if clusters.shape[0] != n:
        raise ProbeError(f"bootstrap: {clusters.shape[0]} cluster ids for {n} rows")
    _, inverse = np.unique(clusters, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.r_[0, np.cumsum(np.bincount(inverse))]
    members = [order[starts[k]:starts[k + 1]] for k in range(len(starts) - 1)]
    for picks in rng.integers(0, len(members), size=(n_boot, len(members))):
        yield np.concatenate([members[k] for k in picks])


def shared_clusters(patients: np.ndarray) -> Optional[np.ndarray]:
    """``patients`` when some patient has several rows (the bootstrap then resamples
    patients, :func:`resample_rows`), else None (plain row resampling)."""
    patients = np.asarray(patients)
    return patients if len(np.unique(patients)) < len(patients) else None


def bootstrap_ci(stat: Callable[..., float], *arrays, n_boot: int = DEFAULT_BOOT, seed: int = 0,
                 level: float = LEVEL) -> Dict[str, Any]:
    """``stat(*arrays)`` and its percentile bootstrap CI from ``n_boot`` resamples of the
    rows (with replacement; seeded). Resamples where ``stat`` is undefined (NaN, e.g. a
    single class) are dropped; ``n_boot`` in the result counts the ones kept."""
    arrays = [np.asarray(a) for a in arrays]
    n = arrays[0].shape[0]
    rng = np.random.default_rng(seed)
    point = float(stat(*arrays))
    boots = np.array([stat(*(a[idx] for a in arrays))
                      for idx in rng.integers(0, n, size=(n_boot, n))], dtype=np.float64)
    return {"estimate": point, "ci95": _interval(boots, level),
            "n_boot": int(np.isfinite(boots).sum())}


def auroc_ci(y, score, n_boot: int = DEFAULT_BOOT, seed: int = 0) -> Dict[str, Any]:
    """AUROC with its bootstrap CI: ``{"auroc", "ci95", "n_boot", "n_pos", "n_neg"}``."""
    y = np.asarray(y).astype(bool)
    r = bootstrap_ci(auroc, y, np.asarray(score, dtype=np.float64), n_boot=n_boot, seed=seed)
    return {"auroc": r["estimate"], "ci95": r["ci95"], "n_boot": r["n_boot"],
            "n_pos": int(y.sum()), "n_neg": int((~y).sum())}


def multilabel_auroc_ci(Y, P, labels: Sequence[str], n_boot: int = DEFAULT_BOOT,
                        seed: int = 0, clusters: Optional[Sequence[int]] = None
                        ) -> Dict[str, Any]:
    """Per-label AUROC and the macro mean, each with a bootstrap CI from the *same*
    resampled cases for every label (so the macro CI accounts for their correlation).
    ``Y`` [N, L] of 0/1 with NaN for a missing label, ``P`` [N, L] scores; ``clusters``:
    each row's patient, resampled whole (:func:`resample_rows`)."""
    Y = np.asarray(Y, dtype=np.float64)
    P = np.asarray(P, dtype=np.float64)
    n = Y.shape[0]

    def per_label(idx):
        out = []
        for j in range(Y.shape[1]):
            y, p = Y[idx, j], P[idx, j]
            keep = ~np.isnan(y) & ~np.isnan(p)
            out.append(auroc(y[keep], p[keep]))
        return np.array(out)

    point = per_label(np.arange(n))
    rng = np.random.default_rng(seed)
    boots = np.stack([per_label(idx) for idx in resample_rows(rng, n_boot, n, clusters)]) \
        if n_boot else np.empty((0, Y.shape[1]))
    result = {"labels": {}}
    for j, name in enumerate(labels):
        y = Y[~np.isnan(Y[:, j]), j]
        result["labels"][name] = {"auroc": float(point[j]), "ci95": _interval(boots[:, j]),
                                  "n_pos": int(y.sum()), "n_neg": int((y == 0).sum())}
    macro = boots.mean(axis=1) if boots.size else boots[:, 0]
    result["macro_auroc"] = {"auroc": float(point.mean()), "ci95": _interval(macro)}
    return result


def c_index_ci(time, event, risk_score, n_boot: int = DEFAULT_BOOT, seed: int = 0,
               block: int = 512, clusters: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """Harrell's C with a bootstrap CI. A resample is a vector of case counts ``w``, and
    its C is ``w' CONC w / w' COMP w`` over the pair matrices, so all resamples cost a few
    matrix products instead of ``n_boot`` pair counts. ``clusters``: each row's patient,
    resampled whole (:func:`resample_rows`)."""
    time, event, score = _survival_arrays(time, event, risk_score)
    n = time.size
    rng = np.random.default_rng(seed)
    W = np.stack([np.bincount(idx, minlength=n) for idx in resample_rows(rng, n_boot, n, clusters)]
                 ).astype(np.float64) if n_boot else np.zeros((0, n))
    num = np.zeros(W.shape[0])
    den = np.zeros(W.shape[0])
    comp_all = conc_all = 0.0
    for start in range(0, n, block):
        rows = np.arange(start, min(start + block, n))
        comp, conc = _pair_block(time, event, score, rows)
        comp_all += comp.sum()
        conc_all += conc.sum()
        den += np.einsum("bn,bn->b", W[:, rows] @ comp, W)
        num += np.einsum("bn,bn->b", W[:, rows] @ conc, W)
    with np.errstate(invalid="ignore", divide="ignore"):
        boots = np.where(den > 0, num / den, np.nan)
    return {"c_index": float(conc_all / comp_all) if comp_all > 0 else float("nan"),
            "ci95": _interval(boots), "n_boot": int(np.isfinite(boots).sum()),
            "n_events": int(event.sum()), "n": int(n)}


def paired_bootstrap_test(y, p_a, p_b, n_boot: int = 2000, seed: int = 0,
                          metric: Callable[[np.ndarray, np.ndarray], float] = auroc
                          ) -> Dict[str, Any]:
    """Difference ``metric(y, p_a) - metric(y, p_b)`` on the same cases, its bootstrap CI
    (both models scored on each resample) and the two-sided p-value of no difference:
    ``min(1, 2 * min(P*(d <= 0), P*(d >= 0)))`` with add-one smoothing."""
    y, p_a, p_b = (np.asarray(v) for v in (y, p_a, p_b))
    if not y.shape[0] == p_a.shape[0] == p_b.shape[0]:
        raise ProbeError("paired bootstrap: y, p_a and p_b need the same length")
    n = y.shape[0]
    rng = np.random.default_rng(seed)
    diffs = []
    for idx in rng.integers(0, n, size=(n_boot, n)):
        diffs.append(metric(y[idx], p_a[idx]) - metric(y[idx], p_b[idx]))
    d = np.asarray(diffs, dtype=np.float64)
    d = d[np.isfinite(d)]
    k = d.size
    p = 1.0 if k == 0 else min(1.0, 2.0 * min(((d <= 0).sum() + 1) / (k + 1),
                                              ((d >= 0).sum() + 1) / (k + 1)))
    return {"difference": float(metric(y, p_a) - metric(y, p_b)), "ci95": _interval(d),
            "p_value": float(p), "n_boot": int(k)}


def paired_bootstrap(y, p_a, p_b, n_boot: int = 2000, seed: int = 0) -> float:
    """Two-sided paired bootstrap p-value that models a and b have the same AUROC on the
    cases ``y`` (see :func:`paired_bootstrap_test` for the difference and its CI)."""
    return paired_bootstrap_test(y, p_a, p_b, n_boot=n_boot, seed=seed)["p_value"]

"""Linear probe heads on frozen features: L2-regularised logistic heads (one per binary
label) and a ridge-penalised Cox proportional-hazards head, each stored as plain JSON.

Fitting uses scikit-learn (logistic) and numpy (Cox); **applying** a head needs numpy only
(:func:`apply_heads`), so inference never imports scikit-learn.

A head is a JSON object::

    {"kind": "logistic", "labels": [L names], "mean": [F], "scale": [F],
     "coef": [[F] x L], "intercept": [L], "C": [L],
     "calibration": {"method": "platt", "a": [L], "b": [L], ...}}     (optional), or
     "calibration": {"method": "isotonic", "x": [L lists], "y": [L lists], ...}
    {"kind": "cox", "name": "time_to_event", "mean": [F], "scale": [F], "coef": [F],
     "alpha": a, "horizon": t, "baseline_cumhaz": H0(t)}

Features are standardised with ``mean``/``scale`` before the linear map. A *task entry*
(what ``probe`` writes, and what a model card's ``heads`` maps task names to) wraps heads::

    {"format": "xray2xray-probe", "version": 1, "task": "pathology",
     "features": {"angle": 0.0, "imagined": [90.0], "pooling": "mean", "n_features": F},
     "heads": [head, ...], "metrics": {...}, "trained_on": {...}}

Outputs of :func:`apply_heads`: a logistic head gives each label's probability under the
label's name (calibrated: ``sigmoid(a * logit + b)`` when the head carries a Platt
``calibration``, :mod:`.calibration`); a Cox head gives ``risk_score`` (log hazard ratio against the average
training subject), ``hazard_ratio`` and ``event_probability_at_horizon``
(``1 - exp(-H0(horizon) * hazard_ratio)``, Breslow baseline, horizon = the median follow-up
of the training data).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - scikit-learn depends on threadpoolctl
    threadpool_limits = None

from ..conventions import PROBE_TASK_FORMAT as TASK_FORMAT
from .metrics import ProbeError, auroc, c_index

TASK_VERSION = 1
#: Inverse regularisation strengths tried when ``C="auto"`` (inner cross-validation).
C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 7))
#: Ridge penalties tried for the Cox head when ``alpha="auto"``.
ALPHA_GRID = tuple(float(a) for a in np.logspace(-3, 1, 5))
INNER_FOLDS = 3


def single_thread():
    """BLAS limited to one thread while fitting: probe problems are small, and threaded
    BLAS on them is 10-50x slower on a busy machine (scipy's L-BFGS spins its threads)."""
    if threadpool_limits is None:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(1)


# ----------------------------------------------------------------------------- standardise
def standardiser(X: np.ndarray) -> Dict[str, List[float]]:
    """Column means and standard deviations (1 where a column is constant)."""
    X = np.asarray(X, dtype=np.float64)
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[~(scale > 1e-12)] = 1.0
    return {"mean": mean.tolist(), "scale": scale.tolist()}


def _standardise(head: Mapping[str, Any], X: np.ndarray) -> np.ndarray:
    mean = np.asarray(head["mean"], dtype=np.float64)
    scale = np.asarray(head["scale"], dtype=np.float64)
    if X.shape[1] != mean.shape[0]:
        raise ProbeError(f"{head.get('kind', 'probe')} head expects {mean.shape[0]} features, "
                         f"got {X.shape[1]} (features from another model or another "
                         "imagined-angle setting?)")
    return (X - mean) / scale


def _as_matrix(features) -> np.ndarray:
    X = np.asarray(features, dtype=np.float64)
    if X.ndim == 1:
        X = X[None]
    if X.ndim != 2:
        raise ProbeError(f"features must be [N, F], got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ProbeError("features hold NaN or infinite values")
    return X


# ----------------------------------------------------------------------------- logistic
def check_binary(y: np.ndarray, name: str) -> np.ndarray:
    """``y`` as 0/1 integers; a :class:`ProbeError` unless it holds only 0 and 1, and both."""
    y = np.asarray(y, dtype=np.float64)
    bad = ~np.isin(y, (0.0, 1.0))
    if bad.any():
        raise ProbeError(f"label {name!r} must be 0 or 1, found {y[bad][0]:g}")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ProbeError(f"label {name!r} has a single class (all {int(y[0])}) among the "
                         f"{y.size} CTs with labels; a probe needs both 0 and 1")
    return y.astype(np.int64)


def grouped_folds(y: np.ndarray, k: int, seed: int, groups: Optional[np.ndarray] = None):
    """Stratified, shuffled, seeded K-fold (train, test) index pairs over rows with labels
    ``y``; with ``groups`` (one id per row: the CT of each view), whole groups go to one
    fold, stratified by each group's label, so views of one CT never straddle folds."""
    from sklearn.model_selection import StratifiedKFold
    y = np.asarray(y)
    cv = StratifiedKFold(k, shuffle=True, random_state=seed)
    if groups is None:
        return list(cv.split(np.zeros(len(y)), y))
    groups = np.asarray(groups)
    uniq, first = np.unique(groups, return_index=True)
    pairs = []
    for tr_g, te_g in cv.split(np.zeros(len(uniq)), y[first]):
        te = np.isin(groups, uniq[te_g])
        pairs.append((np.flatnonzero(~te), np.flatnonzero(te)))
    return pairs


def class_counts(y: np.ndarray, groups: Optional[np.ndarray]) -> np.ndarray:
    """Cases per class: rows, or groups (CTs) when views are grouped."""
    if groups is None:
        return np.bincount(y, minlength=2)
    _, first = np.unique(np.asarray(groups), return_index=True)
    return np.bincount(y[first], minlength=2)


def _logistic(C: float, warm_start: bool = False):
    from sklearn.linear_model import LogisticRegression
    return LogisticRegression(C=C, max_iter=5000, tol=1e-6, warm_start=warm_start)


def _choose_C(Z: np.ndarray, y: np.ndarray, seed: int, groups=None) -> float:
    """C with the best mean inner-CV AUROC (ties: the stronger penalty); 1 when there are
    too few of a class for inner folds. Each inner fold walks the grid from the strongest
    penalty up, warm-starting from the previous solution. ``groups``: whole CTs per fold."""
    k = min(INNER_FOLDS, int(class_counts(y, groups).min()))
    if k < 2:
        return 1.0
    grid = sorted(C_GRID)
    scores = np.zeros((k, len(grid)))
    for f, (tr, te) in enumerate(grouped_folds(y, k, seed, groups)):
        model = _logistic(grid[0], warm_start=True)
        for g, C in enumerate(grid):
            model.set_params(C=C).fit(Z[tr], y[tr])
            scores[f, g] = auroc(y[te], model.decision_function(Z[te]))
    mean = np.nanmean(scores, axis=0) if np.isfinite(scores).any() else np.zeros(len(grid))
    best = int(np.flatnonzero(mean >= np.nanmax(mean) - 1e-12)[0])
    return float(grid[best])


def fit_logistic(X, Y, labels: Sequence[str], C: Union[float, str] = "auto",
                 seed: int = 0, groups=None) -> Dict[str, Any]:
    """One L2-regularised logistic regression per column of ``Y`` ([N, L] of 0/1; NaN =
    missing, those rows are left out for that label) on standardised ``X`` [N, F].

    ``C`` is scikit-learn's inverse regularisation strength, or ``"auto"``: chosen per
    label from :data:`C_GRID` by inner stratified cross-validation on AUROC (``groups``:
    the CT of each row, so the views of one CT stay in one inner fold)."""
    X = _as_matrix(X)
    Y = np.asarray(Y, dtype=np.float64).reshape(X.shape[0], -1)
    labels = [str(n) for n in labels]
    if Y.shape[1] != len(labels):
        raise ProbeError(f"{Y.shape[1]} label columns but {len(labels)} label names")
    head = {"kind": "logistic", "labels": labels, **standardiser(X)}
    Z = _standardise(head, X)
    coefs, intercepts, Cs = [], [], []
    for j, name in enumerate(labels):
        keep = ~np.isnan(Y[:, j])
        y = check_binary(Y[keep, j], name)
        with single_thread():
            g = None if groups is None else np.asarray(groups)[keep]
            c = _choose_C(Z[keep], y, seed, g) if C == "auto" else float(C)
            model = _logistic(c).fit(Z[keep], y)
        coefs.append(model.coef_[0].tolist())
        intercepts.append(float(model.intercept_[0]))
        Cs.append(c)
    head.update(coef=coefs, intercept=intercepts, C=Cs)
    return head


def average_logistic(fold_heads: Mapping[str, Sequence[Mapping[str, Any]]],
                     labels: Sequence[str], X) -> Dict[str, Any]:
    """One logistic head whose logit for each label is the mean of that label's fold heads'
    logits (each a one-label head from cross-validation), standardised on ``X``: a linear
    map still, so it is stored and applied like any fitted head. This is the head whose
    out-of-fold logits a calibration was fitted on (:mod:`.calibration`), so the Platt map
    meets the same logit scale on new cases as in fitting, which a refit on all cases
    (sharper, in-sample) would not."""
    head = {"kind": "logistic", "labels": [str(n) for n in labels], **standardiser(X)}
    mean, scale = np.asarray(head["mean"]), np.asarray(head["scale"])
    coefs, intercepts, Cs = [], [], []
    for name in head["labels"]:
        w, b = [], []
        for h in fold_heads[name]:
            wk = np.asarray(h["coef"][0], dtype=np.float64) / np.asarray(h["scale"])
            w.append(wk)
            b.append(float(h["intercept"][0]) - float(wk @ np.asarray(h["mean"])))
        W = np.mean(w, axis=0)                    # logit = W . x + mean(b), in raw features
        coefs.append((W * scale).tolist())
        intercepts.append(float(np.mean(b) + W @ mean))
        Cs.append(float(np.median([h["C"][0] for h in fold_heads[name]])))
    head.update(coef=coefs, intercept=intercepts, C=Cs,
                cross_fitted=int(min(len(fold_heads[n]) for n in head["labels"])))
    return head


# ----------------------------------------------------------------------------- Cox
def _cox_terms(Z: np.ndarray, time: np.ndarray, event: np.ndarray, beta: np.ndarray,
               order: np.ndarray, hessian: bool = True):
    """Breslow log partial likelihood, its gradient and Hessian (of the log-likelihood).

    ``order`` sorts subjects by decreasing time, so the risk set of the k-th sorted subject
    is a prefix; tied times share the risk set that ends at their group's last member."""
    Zs, ts, ds = Z[order], time[order], event[order]
    eta = Zs @ beta
    shift = eta.max()
    w = np.exp(eta - shift)
    S0 = np.cumsum(w)
    S1 = np.cumsum(w[:, None] * Zs, axis=0)
    times_ev, d = np.unique(ts[ds], return_counts=True)
    times_ev, d = times_ev[::-1], d[::-1].astype(np.float64)   # distinct event times, decreasing
    # the risk set of event time t is the prefix of subjects with T >= t
    g_end = np.searchsorted(-ts, -times_ev, side="right") - 1
    s0, s1 = S0[g_end], S1[g_end]
    loglik = float(eta[ds].sum() - np.sum(d * (np.log(s0) + shift)))
    m = s1 / s0[:, None]
    grad = Zs[ds].sum(axis=0) - (d[:, None] * m).sum(axis=0)
    if not hessian:
        return loglik, grad, None
    # sum_t d_t S2_t / S0_t = Z^T diag(w * c) Z, with c_j = sum over event times t <= T_j
    # of d_t / S0_t (subject j is in the risk set of every event time up to its own).
    ratio = d / s0
    # event times are decreasing; the times t <= T_j are a suffix of times_ev
    suffix = np.cumsum(ratio[::-1])[::-1]        # suffix[k] = sum_{k' >= k} ratio[k']
    first = np.searchsorted(-times_ev, -ts, side="left")   # first event time <= T_j
    c = np.where(first < times_ev.size, suffix[np.minimum(first, times_ev.size - 1)], 0.0)
    H = (Zs * (w * c)[:, None]).T @ Zs - (m * d[:, None]).T @ m
    return loglik, grad, -H


def check_survival(time, event, n: int):
    """(time, event as bool) of ``n`` subjects, checked: finite times >= 0, a 0/1 event
    indicator and at least 2 events."""
    time = np.asarray(time, dtype=np.float64).reshape(-1)
    event = np.asarray(event, dtype=np.float64).reshape(-1)
    if time.size != n or event.size != n:
        raise ProbeError(f"time and event need {n} values each, got {time.size} and {event.size}")
    if not np.all(np.isfinite(time)) or np.any(time < 0):
        raise ProbeError("event times must be finite and non-negative")
    if not np.all(np.isin(event, (0.0, 1.0))):
        raise ProbeError("the event indicator must be 0 (censored) or 1 (event)")
    if event.sum() < 2:
        raise ProbeError(f"a Cox head needs at least 2 events, got {int(event.sum())}")
    return time, event.astype(bool)


def cox_newton(Z: np.ndarray, time: np.ndarray, event: np.ndarray, alpha: float,
               max_iter: int = 100, tol: float = 1e-10) -> np.ndarray:
    """Coefficients maximising ``loglik / N - alpha / 2 * |beta|^2`` (Breslow ties) by
    Newton-Raphson with step halving; the ridge term makes the problem strictly concave,
    so this converges from zero in a handful of iterations."""
    n, f = Z.shape
    order = np.argsort(-time, kind="stable")
    beta = np.zeros(f)

    def objective(b):
        ll, g, H = _cox_terms(Z, time, event, b, order)
        return ll / n - 0.5 * alpha * b @ b, g / n - alpha * b, H / n - alpha * np.eye(f)

    obj, g, H = objective(beta)
    for _ in range(max_iter):
        try:
            step = np.linalg.solve(-H, g)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(-H, g, rcond=None)[0]
        t = 1.0
        while True:
            cand = beta + t * step
            new_obj, new_g, new_H = objective(cand)
            if np.isfinite(new_obj) and new_obj >= obj - 1e-15:
                break
            t *= 0.5
            if t < 1e-10:
                return beta
        done = new_obj - obj < tol * max(1.0, abs(obj))
        beta, obj, g, H = cand, new_obj, new_g, new_H
        if done:
            break
    return beta


def _choose_alpha(Z, time, event, seed: int, groups=None) -> float:
    """Ridge penalty with the best mean inner-CV C-index (ties: the larger penalty);
    ``groups``: whole CTs per inner fold."""
    from sklearn.model_selection import KFold, StratifiedKFold
    counts = class_counts(event.astype(np.int64), groups)
    n_censored = int(counts[0])
    k = min(INNER_FOLDS, int(counts[1]), n_censored or INNER_FOLDS)
    if k < 2:
        return 1.0
    if groups is not None and n_censored:
        splits = grouped_folds(event.astype(np.int64), k, seed, groups)
    else:
        cv = StratifiedKFold(k, shuffle=True, random_state=seed) if n_censored else \
            KFold(k, shuffle=True, random_state=seed)
        splits = list(cv.split(Z, event))
    best, best_a = -np.inf, 1.0
    for alpha in sorted(ALPHA_GRID, reverse=True):
        scores = []
        for tr, te in splits:
            if event[tr].sum() < 2 or event[te].sum() < 1:
                continue
            b = cox_newton(Z[tr], time[tr], event[tr], alpha)
            c = c_index(time[te], event[te], Z[te] @ b)
            if np.isfinite(c):
                scores.append(c)
        score = float(np.mean(scores)) if scores else -np.inf
        if score > best + 1e-12:
            best, best_a = score, alpha
    return best_a


def fit_cox(X, time, event, alpha: Union[float, str] = "auto", name: str = "time_to_event",
            seed: int = 0, groups=None) -> Dict[str, Any]:
    """A ridge-penalised Cox proportional-hazards head on standardised ``X``.

    Own Newton-Raphson on the Breslow partial likelihood rather than lifelines or
    scikit-survival: with a ridge penalty the problem is smooth and strictly concave, so
    ~60 lines of numpy solve it exactly (to 1e-10) in a few iterations, while those
    libraries would add pandas/matplotlib/autograd (lifelines) or compiled wheels that lag
    new Pythons (scikit-survival) to the install. ``alpha`` penalises ``alpha/2 |beta|^2``
    against the *mean* log partial likelihood (so it does not scale with N), or ``"auto"``:
    chosen from :data:`ALPHA_GRID` by inner cross-validated C-index."""
    X = _as_matrix(X)
    time, event = check_survival(time, event, X.shape[0])
    head = {"kind": "cox", "name": str(name), **standardiser(X)}
    Z = _standardise(head, X)
    with single_thread():
        a = _choose_alpha(Z, time, event, seed, groups) if alpha == "auto" else float(alpha)
        if not a > 0:
            raise ProbeError(f"the Cox ridge penalty must be positive, got {a}")
        beta = cox_newton(Z, time, event, a)
    horizon = float(np.median(time))
    head.update(coef=beta.tolist(), alpha=a, horizon=horizon,
                baseline_cumhaz=breslow_cumhaz(Z @ beta, time, event, horizon))
    return head


def breslow_cumhaz(lp: np.ndarray, time: np.ndarray, event: np.ndarray, at: float) -> float:
    """Breslow's baseline cumulative hazard H0(at) for linear predictors ``lp``."""
    top = float(lp.max())
    w = np.exp(lp - top)
    total = 0.0
    for t in np.unique(time[event]):
        if t > at:
            break
        total += event[time == t].sum() / w[time >= t].sum()
    return float(total * math.exp(-top))


# ----------------------------------------------------------------------------- apply
def linear_predictor(head: Mapping[str, Any], features) -> np.ndarray:
    """Decision values: [N, L] for a logistic head (log-odds), [N] for a Cox head."""
    X = _as_matrix(features)
    Z = _standardise(head, X)
    coef = np.asarray(head["coef"], dtype=np.float64)
    if head["kind"] == "logistic":
        return Z @ coef.T + np.asarray(head["intercept"], dtype=np.float64)
    return Z @ coef


def calibrated_logits(head: Mapping[str, Any], features) -> np.ndarray:
    """Log-odds [N, L] of a logistic head after its calibration (:mod:`.calibration`) when
    the head carries one: Platt scaling (``a * logit + b`` per label) or an isotonic map
    (the probability interpolated in the label's ``x`` -> ``y`` steps, as log-odds)."""
    z = linear_predictor(head, features)
    cal = head.get("calibration")
    if isinstance(cal, Mapping) and cal.get("method") == "isotonic":
        return np.stack([_logit(isotonic_probability(cal, j, z[:, j]))
                         for j in range(z.shape[1])], axis=1)
    if isinstance(cal, Mapping) and "a" in cal and "b" in cal:
        z = z * np.asarray(cal["a"], dtype=np.float64) + np.asarray(cal["b"], dtype=np.float64)
    return z


def isotonic_probability(cal: Mapping[str, Any], j: int, z) -> np.ndarray:
    """Label ``j``'s isotonic map at logits ``z``: linear between its steps, flat beyond."""
    return np.interp(np.asarray(z, dtype=np.float64), np.asarray(cal["x"][j], dtype=np.float64),
                     np.asarray(cal["y"][j], dtype=np.float64))


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))),
                    np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def apply_head(head: Mapping[str, Any], features) -> Dict[str, np.ndarray]:
    """One head's outputs (see the module docstring), each an array [N]."""
    kind = head.get("kind") if isinstance(head, Mapping) else None
    if kind == "logistic":
        p = _sigmoid(calibrated_logits(head, features))
        return {name: p[:, j] for j, name in enumerate(head["labels"])}
    if kind == "cox":
        lp = linear_predictor(head, features)
        hr = np.exp(lp)
        h0 = float(head.get("baseline_cumhaz", float("nan")))
        return {"risk_score": lp, "hazard_ratio": hr,
                "event_probability_at_horizon": 1.0 - np.exp(-h0 * hr)}
    raise ProbeError(f"unknown probe head kind {kind!r} (expected logistic or cox)")


def _is_task(entry) -> bool:
    return isinstance(entry, Mapping) and isinstance(entry.get("heads"), list)


def apply_heads(heads_json: Mapping[str, Any], features) -> Dict[str, Any]:
    """Outputs of probe heads, from JSON alone (numpy, no scikit-learn).

    ``heads_json`` may be one head, one task entry, or a mapping of task names to task
    entries (a model card's ``heads``). ``features`` is [N, F] or one vector [F]; with
    several tasks it may also be a mapping task -> features (tasks can use different
    imagined angles, see :func:`.features.extract_for_heads`). Returns ``{output: values}``
    for a head or task, ``{task: {output: values}}`` for several tasks; values are arrays
    [N], or floats when ``features`` was one vector."""
    if not isinstance(heads_json, Mapping):
        raise ProbeError("probe heads must be a JSON object")

    def one(entry, feats):
        single = np.asarray(feats).ndim == 1
        if _is_task(entry):
            out = {}
            for head in entry["heads"]:
                out.update(apply_head(head, feats))
        else:
            out = apply_head(entry, feats)
        return {k: float(v[0]) for k, v in out.items()} if single else out

    if "kind" in heads_json or _is_task(heads_json):
        return one(heads_json, features)
    result = {}
    for task, entry in heads_json.items():
        feats = features[task] if isinstance(features, Mapping) else features
        result[task] = one(entry, feats)
    return result


def logistic_logits(heads_json: Mapping[str, Any], features) -> Dict[str, Dict[str, float]]:
    """``{task: {label: log-odds}}`` of the logistic heads of a card's ``heads`` for ONE case
    (``features``: a vector [F], [1, F], or a mapping task -> those): the calibrated logit
    behind each probability :func:`apply_heads` gives, kept beside the probability when it
    is clipped for display. Tasks without a logistic head are left out."""
    out: Dict[str, Dict[str, float]] = {}
    for task, entry in heads_json.items():
        if not _is_task(entry):
            continue
        feats = features[task] if isinstance(features, Mapping) else features
        z = {}
        for head in entry["heads"]:
            if head.get("kind") == "logistic":
                values = calibrated_logits(head, feats)[0]
                z.update({name: float(v) for name, v in zip(head["labels"], values)})
        if z:
            out[task] = z
    return out


def task_entry(task: str, heads: Sequence[Mapping[str, Any]], features_spec: Mapping[str, Any],
               metrics: Optional[Mapping[str, Any]] = None,
               trained_on: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The JSON stored under ``card["heads"][task]``."""
    return {"format": TASK_FORMAT, "version": TASK_VERSION, "task": str(task),
            "features": dict(features_spec), "heads": [dict(h) for h in heads],
            "metrics": dict(metrics or {}), "trained_on": dict(trained_on or {})}


def check_task_entry(entry: Any, where: str = "probe heads") -> Dict[str, Any]:
    """``entry`` if it is a task entry this version can apply."""
    if not _is_task(entry) or entry.get("format") != TASK_FORMAT:
        raise ProbeError(f"{where}: not a {TASK_FORMAT} task entry")
    if int(entry.get("version", 0)) > TASK_VERSION:
        raise ProbeError(f"{where}: probe heads version {entry.get('version')} is newer than "
                         f"this package understands ({TASK_VERSION}); upgrade XrayWorldModel")
    for head in entry["heads"]:
        if not isinstance(head, Mapping) or head.get("kind") not in ("logistic", "cox"):
            raise ProbeError(f"{where}: unknown head {head!r:.60}")
    return dict(entry)

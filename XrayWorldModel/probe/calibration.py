"""Calibrated probabilities for the logistic heads: Platt scaling on out-of-fold predictions,
isotonic regression on a large held-out cohort, the expected calibration error (ECE) and
reliability diagrams.

**Platt scaling** (a logistic regression of the label on the head's logit, two numbers per
label) rather than isotonic regression: with a few hundred cases isotonic regression
overfits its step function, while Platt's two parameters are stable, monotone (so AUROC is
unchanged) and keep probabilities away from exactly 0 and 1. It is fitted on **out-of-fold**
logits (each case scored by a head that never saw it, :func:`.evaluate.cv_logistic`), since
the in-sample logits of a head are over-confident by construction; when ``probe`` is given a
labelled held-out cohort (``--heldout``), the map is refitted on the final head's own logits
for those cases (:func:`.heldout.recalibrate`, which says why), and that is what the demo
model carries. With at least ``ISOTONIC_MIN_CASES`` held-out CTs the map there is **isotonic**
(monotone steps, probabilities kept in ``[P_MIN, 1 - P_MIN]``): a sigmoid cannot follow every
head's reliability curve, and there are then enough cases for the steps. Measured on the demo
model's 600 held-out CTs (4 views each), cross-fitted by CT: the pleural-effusion head's ECE
is 0.042 with Platt (0.043 even in sample: the misfit is the sigmoid's shape, not noise) and
0.033 with isotonic; no label is worse with isotonic.

The ECE reported "after" is honest too: each fold's probabilities are calibrated by a Platt
fit on the other folds' out-of-fold logits (:func:`cross_fitted`), so no case calibrates
itself. ECE uses ``N_BINS`` equal-width bins: ``sum_b |mean(y_b) - mean(p_b)| * n_b / N``.

Applying a calibration needs numpy only (:func:`apply`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Sequence

import numpy as np

from ..fileutil import atomic_path
from .heads import class_counts, grouped_folds, isotonic_probability
from .metrics import ProbeError

METHOD = "platt"
N_BINS = 10
#: Held-out CTs from which the held-out map is isotonic rather than Platt.
ISOTONIC_MIN_CASES = 300
#: Isotonic probabilities are kept in [P_MIN, 1 - P_MIN] (never a certain 0 or 1).
P_MIN = 1e-3
#: Platt fits use this (weak) L2 penalty on the slope and intercept, so a perfectly
#: separating fold still gives finite parameters.
_C = 1e4


def sigmoid(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def fit_platt(logits, y) -> Dict[str, float]:
    """Slope ``a`` and intercept ``b`` with ``P(y = 1) = sigmoid(a * logit + b)``."""
    from sklearn.linear_model import LogisticRegression
    z = np.asarray(logits, dtype=np.float64).reshape(-1, 1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    keep = np.isfinite(z[:, 0]) & np.isfinite(y)
    if len(np.unique(y[keep])) < 2:
        raise ProbeError("Platt scaling needs both classes among the out-of-fold predictions")
    model = LogisticRegression(C=_C, max_iter=1000, tol=1e-8).fit(z[keep], y[keep].astype(int))
    return {"a": float(model.coef_[0, 0]), "b": float(model.intercept_[0])}


def fit_isotonic(logits, y) -> Dict[str, list]:
    """Steps ``x`` (logits, increasing) -> ``y`` (probabilities in [P_MIN, 1 - P_MIN]) of the
    isotonic regression of the label on the logit; applied by linear interpolation
    (:func:`.heads.isotonic_probability`)."""
    from sklearn.isotonic import IsotonicRegression
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    keep = np.isfinite(z) & np.isfinite(y)
    if len(np.unique(y[keep])) < 2:
        raise ProbeError("isotonic calibration needs both classes")
    iso = IsotonicRegression(y_min=P_MIN, y_max=1.0 - P_MIN, out_of_bounds="clip")
    iso.fit(z[keep], y[keep])
    return {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}


def _fitted_probabilities(method: str, z_fit, y_fit, z_apply) -> np.ndarray:
    if method == "isotonic":
        steps = fit_isotonic(z_fit, y_fit)
        return isotonic_probability({"x": [steps["x"]], "y": [steps["y"]]}, 0, z_apply)
    cal = fit_platt(z_fit, y_fit)
    return sigmoid(cal["a"] * np.asarray(z_apply) + cal["b"])


def cross_fitted(logits, y, folds: int = 5, seed: int = 0, groups=None,
                 method: str = METHOD) -> np.ndarray:
    """Calibrated probabilities of out-of-fold ``logits``, each fold calibrated by a
    ``method`` (platt or isotonic) fit on the others (stratified, seeded; ``groups``: the
    views of one CT in one fold): what the ECE after calibration is measured on."""
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1).astype(int)
    k = int(min(folds, class_counts(y, groups).min()))
    if k < 2:
        raise ProbeError("cross-fitted calibration needs at least 2 cases of each class")
    out = np.empty_like(z)
    for tr, te in grouped_folds(y, k, seed, groups):
        out[te] = _fitted_probabilities(method, z[tr], y[tr], z[te])
    return out


def reliability(y, p, n_bins: int = N_BINS) -> Dict[str, list]:
    """Per equal-width bin of ``p``: count, mean predicted probability, observed frequency."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(idx, weights=p, minlength=n_bins) / count
        freq = np.bincount(idx, weights=y, minlength=n_bins) / count
    return {"count": count.tolist(), "confidence": [None if np.isnan(v) else float(v) for v in conf],
            "frequency": [None if np.isnan(v) else float(v) for v in freq]}


def ece(y, p, n_bins: int = N_BINS) -> float:
    """Expected calibration error of probabilities ``p`` for 0/1 labels ``y``."""
    r = reliability(y, p, n_bins)
    n = float(sum(r["count"]))
    if n == 0:
        raise ProbeError("ECE of no cases")
    return float(sum(c / n * abs(f - m) for c, f, m in
                     zip(r["count"], r["frequency"], r["confidence"]) if c))


def calibrate_labels(oof_logits: np.ndarray, Y: np.ndarray, labels: Sequence[str],
                     folds: int = 5, seed: int = 0, groups=None) -> Dict[str, Any]:
    """Platt parameters per label, fitted on out-of-fold logits ``[N, L]`` (NaN rows of a
    label are left out), with the ECE before (raw out-of-fold probabilities) and after
    (cross-fitted calibration) calibration: the ``calibration`` entry of a logistic head,
    with the reliability bins of both under ``reliability``."""
    a, b, before, after, diagrams = [], [], [], [], {}
    for j, name in enumerate(labels):
        keep = np.isfinite(oof_logits[:, j]) & np.isfinite(Y[:, j])
        z, y = oof_logits[keep, j], Y[keep, j]
        g = None if groups is None else np.asarray(groups)[keep]
        cal = fit_platt(z, y)
        a.append(cal["a"])
        b.append(cal["b"])
        p_before, p_after = sigmoid(z), cross_fitted(z, y, folds, seed, g)
        before.append(ece(y, p_before))
        after.append(ece(y, p_after))
        diagrams[name] = {"before": reliability(y, p_before), "after": reliability(y, p_after)}
    return {"method": METHOD, "fitted_on": "out-of-fold logits", "a": a, "b": b,
            "n_bins": N_BINS, "ece_before": before, "ece_after": after,
            "reliability": diagrams}


def reliability_diagram(path, curves: Mapping[str, Mapping[str, Mapping[str, list]]],
                        title: str) -> Path:
    """A PNG with one panel per label: observed frequency against mean predicted probability
    per bin, before (grey) and after (blue) calibration, the diagonal as reference, the
    ECE of each in the panel's title. ``curves``: ``{label: {"before": reliability(...),
    "after": reliability(...)}}``."""
    from PIL import Image, ImageDraw, ImageFont
    size, pad, top = 220, 36, 28
    names = list(curves)
    page = Image.new("RGB", (len(names) * (size + pad) + pad, size + 2 * pad + top), "white")
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default()
    draw.text((pad, 6), title, fill="black", font=font)
    for i, name in enumerate(names):
        x0, y0 = pad + i * (size + pad), top + pad
        to_px = lambda px, py: (x0 + px * size, y0 + (1 - py) * size)
        draw.rectangle([x0, y0, x0 + size, y0 + size], outline="black")
        draw.line([to_px(0, 0), to_px(1, 1)], fill=(170, 170, 170))
        label = [name]
        for key, colour in (("before", (150, 150, 150)), ("after", (30, 90, 200))):
            r = curves[name][key]
            pts = [to_px(m, f) for m, f, c in zip(r["confidence"], r["frequency"], r["count"]) if c]
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=2)
            for px, py in pts:
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
            n = sum(r["count"])
            e = sum(c / n * abs(f - m) for c, f, m in
                    zip(r["count"], r["frequency"], r["confidence"]) if c) if n else float("nan")
            label.append(f"{key} {e:.3f}")
        draw.text((x0, y0 - 26), label[0], fill="black", font=font)
        draw.text((x0, y0 - 14), "ECE " + ", ".join(label[1:]), fill="black", font=font)
        draw.text((x0, y0 + size + 4), "predicted ->  (y: observed)", fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        page.save(tmp, format="PNG")
    return path

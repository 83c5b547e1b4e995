"""Out-of-distribution score on the features the probe heads read.

**Method: Mahalanobis distance under a Ledoit-Wolf shrunk covariance, kept as a bounded
summary.** A linear head is only as good as the region of feature space it was fitted on;
far outside it, it extrapolates to a saturated logit. The Mahalanobis distance of a case's
pooled latents (:mod:`.features`; the same vector the heads read) from the fitting cohort
measures exactly that distance, in the cohort's own units of spread. It is well understood
(Lee et al. 2018 use it on network features for OOD detection), needs no labels and no
second model, and applying it is a few numpy lines.

* **Standardised features.** Each of the F features is centred and scaled by the cohort's
  mean and standard deviation (as the heads standardise them).
* **Ledoit-Wolf shrinkage.** With N cases (160 for the demo model) and F = 256 features the
  sample covariance is singular; Ledoit-Wolf shrinks it towards a multiple of the identity
  with the analytically optimal weight, so it is well conditioned and its small eigenvalues
  are not noise.
* **A bounded summary.** The shrunk covariance is diagonalised; the card keeps its ``k``
  leading eigenvectors (``k`` = 32 by default) and eigenvalues, and one variance for the
  residual subspace (the mean of the remaining F - k eigenvalues). The squared distance is
  ``sum_i (v_i . z)^2 / lambda_i + |z - V^T V z|^2 / sigma_r^2``: the exact Mahalanobis
  distance under the shrunk covariance with its trailing eigenvalues replaced by their mean
  (the probabilistic-PCA approximation). The residual term matters: a body region the model
  has never seen moves features in directions the cohort never varied along, which the
  leading components alone would not see. The card grows by ``k * F`` numbers (8192 for
  the demo model) instead of ``F^2``, and inference needs numpy only.

The score is the distance itself (not squared); in-domain cases sit near ``sqrt(F)``.
The threshold is the 99th percentile of the score on held-out in-domain cases (never used
for fitting), measured by :func:`set_threshold` and stored beside the statistics.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from .metrics import ProbeError

OOD_FORMAT = "xray2xray-ood"
OOD_VERSION = 1
METHOD = "mahalanobis, Ledoit-Wolf shrunk covariance, k leading eigenvectors + residual"
#: Leading eigenvectors kept in the card.
DEFAULT_COMPONENTS = 32
#: Quantile of the held-out in-domain scores used as the threshold.
THRESHOLD_QUANTILE = 0.99
_DIGITS = 6      # significant digits stored in the card (float32 precision is ~7)


def _round(values) -> list:
    a = np.asarray(values, dtype=np.float64)
    return [float(f"{v:.{_DIGITS}g}") for v in a.reshape(-1)] if a.ndim <= 1 else \
        [_round(row) for row in a]


def _matrix(features) -> np.ndarray:
    X = np.asarray(features, dtype=np.float64)
    X = X[None] if X.ndim == 1 else X
    if X.ndim != 2 or not np.all(np.isfinite(X)):
        raise ProbeError(f"OOD features must be a finite [N, F] array, got shape {X.shape}")
    return X


def fit_reference(features, n_components: int = DEFAULT_COMPONENTS,
                  feature_spec: Optional[Mapping[str, Any]] = None,
                  fitted_on: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The reference statistics of ``features`` [N, F] (the cohort the heads were fitted on),
    as the JSON a model card stores under ``ood``: standardisation, the ``n_components``
    leading eigenpairs of the Ledoit-Wolf covariance of the standardised features and the
    residual variance. No threshold yet (:func:`set_threshold`)."""
    from sklearn.covariance import LedoitWolf
    X = _matrix(features)
    n, f = X.shape
    if n < 10:
        raise ProbeError(f"an OOD reference needs at least 10 cases, got {n}")
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[~(scale > 1e-12)] = 1.0
    Z = (X - mean) / scale
    lw = LedoitWolf(assume_centered=True).fit(Z)
    evals, evecs = np.linalg.eigh(lw.covariance_)
    order = np.argsort(evals)[::-1]
    evals, evecs = np.maximum(evals[order], 1e-12), evecs[:, order]
    k = int(min(max(1, n_components), f))
    residual = float(evals[k:].mean()) if k < f else 0.0
    return {"format": OOD_FORMAT, "version": OOD_VERSION, "method": METHOD,
            "features": dict(feature_spec or {}), "n": int(n), "n_features": int(f),
            "shrinkage": float(lw.shrinkage_), "mean": _round(mean), "scale": _round(scale),
            "components": _round(evecs[:, :k].T), "variances": _round(evals[:k]),
            "residual_variance": float(f"{residual:.{_DIGITS}g}"),
            "explained_fraction": float(evals[:k].sum() / evals.sum()),
            "fitted_on": dict(fitted_on or {})}


def scores(reference: Mapping[str, Any], features) -> np.ndarray:
    """The OOD score (Mahalanobis distance, see the module docstring) of each row of
    ``features`` [N, F] (or one vector [F]); numpy only."""
    X = _matrix(features)
    mean = np.asarray(reference["mean"], dtype=np.float64)
    if X.shape[1] != mean.shape[0]:
        raise ProbeError(f"the OOD reference expects {mean.shape[0]} features, got {X.shape[1]}")
    Z = (X - mean) / np.asarray(reference["scale"], dtype=np.float64)
    V = np.asarray(reference["components"], dtype=np.float64)
    lam = np.asarray(reference["variances"], dtype=np.float64)
    P = Z @ V.T
    d2 = (P ** 2 / lam).sum(axis=1)
    residual = float(reference.get("residual_variance") or 0.0)
    if residual > 0:
        d2 += ((Z - P @ V) ** 2).sum(axis=1) / residual
    return np.sqrt(d2)


def set_threshold(reference: Mapping[str, Any], heldout_features,
                  quantile: float = THRESHOLD_QUANTILE,
                  source: Optional[str] = None) -> Dict[str, Any]:
    """``reference`` with its threshold: the ``quantile`` of the scores of
    ``heldout_features`` (in-domain cases never used for fitting), and a summary of those
    scores."""
    s = scores(reference, heldout_features)
    if s.size < 20:
        raise ProbeError(f"the OOD threshold needs at least 20 held-out cases, got {s.size}")
    out = dict(reference)
    out.update(threshold=float(np.quantile(s, quantile)), threshold_quantile=float(quantile),
               heldout={"n": int(s.size), "source": source,
                        "quantiles": {q: float(np.quantile(s, float(q)))
                                      for q in ("0.5", "0.9", "0.99")}})
    return out


def check_reference(reference: Any) -> Optional[Dict[str, Any]]:
    """``reference`` if it is a usable OOD reference with a threshold, else None (an old
    model file, or a reference still without its threshold)."""
    if not isinstance(reference, Mapping) or reference.get("format") != OOD_FORMAT:
        return None
    if int(reference.get("version", 0)) > OOD_VERSION:
        raise ProbeError(f"OOD reference version {reference.get('version')} is newer than this "
                         f"package understands ({OOD_VERSION}); upgrade XrayWorldModel")
    needed: Sequence[str] = ("mean", "scale", "components", "variances", "threshold")
    return dict(reference) if all(k in reference for k in needed) else None

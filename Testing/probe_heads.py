"""Real probe heads for test models: fitted on random features of the right width, so a
tiny model's card carries heads that inference applies exactly as it would trained ones."""
from __future__ import annotations

import numpy as np

PATHOLOGIES = ["atelectasis", "cardiomegaly", "consolidation", "edema", "pleural_effusion"]


def random_probe_heads(model) -> dict:
    """``{"pathology": ..., "risk": ...}`` task entries (logistic heads, and a Cox head for
    risk) for the features :func:`XrayWorldModel.probe.features.extract_features` gives with
    one imagined view (90 deg)."""
    from XrayWorldModel.probe.heads import TASK_FORMAT, TASK_VERSION, fit_cox, fit_logistic
    rng = np.random.default_rng(0)
    F = 2 * model.config.embed_dim                    # observed + one imagined view (90)
    X = rng.normal(size=(60, F))
    Y = (X[:, :5] + rng.normal(size=(60, 5)) > 0).astype(int)
    spec = {"angle": 0.0, "imagined": [90.0], "pooling": "mean", "n_features": F}
    wrap = lambda task, heads: {"format": TASK_FORMAT, "version": TASK_VERSION, "task": task,
                                "features": spec, "heads": heads}
    event = Y[:, 0]
    time = rng.exponential(1.0, 60) + 0.1
    return {"pathology": wrap("pathology", [fit_logistic(X, Y, PATHOLOGIES, C=1.0)]),
            "risk": wrap("risk", [fit_logistic(X, event[:, None], ["event"], C=1.0),
                                  fit_cox(X, time, event, alpha=1.0)])}

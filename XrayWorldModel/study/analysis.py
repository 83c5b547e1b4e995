"""Why the study came out as it did: ``xray2xray study-analysis RUN_DIR`` on a finished run.

Three questions, answered on the run's own cohort, split, labelled subsets and world model:

1. **What drives the event?** Test-split AUROC of the event from each true quantity the
   risk model is made of (the true risk probability is the ceiling any method can reach).
2. **What can a frontal image show of it?** Five-fold cross-validated R^2 of a linear
   read-out (ridge) of the log calcium volume and of the heart scale, from the frontal DRR's
   pixels (at the study's resolution and at 2 and 4 times finer) and from the world model's
   probe features. A quantity no linear read-out of the
   pixels finds is out of reach of any linear probe on a frozen encoder of that view.
3. **Which world-model features carry the signal?** The study's probes on the observed view's
   latent alone, with the imagined views the study used, with four imagined views, and on
   the frontal pixels themselves (a no-learning reference).

Writes ``analysis.json`` and ``analysis.md`` into RUN_DIR.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Dict, List

import numpy as np

from ..probe import extract_features
from ..probe.metrics import auroc_ci
from ..weights import load_world_model
from . import data as sdata, probes
from .config import StudyConfig
from .data import BINARY_TASKS

#: True quantities of the risk model, and the event probability itself.
RISK_QUANTITIES = ("risk_prob", "calcium_volume_mm3", "coronary_calcium_mm3",
                   "aortic_calcium_mm3", "heart_scale")
ABLATION_ANGLES = (-90.0, -45.0, 45.0, 90.0)     # within the trained rotations


def _cv_r2(X: np.ndarray, y: np.ndarray, seed: int) -> float:
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict
    X = (X - X.mean(0)) / (X.std(0) + 1e-6)
    p = cross_val_predict(RidgeCV(alphas=np.logspace(-2, 5, 15)), X, y,
                          cv=KFold(5, shuffle=True, random_state=seed))
    return float(1.0 - ((p - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())


@dataclasses.dataclass
class _Run:
    """A finished study's config, cohort, split and labelled subsets, rebuilt from its seed."""

    path: Path
    cfg: StudyConfig
    cohort: sdata.Cohort
    train: np.ndarray
    test: np.ndarray
    fractions: List[float]
    labelled: Dict[float, np.ndarray]
    columns: Dict[str, np.ndarray]
    labels_test: Dict[str, np.ndarray]


def _load_run(run: Path) -> _Run:
    res = json.loads((run / "results.json").read_text())
    cfg = StudyConfig.from_dict(res["config"], res.get("config_name", "custom"))
    seed = cfg.seed
    cohort = sdata.prepare_cohort(cfg, Path(cfg.cohort.dir) if cfg.cohort.dir else run / "cohort")
    train, test = sdata.split_cases(cohort, cfg.cohort.test_fraction, seed)
    fractions = sorted(float(f) for f in cfg.probe.label_fractions)
    labelled = sdata.labelled_subsets(cohort, train, fractions, cfg.probe.min_labelled, seed)
    columns = {t: cohort.column(t) for t in (*BINARY_TASKS, "time")}
    labels_test = {k: v[test] for k, v in columns.items()}
    return _Run(run, cfg, cohort, train, test, fractions, labelled, columns, labels_test)


def analyse(run_dir) -> Dict:
    import torch
    r = _load_run(Path(run_dir))
    cfg, cohort = r.cfg, r.cohort
    out: Dict = {"run": str(r.path), "n_cases": len(cohort), "n_test": int(len(r.test))}
    out["event_from_truth"] = _event_from_truth(r)
    out["calcium"] = _calcium(r)

    cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else r.path / "cache"
    store = sdata.VolumeStore(cohort, cfg, cache)
    frontal = sdata.render_clean(store, range(len(cohort)), cfg.views, [0.0],
                                 torch.device("cpu"))[:, 0]
    model, _ = load_world_model(str(r.path / "world_model"))
    feats = _features(model, frontal, cfg)
    targets = {"log calcium volume": np.log1p(np.nan_to_num(cohort.column("calcium_volume_mm3"))),
               "heart scale": cohort.column("heart_scale")}
    readout_inputs = _readout_inputs(store, frontal, cfg, len(cohort))
    readout_inputs.update({k: v for k, v in feats.items() if "the study's" in k or "pixels" in k})
    out["linear_readout_r2"] = {name: {t: _cv_r2(X, y, cfg.seed) for t, y in targets.items()}
                                for name, X in readout_inputs.items()}
    out["probe_ablation"] = {name: _probe_ablation(r, X) for name, X in feats.items()}
    (r.path / "analysis.json").write_text(json.dumps(out, indent=1))
    (r.path / "analysis.md").write_text(render(out))
    return out


def _event_from_truth(r: _Run) -> Dict:
    """Test AUROC of the event from each true risk quantity."""
    event = r.columns["event"]
    out = {}
    for q in RISK_QUANTITIES:
        a = auroc_ci(event[r.test], np.nan_to_num(r.cohort.column(q)[r.test]),
                     n_boot=r.cfg.probe.bootstrap, seed=r.cfg.seed)
        out[q] = {"value": a["auroc"], "ci95": a["ci95"]}
    return out


def _calcium(r: _Run) -> Dict:
    """How much calcium there is, next to the sizes of a CT voxel and a detector pixel."""
    total = np.nan_to_num(r.cohort.column("calcium_volume_mm3"))
    count = np.nan_to_num(r.cohort.column("calcium_count"))
    has = count > 0
    return {"fraction_with_calcium": float(has.mean()),
            "median_total_mm3": float(np.median(total)),
            "median_per_deposit_mm3": float(np.median(total[has] / count[has]))
            if has.any() else None,
            "ct_voxel_mm3": float(np.prod(r.cfg.cohort.spacing)),
            "detector_pixel_mm": r.cfg.views.field_of_view_mm / r.cfg.views.image_size}


def _features(model, frontal: np.ndarray, cfg) -> Dict[str, np.ndarray]:
    """The world model's probe features with other imagined views, and pooled pixels."""
    import torch
    import torch.nn.functional as F
    pooled = max(1, cfg.views.image_size // 16)
    pixels = F.avg_pool2d(torch.from_numpy(frontal[:, None]), pooled).reshape(len(frontal), -1)
    with torch.no_grad():
        return {
            "world model: observed view only": extract_features(model, frontal[:, None], 0.0, []),
            "world model: observed + imagined "
            + ",".join(f"{a:g}" for a in cfg.probe.imagined) + " (the study's)":
                extract_features(model, frontal[:, None], 0.0, list(cfg.probe.imagined)),
            "world model: observed + imagined " + ",".join(f"{a:g}" for a in ABLATION_ANGLES):
                extract_features(model, frontal[:, None], 0.0, list(ABLATION_ANGLES)),
            f"frontal pixels ({frontal.shape[1] // pooled}x{frontal.shape[2] // pooled})":
                pixels.numpy().astype(np.float64)}


def _readout_inputs(store, frontal: np.ndarray, cfg, n: int) -> Dict[str, np.ndarray]:
    """The frontal DRR's pixels at the study's resolution and at 2 and 4 times finer (is the
    calcium there at a higher resolution?)."""
    import torch
    out = {f"frontal pixels ({frontal.shape[1]}x{frontal.shape[2]})":
           frontal.reshape(len(frontal), -1).astype(np.float64)}
    for size in (2 * cfg.views.image_size, 4 * cfg.views.image_size):
        fine = sdata.render_clean(store, range(n), dataclasses.replace(
            cfg.views, image_size=size), [0.0], torch.device("cpu"))[:, 0]
        out[f"frontal pixels ({size}x{size}, finer DRR)"] = \
            fine.reshape(len(fine), -1).astype(np.float64)
    return out


def _probe_ablation(r: _Run, X: np.ndarray) -> Dict:
    """The study's probes on features ``X``, per label fraction."""
    cfg = r.cfg
    out = {}
    for f in r.fractions:
        lab = r.labelled[f]
        fit = probes.fit_and_score(X[lab], {c: v[lab] for c, v in r.columns.items()}, X[r.test],
                                   cfg.probe.C, cfg.probe.cox_alpha, cfg.seed)
        m = probes.task_metrics(fit, r.labels_test, cfg.probe.bootstrap, cfg.seed)
        out[repr(f)] = {t: {"value": m[t]["value"], "ci95": m[t]["ci95"]}
                        for t in ("pathology_macro", "event", "c_index")}
    return out


def _cell(e) -> str:
    if e["value"] is None:
        return "n/a"
    ci = e.get("ci95")
    return f"{e['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def render(a: Dict) -> str:
    lines: List[str] = ["# Study analysis", "",
                        f"Event AUROC on the {a['n_test']} test cases from each true quantity:", "",
                        "| quantity | event AUROC |", "| --- | --- |"]
    lines += [f"| {q} | {_cell(e)} |" for q, e in a["event_from_truth"].items()]
    c = a.get("calcium")
    if c:
        per = c["median_per_deposit_mm3"]
        lines += ["", f"Calcium: {c['fraction_with_calcium'] * 100:.0f} % of the cases have "
                  f"deposits; median total {c['median_total_mm3']:.0f} mm3, median deposit "
                  + (f"{per:.0f} mm3" if per is not None else "n/a")
                  + f" (one CT voxel: {c['ct_voxel_mm3']:.1f} mm3; one detector pixel: "
                  f"{c['detector_pixel_mm']:.2f} mm)."]
    lines += ["", f"Linear read-out (ridge, 5-fold CV R^2 over all {a['n_cases']} cases):", "",
              "| input | " + " | ".join(next(iter(a["linear_readout_r2"].values()))) + " |",
              "| --- | --- | --- |"]
    lines += [f"| {name} | " + " | ".join(f"{v:.3f}" for v in r.values()) + " |"
              for name, r in a["linear_readout_r2"].items()]
    lines += ["", "Probes on other features (test AUROC / C-index, bootstrap 95 % CI):", "",
              "| features | labels | pathology (macro) | event | C-index |",
              "| --- | --- | --- | --- | --- |"]
    for name, by_frac in a["probe_ablation"].items():
        for frac, m in by_frac.items():
            lines.append(f"| {name} | {float(frac) * 100:g} % | {_cell(m['pathology_macro'])} | "
                         f"{_cell(m['event'])} | {_cell(m['c_index'])} |")
    return "\n".join(lines) + "\n"


__all__ = ["analyse", "render"]

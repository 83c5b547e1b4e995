"""The study end to end (``xray2xray study``):

1. write (or reuse) the labelled cohort; split it into train and test cases by the seed and
   draw the nested labelled subsets of the training cases (one per label fraction);
2. render the clean frontal DRR of every case (every method's input for the probes) and a
   bank of augmented frontal views of the training cases (the 2D baselines' training data);
3. train each method within the matched budget: the masked autoencoder and the world model
   once on all training cases (no labels), the supervised encoder once per label fraction on
   that fraction's labelled cases; the oracle needs no training;
4. extract features, fit the probes on each fraction's labelled cases, score the test cases:
   AUROC per pathology and for the event, C-index, bootstrap CIs, paired bootstrap of
   Xray2Xray against every other method; the world model's novel-view PSNR/SSIM and volume
   correlation,
   and the same world model on real anatomy (:mod:`.real_anatomy`), when the files are there;
5. write ``results.json``, ``results.md``, ``predictions.csv``, ``roc.png``, ``views.png``
   and ``real_anatomy.png``.

Every random choice is seeded from the config's ``seed``; with ``run.deterministic`` torch
runs deterministic algorithms, so a second run with the same seed on the same machine gives
the same numbers (the wall times differ).
"""
from __future__ import annotations

import csv
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..conventions import STUDY_RESULTS_FORMAT
from ..drr import resolve_device
from ..fileutil import atomic_path
from ..phantom.findings import HIDEABLE
from ..version import __version__
from . import baselines, data as sdata, figures as fig, oracle, probes, world_model as wm
from .config import METHOD_TITLES, StudyConfig
from .data import BINARY_TASKS
from .probes import TASK_TITLES, roc_curve
from .real_anatomy import evaluate_real_anatomy
from .report import render_markdown

RESULTS_FORMAT = STUDY_RESULTS_FORMAT
RESULTS_VERSION = 1


def fraction_key(f: float) -> str:
    return repr(float(f))


def _hardware(device) -> str:
    cpu = platform.processor() or platform.machine()
    text = f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__} with " \
           f"{torch.get_num_threads()} threads"
    if device.type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    return text


class _Stages:
    """Numbered progress lines and per-stage wall times."""

    def __init__(self, log: Callable[[str], None], total: int):
        self.log, self.total, self.n = log, total, 0
        self.times: Dict[str, float] = {}
        self._name, self._t = None, None

    def start(self, name: str, text: str) -> None:
        self.stop()
        self.n += 1
        self._name, self._t = name, time.perf_counter()
        self.log(f"study [{self.n}/{self.total}] {text}")

    def stop(self) -> None:
        if self._name is not None:
            self.times[self._name] = time.perf_counter() - self._t
            self._name = None


def run_study(cfg: StudyConfig, out_dir=None, progress: Optional[bool] = None,
              log: Optional[Callable[[str], None]] = None) -> Dict:
    """Run the study described by ``cfg`` into ``out_dir`` (default ``cfg.run.out_dir``);
    returns the results dict also written to ``results.json``."""
    out = Path(out_dir if out_dir is not None else cfg.run.out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    log = log or (lambda line: None)
    progress = bool(progress)
    device = resolve_device(None if cfg.run.device == "auto" else cfg.run.device)
    if cfg.run.deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_threads = torch.get_num_threads()
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)

    def deterministic():
        # CUDA lacks deterministic kernels for a few ops (gather's backward): warn there
        torch.use_deterministic_algorithms(cfg.run.deterministic,
                                           warn_only=device.type == "cuda")
    deterministic()
    try:
        return _run(cfg, out, device, progress, log, deterministic)
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.set_num_threads(prev_threads)


@dataclass
class _Study:
    """What the stages share: the run's settings, then what each stage adds."""

    cfg: StudyConfig
    out: Path
    device: Any
    progress: bool
    log: Callable[[str], None]
    deterministic: Callable[[], None]
    stages: _Stages
    fractions: List[float]
    fkeys: List[str]
    # 1. cohort
    cohort_dir: Optional[Path] = None
    cache_dir: Optional[Path] = None
    cohort: Any = None
    train: Any = None
    test: Any = None
    labelled: Dict[float, np.ndarray] = field(default_factory=dict)
    manifest: Optional[Path] = None
    columns: Dict[str, np.ndarray] = field(default_factory=dict)
    labels_test: Dict[str, np.ndarray] = field(default_factory=dict)
    # 2. views
    store: Any = None
    frontal: Optional[np.ndarray] = None
    bank: Optional[Tuple[np.ndarray, np.ndarray]] = None
    # 3. training: features of every case per fraction key; the world model
    features: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)
    training: Dict[str, Any] = field(default_factory=dict)
    model: Any = None
    tcfg: Any = None
    # 4. world-model evaluation
    prior: Any = None
    wm_out: Dict[str, Any] = field(default_factory=dict)
    real_figure: Dict = field(default_factory=dict)
    # 5. probes
    fitted: Dict[str, Dict[str, dict]] = field(default_factory=dict)
    results: Dict[str, Dict[str, dict]] = field(default_factory=dict)
    comparisons: Dict[str, Dict[str, dict]] = field(default_factory=dict)
    subgroups: Dict[str, Dict[str, dict]] = field(default_factory=dict)
    hidden_comparisons: Dict[str, Dict[str, dict]] = field(default_factory=dict)


def _run(cfg: StudyConfig, out: Path, device, progress: bool, log, deterministic) -> Dict:
    t_total = time.perf_counter()
    fractions = sorted(float(f) for f in cfg.probe.label_fractions)
    s = _Study(cfg, out, device, progress, log, deterministic, _Stages(log, 6), fractions,
               [fraction_key(f) for f in fractions])
    _stage_cohort(s)
    _stage_views(s)
    _stage_train(s)
    _stage_world_model(s)
    _stage_probes(s)
    return _stage_outputs(s, t_total)


# ----------------------------------------------------------------------------- 1. cohort
def _stage_cohort(s: _Study) -> None:
    """The cohort, its split and the labelled subsets; the split manifests."""
    cfg, out = s.cfg, s.out
    s.cohort_dir = Path(cfg.cohort.dir).expanduser() if cfg.cohort.dir else out / "cohort"
    s.cache_dir = Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else out / "cache"
    s.stages.start("cohort", f"cohort: {cfg.cohort.n_cases} cases in {s.cohort_dir}")
    s.cohort = sdata.prepare_cohort(cfg, s.cohort_dir, s.progress)
    s.train, s.test = sdata.split_cases(s.cohort, cfg.cohort.test_fraction, cfg.seed)
    s.labelled = sdata.labelled_subsets(s.cohort, s.train, s.fractions, cfg.probe.min_labelled,
                                        cfg.seed)
    s.manifest = sdata.write_manifest(s.cohort, s.train, out / "splits" / "train.csv")
    sdata.write_manifest(s.cohort, s.test, out / "splits" / "test.csv")
    s.columns = {t: s.cohort.column(t) for t in (*BINARY_TASKS, "time")}
    s.labels_test = {k: v[s.test] for k, v in s.columns.items()}
    s.log(f"  {len(s.train)} training cases, {len(s.test)} test cases; labelled: "
          + ", ".join(f"{f:g} -> {len(s.labelled[f])}" for f in s.fractions))


# ----------------------------------------------------------------------------- 2. views
def _stage_views(s: _Study) -> None:
    """The clean frontal DRR of every case; the bank of augmented frontal views of the
    training cases when a 2D baseline trains on it."""
    cfg, methods = s.cfg, s.cfg.methods
    s.stages.start("views", "rendering frontal DRRs (probe inputs) and the 2D training bank")
    s.store = sdata.VolumeStore(s.cohort, cfg, s.cache_dir)
    s.frontal = sdata.render_clean(s.store, range(len(s.cohort)), cfg.views, [0.0], s.device,
                                   s.progress)[:, 0]
    if "supervised" in methods or "mae" in methods:
        per_case = max(cfg.supervised.views_per_case if "supervised" in methods else 0,
                       cfg.mae.views_per_case if "mae" in methods else 0)
        s.bank = sdata.render_frontal_bank(s.store, s.train, cfg.views, per_case, cfg.seed,
                                           s.device, s.progress)


# ----------------------------------------------------------------------------- 3. training
def _train_oracle(s: _Study):
    X = oracle.oracle_features(s.cohort)
    return {k: X for k in s.fkeys}, None


def _train_mae(s: _Study):
    cfg = s.cfg
    s.log(f"  masked autoencoder: {cfg.steps('mae')} steps x {cfg.mae.batch_size}")
    s.deterministic()
    v = cfg.mae.views_per_case
    enc, info = baselines.train_mae(cfg, s.bank[0][:, :v], s.bank[1][:, :v], cfg.seed, s.device,
                                    s.progress, s.log)
    X = baselines.encoder_features(enc, s.frontal, cfg.model.input_scale)
    return {k: X for k in s.fkeys}, info


def _train_supervised(s: _Study):
    """One encoder per label fraction, on that fraction's labelled cases."""
    cfg = s.cfg
    v = cfg.supervised.views_per_case
    features, training = {}, {}
    for f, k in zip(s.fractions, s.fkeys):
        pos = np.searchsorted(s.train, s.labelled[f])
        s.log(f"  supervised, {f:g} of the labels ({len(pos)} cases): "
              f"{cfg.steps('supervised')} steps x {cfg.supervised.batch_size}")
        s.deterministic()
        Y = np.stack([s.columns[t][s.labelled[f]] for t in BINARY_TASKS], axis=1)
        enc, info = baselines.train_supervised(cfg, s.bank[0][pos, :v], s.bank[1][pos, :v], Y,
                                               cfg.seed, s.device, s.progress, s.log,
                                               tag=f" {f:g}")
        features[k] = baselines.encoder_features(enc, s.frontal, cfg.model.input_scale)
        training[k] = info
    return features, training


def _train_xray2xray(s: _Study):
    cfg = s.cfg
    s.log(f"  world model: {cfg.steps('xray2xray')} steps x {cfg.world_model.batch_size}")
    wm_dir = s.out / "world_model"
    if wm_dir.exists():
        shutil.rmtree(wm_dir)
    s.model, info, s.tcfg = wm.train_world_model(cfg, s.manifest, wm_dir, s.cache_dir,
                                                 str(s.device), s.progress, s.log)
    s.deterministic()
    X = wm.world_model_features(s.model, s.frontal, cfg.probe.imagined)
    return {k: X for k in s.fkeys}, info


#: How each method gets its features: ``method -> (features per fraction key, training
#: record)``; the record is per fraction key where a method trains once per fraction.
METHOD_TRAINING: Dict[str, Callable[[_Study], Tuple[Dict[str, np.ndarray], Any]]] = {
    "oracle": _train_oracle,
    "mae": _train_mae,
    "supervised": _train_supervised,
    "xray2xray": _train_xray2xray,
}


def _stage_train(s: _Study) -> None:
    """Train each method and extract features of every case (probes use labelled + test)."""
    methods = s.cfg.methods
    s.stages.start("train", "training: " + ", ".join(m for m in methods if m != "oracle"))
    for method in methods:
        s.features[method], s.training[method] = METHOD_TRAINING[method](s)


# ----------------------------------------------------------------------------- 4. world model
def _stage_world_model(s: _Study) -> None:
    """The world model's novel views, volume correlation and real anatomy."""
    s.stages.start("world_model", "world model: novel views and volume correlation")
    if s.model is None:
        return
    cfg, train, test = s.cfg, s.train, s.test
    s.wm_out["novel_view"] = wm.novel_views(s.model, s.store, train, test, cfg, s.device)
    s.prior = wm.volume_prior(s.store, train, cfg)
    s.wm_out["volume"] = wm.volume_correlation(s.model, s.tcfg, s.store, train, test, cfg,
                                               s.prior)
    s.wm_out["imagined_angles"] = list(cfg.probe.imagined)
    s.log("  real anatomy: the world model on a real CT's DRRs and a real radiograph")
    real = evaluate_real_anatomy(s.model, s.tcfg, cfg, s.cache_dir,
                                 [s.store.get(r) for r in list(train)[:16]], s.frontal[train],
                                 s.prior, s.device)
    s.real_figure = real.pop("_figure")
    s.wm_out["real_anatomy"] = real


# ----------------------------------------------------------------------------- 5. probes
def _stage_probes(s: _Study) -> None:
    """Probes per method and fraction, bootstrap CIs, paired comparisons against Xray2Xray,
    and the same on the findings the frontal view hides."""
    cfg, methods, seed, fkeys = s.cfg, s.cfg.methods, s.cfg.seed, s.fkeys
    s.stages.start("probes", "probes, bootstrap CIs and paired comparisons")
    s.fitted = {m: {} for m in methods}
    s.results = {m: {} for m in methods}
    for f, k in zip(s.fractions, fkeys):
        lab = s.labelled[f]
        labels_lab = {c: v[lab] for c, v in s.columns.items()}
        for method in methods:
            X = s.features[method][k]
            s.fitted[method][k] = probes.fit_and_score(X[lab], labels_lab, X[s.test], cfg.probe.C,
                                                       cfg.probe.cox_alpha, seed)
            s.results[method][k] = probes.task_metrics(s.fitted[method][k], s.labels_test,
                                                       cfg.probe.bootstrap, seed)
    others = [m for m in methods if m != "xray2xray"] if "xray2xray" in methods else []
    s.comparisons = {other: {k: probes.compare(s.fitted["xray2xray"][k], s.fitted[other][k],
                                               s.labels_test, cfg.probe.paired_bootstrap, seed)
                             for k in fkeys} for other in others}
    # the hypothesis: findings the frontal view hides by superposition
    hidden_test = {t: s.cohort.column(f"{t}_hidden")[s.test] > 0.5 for t in HIDEABLE}
    s.subgroups = {m: {k: probes.hidden_subgroups(s.fitted[m][k], s.labels_test, hidden_test,
                                                  cfg.probe.bootstrap, seed) for k in fkeys}
                   for m in methods}
    s.hidden_comparisons = {
        other: {k: probes.compare_hidden(s.fitted["xray2xray"][k], s.fitted[other][k],
                                         s.labels_test, hidden_test,
                                         cfg.probe.paired_bootstrap, seed) for k in fkeys}
        for other in others}


# ----------------------------------------------------------------------------- 6. outputs
def _results(s: _Study) -> Dict:
    """The results dict (``results.json`` before figures, version and total time)."""
    cfg, cohort, methods = s.cfg, s.cohort, s.cfg.methods
    return {
        "format": RESULTS_FORMAT, "version": RESULTS_VERSION, "config_name": cfg.name,
        "config": cfg.to_dict(), "methods": {m: {"title": METHOD_TITLES[m],
                                                  "training": s.training.get(m)} for m in methods},
        "cohort": {"n_cases": len(cohort), "first_seed": cfg.first_seed(),
                   "n_train": len(s.train), "n_test": len(s.test),
                   "train_ids": [cohort.ids[i] for i in s.train],
                   "test_ids": [cohort.ids[i] for i in s.test],
                   "test_positives": {t: int(s.labels_test[t].sum()) for t in BINARY_TASKS}},
        "label_fractions": s.fkeys,
        "labelled": {k: {"n": int(len(s.labelled[f])),
                         "ids": [cohort.ids[i] for i in s.labelled[f]]}
                     for f, k in zip(s.fractions, s.fkeys)},
        "tasks": list(probes.TASKS), "results": s.results, "comparisons": s.comparisons,
        "hidden_findings": {"results": s.subgroups, "comparisons": s.hidden_comparisons},
        "world_model": s.wm_out or None,
        "environment": {"hardware": _hardware(s.device), "device": str(s.device),
                        "deterministic": cfg.run.deterministic, "platform": platform.platform()},
        "timing": {"stages_s": s.stages.times},
    }


def _stage_outputs(s: _Study, t_total: float) -> Dict:
    """``results.json``, ``results.md``, ``predictions.csv`` and the figures."""
    out = s.out
    s.stages.start("outputs", f"writing results to {out}")
    res = _results(s)
    _write_predictions(out / "predictions.csv", s.cohort, s.test, s.labels_test, s.fitted,
                       s.fkeys)
    figures = {}
    if s.cfg.run.figures:
        figures = _figures(out, s.cfg, s.fitted, s.labels_test, s.results, s.fkeys, s.model,
                           s.store, s.test, s.prior, s.real_figure)
    res["figures"] = figures
    s.stages.stop()
    res["package_version"] = __version__
    res["timing"]["total_s"] = time.perf_counter() - t_total
    res = _clean(res)
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(res, indent=1, allow_nan=False))
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(render_markdown(res))
    s.log(f"study: done in {res['timing']['total_s'] / 60:.1f} min; results in "
          f"{out / 'results.json'} and {out / 'results.md'}")
    return res


def _clean(obj):
    """JSON-ready copy: numpy scalars as Python numbers, NaN and infinities as null."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj


def _write_predictions(path: Path, cohort, test, labels_test, fitted, fkeys) -> None:
    """Long table of every test-set score: id, method, fraction, task, score, truth."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["id", "method", "label_fraction", "task", "score", "label", "time"])
        for method, by_frac in fitted.items():
            for k in fkeys:
                for task, scores in by_frac[k]["scores"].items():
                    if scores is None:
                        continue
                    truth = labels_test["event" if task == "c_index" else task]
                    for j, r in enumerate(test):
                        w.writerow([cohort.ids[r], method, k, task, f"{scores[j]:.9g}",
                                    int(truth[j]), f"{labels_test['time'][j]:.6g}"])


def _figures(out: Path, cfg, fitted, labels_test, results, fkeys, model, store, test,
             prior=None, real=None) -> Dict:
    curves: Dict[str, Dict[str, Dict[float, tuple]]] = {}
    for task in BINARY_TASKS:
        curves[task] = {}
        for method, by_frac in fitted.items():
            for k in fkeys:
                s = by_frac[k]["scores"].get(task)
                if s is None:
                    continue
                fpr, tpr = roc_curve(labels_test[task], s)
                curves[task].setdefault(method, {})[float(k)] = (
                    fpr, tpr, results[method][k][task]["value"])
    written = {"roc": fig.roc_figure(out / "roc.png", curves, TASK_TITLES, METHOD_TITLES).name}
    n = min(cfg.evaluate.figure_cases, len(test))
    if model is not None and n:
        rows = [wm.example_row(model, store.get(r), cfg, prior) for r in list(test)[:n]]
        written["views"] = fig.views_figure(out / "views.png", rows,
                                            [store.cohort.ids[r] for r in list(test)[:n]]).name
    if model is not None and real:
        rows, titles = [], []
        if "ct" in real:
            rows.append(wm.example_row(model, real["ct"], cfg, prior))
            titles.append("real CT (DRRs)")
        if "cxr" in real:
            c = real["cxr"]
            rows.append({"frontal": c["input"], "predicted_lateral": c["predicted_lateral"],
                         "reconstructed_slice": c["slice"]})
            titles.append("real radiograph")
        written["real_anatomy"] = fig.views_figure(out / "real_anatomy.png", rows, titles).name
    return written


__all__ = ["run_study", "fraction_key", "METHOD_TRAINING", "RESULTS_FORMAT", "RESULTS_VERSION"]

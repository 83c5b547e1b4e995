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
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

from .config import METHOD_TITLES, StudyConfig
from ..phantom.findings import HIDEABLE
from .data import BINARY_TASKS
from ..conventions import STUDY_RESULTS_FORMAT

RESULTS_FORMAT = STUDY_RESULTS_FORMAT
RESULTS_VERSION = 1


def fraction_key(f: float) -> str:
    return repr(float(f))


def _hardware(device) -> str:
    import torch
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
    import torch
    from ..drr import resolve_device
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


def _run(cfg: StudyConfig, out: Path, device, progress: bool, log, deterministic) -> Dict:
    from ..fileutil import atomic_path
    from . import baselines, data as sdata, oracle, probes, world_model as wm
    t_total = time.perf_counter()
    methods = cfg.methods
    stages = _Stages(log, 6)
    seed = cfg.seed
    fractions = sorted(float(f) for f in cfg.probe.label_fractions)
    fkeys = [fraction_key(f) for f in fractions]

    # 1. cohort, split, labelled subsets
    cohort_dir = Path(cfg.cohort.dir).expanduser() if cfg.cohort.dir else out / "cohort"
    cache_dir = Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else out / "cache"
    stages.start("cohort", f"cohort: {cfg.cohort.n_cases} cases in {cohort_dir}")
    cohort = sdata.prepare_cohort(cfg, cohort_dir, progress)
    train, test = sdata.split_cases(cohort, cfg.cohort.test_fraction, seed)
    labelled = sdata.labelled_subsets(cohort, train, fractions, cfg.probe.min_labelled, seed)
    manifest = sdata.write_manifest(cohort, train, out / "splits" / "train.csv")
    sdata.write_manifest(cohort, test, out / "splits" / "test.csv")
    columns = {t: cohort.column(t) for t in (*BINARY_TASKS, "time")}
    labels_test = {k: v[test] for k, v in columns.items()}
    log(f"  {len(train)} training cases, {len(test)} test cases; labelled: "
        + ", ".join(f"{f:g} -> {len(labelled[f])}" for f in fractions))

    # 2. views
    stages.start("views", "rendering frontal DRRs (probe inputs) and the 2D training bank")
    store = sdata.VolumeStore(cohort, cfg, cache_dir)
    frontal = sdata.render_clean(store, range(len(cohort)), cfg.views, [0.0], device,
                                 progress)[:, 0]
    bank = None
    if "supervised" in methods or "mae" in methods:
        per_case = max(cfg.supervised.views_per_case if "supervised" in methods else 0,
                       cfg.mae.views_per_case if "mae" in methods else 0)
        bank = sdata.render_frontal_bank(store, train, cfg.views, per_case, seed, device,
                                         progress)

    # 3. training and features (features of every case; probes use labelled + test rows)
    features: Dict[str, Dict[str, np.ndarray]] = {}
    training: Dict[str, object] = {}
    wm_out: Dict[str, object] = {}
    model = tcfg = prior = None
    real_figure: Dict = {}
    stages.start("train", "training: " + ", ".join(m for m in methods if m != "oracle"))
    for method in methods:
        if method == "oracle":
            X = oracle.oracle_features(cohort)
            features[method] = {k: X for k in fkeys}
            training[method] = None
        elif method == "mae":
            log(f"  masked autoencoder: {cfg.steps('mae')} steps x {cfg.mae.batch_size}")
            deterministic()
            v = cfg.mae.views_per_case
            enc, info = baselines.train_mae(cfg, bank[0][:, :v], bank[1][:, :v], seed, device,
                                            progress, log)
            X = baselines.encoder_features(enc, frontal, cfg.model.input_scale)
            features[method] = {k: X for k in fkeys}
            training[method] = info
        elif method == "supervised":
            v = cfg.supervised.views_per_case
            training[method], features[method] = {}, {}
            for f, k in zip(fractions, fkeys):
                pos = np.searchsorted(train, labelled[f])
                log(f"  supervised, {f:g} of the labels ({len(pos)} cases): "
                    f"{cfg.steps('supervised')} steps x {cfg.supervised.batch_size}")
                deterministic()
                Y = np.stack([columns[t][labelled[f]] for t in BINARY_TASKS], axis=1)
                enc, info = baselines.train_supervised(cfg, bank[0][pos, :v], bank[1][pos, :v],
                                                       Y, seed, device, progress, log,
                                                       tag=f" {f:g}")
                features[method][k] = baselines.encoder_features(enc, frontal,
                                                                 cfg.model.input_scale)
                training[method][k] = info
        elif method == "xray2xray":
            log(f"  world model: {cfg.steps('xray2xray')} steps x {cfg.world_model.batch_size}")
            wm_dir = out / "world_model"
            if wm_dir.exists():
                shutil.rmtree(wm_dir)
            model, info, tcfg = wm.train_world_model(cfg, manifest, wm_dir, cache_dir,
                                                     str(device), progress, log)
            deterministic()
            X = wm.world_model_features(model, frontal, cfg.probe.imagined)
            features[method] = {k: X for k in fkeys}
            training[method] = info

    # 4. world-model evaluation
    stages.start("world_model", "world model: novel views and volume correlation")
    if model is not None:
        wm_out["novel_view"] = wm.novel_views(model, store, train, test, cfg, device)
        prior = wm.volume_prior(store, train, cfg)
        wm_out["volume"] = wm.volume_correlation(model, tcfg, store, train, test, cfg, prior)
        wm_out["imagined_angles"] = list(cfg.probe.imagined)
        from .real_anatomy import evaluate_real_anatomy
        log("  real anatomy: the world model on a real CT's DRRs and a real radiograph")
        real = evaluate_real_anatomy(model, tcfg, cfg, cache_dir,
                                     [store.get(r) for r in list(train)[:16]], frontal[train],
                                     prior, device)
        real_figure = real.pop("_figure")
        wm_out["real_anatomy"] = real

    # 5. probes and comparisons
    stages.start("probes", "probes, bootstrap CIs and paired comparisons")
    fitted: Dict[str, Dict[str, dict]] = {m: {} for m in methods}
    results: Dict[str, Dict[str, dict]] = {m: {} for m in methods}
    for f, k in zip(fractions, fkeys):
        lab = labelled[f]
        labels_lab = {c: v[lab] for c, v in columns.items()}
        for method in methods:
            X = features[method][k]
            fitted[method][k] = probes.fit_and_score(X[lab], labels_lab, X[test], cfg.probe.C,
                                                     cfg.probe.cox_alpha, seed)
            results[method][k] = probes.task_metrics(fitted[method][k], labels_test,
                                                     cfg.probe.bootstrap, seed)
    comparisons: Dict[str, Dict[str, dict]] = {}
    if "xray2xray" in methods:
        for other in (m for m in methods if m != "xray2xray"):
            comparisons[other] = {k: probes.compare(fitted["xray2xray"][k], fitted[other][k],
                                                    labels_test, cfg.probe.paired_bootstrap, seed)
                                  for k in fkeys}
    # the hypothesis: findings the frontal view hides by superposition
    hidden_test = {t: cohort.column(f"{t}_hidden")[test] > 0.5 for t in HIDEABLE}
    subgroups = {m: {k: probes.hidden_subgroups(fitted[m][k], labels_test, hidden_test,
                                                cfg.probe.bootstrap, seed) for k in fkeys}
                 for m in methods}
    hidden_comparisons = {}
    if "xray2xray" in methods:
        hidden_comparisons = {
            other: {k: probes.compare_hidden(fitted["xray2xray"][k], fitted[other][k],
                                             labels_test, hidden_test,
                                             cfg.probe.paired_bootstrap, seed) for k in fkeys}
            for other in methods if other != "xray2xray"}

    # 6. outputs
    stages.start("outputs", f"writing results to {out}")
    res = {
        "format": RESULTS_FORMAT, "version": RESULTS_VERSION, "config_name": cfg.name,
        "config": cfg.to_dict(), "methods": {m: {"title": METHOD_TITLES[m],
                                                  "training": training.get(m)} for m in methods},
        "cohort": {"n_cases": len(cohort), "first_seed": cfg.first_seed(), "n_train": len(train),
                   "n_test": len(test), "train_ids": [cohort.ids[i] for i in train],
                   "test_ids": [cohort.ids[i] for i in test],
                   "test_positives": {t: int(labels_test[t].sum()) for t in BINARY_TASKS}},
        "label_fractions": fkeys,
        "labelled": {k: {"n": int(len(labelled[f])), "ids": [cohort.ids[i] for i in labelled[f]]}
                     for f, k in zip(fractions, fkeys)},
        "tasks": list(probes.TASKS), "results": results, "comparisons": comparisons,
        "hidden_findings": {"results": subgroups, "comparisons": hidden_comparisons},
        "world_model": wm_out or None,
        "environment": {"hardware": _hardware(device), "device": str(device),
                        "deterministic": cfg.run.deterministic, "platform": platform.platform()},
        "timing": {"stages_s": stages.times},
    }
    _write_predictions(out / "predictions.csv", cohort, test, labels_test, fitted, fkeys)
    figures = {}
    if cfg.run.figures:
        figures = _figures(out, cfg, fitted, labels_test, results, fkeys, model, store, test,
                           prior, real_figure)
    res["figures"] = figures
    stages.stop()
    from ..version import __version__
    res["package_version"] = __version__
    res["timing"]["total_s"] = time.perf_counter() - t_total
    from .report import render_markdown
    res = _clean(res)
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(res, indent=1, allow_nan=False))
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(render_markdown(res))
    log(f"study: done in {res['timing']['total_s'] / 60:.1f} min; results in "
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
    from ..fileutil import atomic_path
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
    from . import figures as fig, world_model as wm
    from .probes import TASK_TITLES, roc_curve
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


__all__ = ["run_study", "fraction_key", "RESULTS_FORMAT", "RESULTS_VERSION"]

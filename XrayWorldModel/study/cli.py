"""``xray2xray study``: run the in-silico study from a config preset or file.

Kept beside the study code; the main CLI only registers it and turns package errors into
one line and exit status 2.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..console import BAR, LineTicker, emit, show_progress
from ..errors import InputError
from ..fileutil import check_output_folder


def add_study_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``study`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        "study", help="the in-silico study: world model vs 2D baselines vs oracle, with CIs",
        description="Write a labelled synthetic cohort, train a supervised encoder, a masked "
        "autoencoder and the world model on it with a matched compute budget, fit the same "
        "linear probes on each label fraction and report AUROC, C-index (bootstrap 95%% CIs), "
        "paired bootstrap p-values, novel-view PSNR/SSIM and volume correlation: "
        "results.json, results.md, predictions.csv, roc.png and views.png in --out.")
    p.add_argument("--config", required=True,
                   help="a preset (insilico-smoke, insilico-cpu, insilico-gpu) or a JSON file")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default: the config's run.out_dir)")
    p.add_argument("--seed", type=int, default=None,
                   help="study seed (cohort, split, training, bootstrap); default: the config's")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. cohort.n_cases=60 budget.encoder_samples=800")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars or progress lines (results and errors only)")
    p.set_defaults(func=run_study_command)
    a = subparsers.add_parser(
        "study-analysis", help="why a finished study came out as it did (risk drivers, "
        "what a frontal view shows, feature ablation)",
        description="On a finished study folder: event AUROC from each true risk quantity, "
        "cross-validated R^2 of linear read-outs of calcium and heart size from the frontal "
        "pixels and the world model's features, and the probes on other world-model features. "
        "Writes analysis.json and analysis.md into the folder.")
    a.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by xray2xray study")
    a.set_defaults(func=run_analysis_command)
    return p


def run_analysis_command(args) -> int:
    if not (Path(args.run_dir) / "results.json").is_file():
        raise InputError(f"{args.run_dir}: not a finished study folder (no results.json)")
    from .analysis import analyse
    analyse(args.run_dir)
    print((Path(args.run_dir) / "analysis.md").read_text(), end="")
    return 0


def study_log(mode: str):
    """Where the study's progress goes: every line on a terminal (beside the bars); in a log
    or a pipe every line but the training step lines (``  mae: step 40/400 loss ...``),
    which come at most one every few seconds; nothing with --quiet."""
    if not mode:
        return lambda line: None
    if mode == BAR:
        return emit
    ticker = LineTicker()

    def log(line: str) -> None:
        if ": step " not in line or ticker.due():
            emit(line)
    return log


def run_study_command(args) -> int:
    from .config import load_study_config     # imports the data pipeline (torch)
    cfg = load_study_config(args.config, args.overrides, args.seed)   # fails fast on bad keys
    out = args.out if args.out is not None else cfg.run.out_dir
    check_output_folder(out, "--out", "the study's results")
    from .run import run_study
    mode = show_progress(args.quiet)
    log = study_log(mode)
    log(f"xray2xray study: config {cfg.name}, seed {cfg.seed}, methods "
        f"{', '.join(cfg.methods)}; output {out}")
    res = run_study(cfg, out, progress=mode == BAR, log=log)
    for meth in cfg.methods:
        for frac in res["label_fractions"]:
            r = res["results"][meth][frac]
            parts = []
            for task, label in (("pathology_macro", "pathology AUROC"), ("event", "event AUROC"),
                                ("c_index", "C-index")):
                v = r[task]["value"]
                parts.append(f"{label} {'n/a' if v is None else f'{v:.3f}'}")
            print(f"{meth:<11} {float(frac) * 100:3.0f}% labels: " + ", ".join(parts))
    return 0

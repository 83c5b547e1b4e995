"""``xray2xray probe``: fit and cross-validate probe heads on a model's frozen latents.

Kept beside the probe code; the main CLI only registers it and turns package errors into
one line and exit status 2.
"""
from __future__ import annotations

import argparse
import json

from ..console import show_progress
from ..conventions import parse_angles
from ..errors import InputError
from ..fileutil import check_output_file
from . import PATHOLOGIES, RISK_LABELS


def add_probe_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``probe`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        "probe", help="fit risk / pathology probes on a model's latents (cross-validated)",
        description="Render each labelled CT's frontal DRR as the model saw views in training, "
        "take the pooled latent of that view and of views imagined at --imagined angles, and "
        "fit linear heads: logistic per binary label (AUROC) and, for --task risk, a Cox head "
        "on time-to-event (C-index). Prints stratified K-fold cross-validated metrics with "
        "bootstrap 95%% CIs as JSON; the final heads are fitted on all CTs. Each CT is seen "
        "through --views random acquisitions; logistic heads are Platt-calibrated on their "
        "out-of-fold logits (ECE before/after reported, reliability diagrams written) and the "
        "card gets an out-of-distribution reference (Mahalanobis distance, Ledoit-Wolf "
        "covariance) whose threshold comes from --heldout.")
    p.add_argument("--model", default=None,
                   help="model file, training checkpoint / run folder or registered name "
                   "(default: the default model)")
    p.add_argument("--data", required=True,
                   help="CTs: folder, CSV manifest, single CT or phantom:N[:FIRST_SEED]")
    p.add_argument("--labels", default=None, metavar="CSV",
                   help="labels CSV with an id column matching the CT ids (phantom-00000, "
                   "file stems, a manifest's ids); default: the --data manifest's own columns")
    p.add_argument("--task", required=True, choices=("pathology", "risk"))
    p.add_argument("--labels-columns", nargs="+", default=None, metavar="COL",
                   help="binary label columns, COLUMN or NAME=COLUMN, comma- or space-"
                   f"separated (default: pathology {','.join(PATHOLOGIES)}; risk "
                   f"{','.join(RISK_LABELS)}; 'none' for a risk probe with a Cox head only)")
    p.add_argument("--id-column", default="id", help="id column of the labels CSV (default: id)")
    p.add_argument("--time-column", default="time",
                   help="risk: time-to-event column for the Cox head, or 'none' (default: time)")
    p.add_argument("--event-column", default="event",
                   help="risk: event indicator column, 1 event 0 censored (default: event)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default: 5)")
    p.add_argument("--imagined", default="90", metavar="DEG,DEG|none",
                   help="imagined view angles whose latents join the features (default: 90)")
    p.add_argument("--angle", type=float, default=0.0,
                   help="angle of the observed view, degrees (default: 0, PA)")
    p.add_argument("--C", dest="C", default="auto",
                   help="logistic inverse L2 strength, or auto (inner CV; default)")
    p.add_argument("--cox-alpha", default="auto",
                   help="Cox ridge penalty, or auto (inner CV; default)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples for the 95%% CIs (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="folds and bootstrap seed (default: 0)")
    p.add_argument("--out", default=None, metavar="JSON",
                   help="write the task's heads and metrics (JSON) here")
    p.add_argument("--save-into", default=None, metavar="MODEL_OUT",
                   help="write a new model file whose card carries these heads (merged with "
                   "the model's existing heads), for `infer` to report")
    p.add_argument("--views", type=int, default=4, metavar="N",
                   help="random acquisitions per CT (the model's training augmentation, a "
                   "random detector and display look-up, through the inference "
                   "preprocessing); 0: one clean centred view (default: 4)")
    p.add_argument("--heldout", default=None, metavar="DATA",
                   help="held-out in-domain CTs (never used for fitting): their OOD scores set "
                   "the threshold (99th percentile) stored with the reference; labelled ones "
                   "(a manifest with the label columns) also get held-out AUROC and ECE")
    p.add_argument("--diagrams", default=None, metavar="DIR",
                   help="folder for the reliability diagrams (default: beside --out or "
                   "--save-into)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars or progress lines (results and errors only)")
    p.set_defaults(func=run_probe)
    return p


def _number_or_auto(value: str, what: str):
    if str(value).lower() == "auto":
        return "auto"
    try:
        v = float(value)
    except ValueError:
        raise InputError(f"{what} must be a positive number or auto, got {value!r}") from None
    if not v > 0:
        raise InputError(f"{what} must be a positive number or auto, got {value!r}")
    return v


def run_probe(args) -> int:
    progress = show_progress(args.quiet)
    if args.folds < 2:
        raise InputError(f"--folds must be at least 2, got {args.folds}")
    if args.bootstrap < 0:
        raise InputError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if args.views < 0:
        raise InputError(f"--views must be >= 0, got {args.views}")
    C = _number_or_auto(args.C, "--C")
    alpha = _number_or_auto(args.cox_alpha, "--cox-alpha")
    imagined = [] if args.imagined.strip().lower() in ("none", "") else \
        [float(a) for a in parse_angles(args.imagined)]
    from .run import parse_columns, probe_task   # torch and the renderers: only now
    risk = args.task == "risk"
    columns = parse_columns(args.labels_columns, RISK_LABELS if risk else PATHOLOGIES)
    time_col = args.time_column if risk and args.time_column.lower() != "none" else None
    for out, option in ((args.out, "--out"), (args.save_into, "--save-into")):
        if out is not None:
            check_output_file(out, option, what="file name")
    summary = probe_task(args.data, args.task, model=args.model, labels=args.labels,
                         columns=columns, id_column=args.id_column, time_column=time_col,
                         event_column=args.event_column, folds=args.folds, imagined=imagined,
                         angle=args.angle, C=C, alpha=alpha, n_boot=args.bootstrap,
                         seed=args.seed, out=args.out, save_into=args.save_into,
                         device=args.device, progress=progress, views=args.views,
                         heldout=args.heldout, diagrams=args.diagrams)
    print(json.dumps(summary, indent=1))
    return 0

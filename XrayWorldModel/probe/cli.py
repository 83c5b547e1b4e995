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
                   help="CTs: folder, CSV manifest, single CT or phantom:N[:FIRST_SEED]; or "
                   "radiographs: a folder (with --labels), a manifest CSV with a path column, "
                   "NIH ChestX-ray14 Data_Entry_2017*.csv, CheXpert train/valid.csv, or "
                   "MIMIC-CXR-JPG's metadata CSV (its label CSV as --labels)")
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
    p.add_argument("--angle", type=float, default=None,
                   help="angle of the observed view, degrees (default: 0, PA; 90 with "
                   "--projection lateral)")
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
                   help="held-out in-domain CTs, or radiographs read like --data (never used "
                   "for fitting): their OOD scores set "
                   "the threshold (99th percentile) stored with the reference; labelled ones "
                   "(a manifest with the label columns) also get held-out AUROC and ECE")
    p.add_argument("--diagrams", default=None, metavar="DIR",
                   help="folder for the reliability diagrams (default: beside --out or "
                   "--save-into)")
    p.add_argument("--presentation", choices=("line-integrals", "display"),
                   default="line-integrals",
                   help="CTs with --views 0: the clean view as line integrals (default) or as "
                   "a display image (windowed as drr --png/--dicom write it) through the "
                   "inference preprocessing, image for image what probe sees on drr's files")
    _radiograph_arguments(p)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars or progress lines (results and errors only)")
    p.set_defaults(func=run_probe)
    return p


def _radiograph_arguments(p: argparse.ArgumentParser) -> None:
    r = p.add_argument_group("radiograph datasets")
    r.add_argument("--source", choices=("auto", "ct", "radiographs"), default="auto",
                   help="what --data holds (default: auto, from the files)")
    r.add_argument("--images", default=None, metavar="DIR",
                   help="folder of the images a label file names (default: beside the CSV; "
                   "NIH: also its images/ and images_*/images/)")
    r.add_argument("--uncertain", choices=("zeros", "ones", "ignore"), default="zeros",
                   help="CheXpert / MIMIC -1 (uncertain) labels: 0 (U-Zeros, default), 1 "
                   "(U-Ones) or left out")
    r.add_argument("--projection", choices=("frontal", "lateral"), default="frontal",
                   help="probe the PA/AP images (default; laterals skipped and counted) or "
                   "the lateral ones on their own")
    r.add_argument("--test-csv", default=None, metavar="FILE",
                   help="official test split, scored by the fitted heads: NIH test_list.txt, "
                   "MIMIC's split CSV, or a label file like --data (CheXpert valid.csv)")
    r.add_argument("--pixel-spacing", type=float, default=None, metavar="MM",
                   help="detector pixel spacing of PNG/JPEG files the label file gives none "
                   "for (default: what infer assumes for such a file)")
    r.add_argument("--cache", default=None, metavar="DIR",
                   help="feature cache folder (default: probe-features/ in $XRAY2XRAY_CACHE, "
                   "else in the user cache folder)")
    r.add_argument("--batch-size", type=int, default=32, help="images per batch (default: 32)")
    r.add_argument("--workers", type=int, default=2,
                   help="DataLoader processes decoding images (default: 2; 0: this process)")
    r.add_argument("--shard", default=None, metavar="I/N",
                   help="only extract and cache shard I of N (0-based; default: torchrun's "
                   "RANK/WORLD_SIZE, else all and fit); then run without --shard to fit")


def parse_shard(text):
    """``--shard I/N`` -> (I, N); None -> torchrun's RANK / WORLD_SIZE, else None."""
    from ..drr.batch import shard_of
    if text is None:
        n, i = shard_of(None, None)
        return (i, n) if n > 1 else None
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise InputError(f"--shard takes I/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return i, n


def _check_radiograph_options(args, radiographs: bool) -> None:
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.workers < 0:
        raise InputError(f"--workers must be >= 0, got {args.workers}")
    if args.pixel_spacing is not None and not args.pixel_spacing > 0:
        raise InputError(f"--pixel-spacing must be positive, got {args.pixel_spacing}")
    if radiographs and args.presentation != "line-integrals":
        raise InputError("--presentation is for CTs; radiograph files are read as infer reads them")
    if args.presentation == "display" and args.views != 0:
        raise InputError("--presentation display is how the one clean view is given: use it "
                         "with --views 0")
    if not radiographs:
        used = [o for o, v in (("--test-csv", args.test_csv), ("--images", args.images),
                               ("--shard", args.shard), ("--pixel-spacing", args.pixel_spacing))
                if v is not None] + (["--projection lateral"] if args.projection != "frontal"
                                     else [])
        if used:
            raise InputError(f"{', '.join(used)}: for radiograph datasets, and --data holds CTs")


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
    from .datasets import is_radiograph_source
    radiographs = args.source == "radiographs" or (args.source == "auto"
                                                   and is_radiograph_source(args.data))
    _check_radiograph_options(args, radiographs)
    from .run import parse_columns, probe_task   # torch and the renderers: only now
    risk = args.task == "risk"
    columns = parse_columns(args.labels_columns, RISK_LABELS if risk else PATHOLOGIES)
    time_col = args.time_column if risk and args.time_column.lower() != "none" else None
    for out, option in ((args.out, "--out"), (args.save_into, "--save-into")):
        if out is not None:
            check_output_file(out, option, what="file name")
    common = dict(model=args.model, labels=args.labels, columns=columns,
                  id_column=args.id_column, time_column=time_col, event_column=args.event_column,
                  folds=args.folds, imagined=imagined, C=C, alpha=alpha, n_boot=args.bootstrap,
                  seed=args.seed, out=args.out, save_into=args.save_into, device=args.device,
                  progress=progress, heldout=args.heldout, diagrams=args.diagrams)
    if radiographs:
        from .radiographs import probe_radiographs
        summary = probe_radiographs(
            args.data, args.task, angle=args.angle, images=args.images,
            uncertain=args.uncertain, projection=args.projection, test_csv=args.test_csv,
            cache=args.cache, batch_size=args.batch_size, workers=args.workers,
            shard=parse_shard(args.shard), pixel_spacing=args.pixel_spacing, **common)
    else:
        summary = probe_task(args.data, args.task, angle=args.angle or 0.0, views=args.views,
                             presentation=args.presentation, **common)
    print(json.dumps(summary, indent=1))
    return 0

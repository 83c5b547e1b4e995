"""``xray2xray probe``: fit and cross-validate probe heads on a model's frozen latents.

Kept beside the probe code; the main CLI only registers it and turns package errors into
one line and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import InputError


def add_probe_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``probe`` subcommand to ``subparsers``."""
    from . import PATHOLOGIES, RISK_LABELS
    p = subparsers.add_parser(
        "probe", help="fit risk / pathology probes on a model's latents (cross-validated)",
        description="Render each labelled CT's frontal DRR as the model saw views in training, "
        "take the pooled latent of that view and of views imagined at --imagined angles, and "
        "fit linear heads: logistic per binary label (AUROC) and, for --task risk, a Cox head "
        "on time-to-event (C-index). Prints stratified K-fold cross-validated metrics with "
        "bootstrap 95%% CIs as JSON; the final heads are fitted on all CTs.")
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
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
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
    from ..data import resolve_source
    from ..conventions import parse_angles
    from . import PATHOLOGIES, RISK_LABELS
    from .run import (build_targets, match_ids, parse_columns, read_labels_csv,
                      save_heads_into, table_from_items)

    progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
    if args.folds < 2:
        raise InputError(f"--folds must be at least 2, got {args.folds}")
    if args.bootstrap < 0:
        raise InputError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    C = _number_or_auto(args.C, "--C")
    alpha = _number_or_auto(args.cox_alpha, "--cox-alpha")
    imagined = [] if args.imagined.strip().lower() in ("none", "") else \
        [float(a) for a in parse_angles(args.imagined)]
    risk = args.task == "risk"
    columns = parse_columns(args.labels_columns, RISK_LABELS if risk else PATHOLOGIES)
    time_col = args.time_column if risk and args.time_column.lower() != "none" else None
    for out in (args.out, args.save_into):
        if out is not None and Path(out).expanduser().is_dir():
            raise InputError("is a folder; give a file name", out)

    # labels first: a bad CSV fails in a second, before any model is loaded or CT rendered
    items = resolve_source(args.data)
    table = read_labels_csv(args.labels, args.id_column) if args.labels else table_from_items(items)
    ids = match_ids([it.id for it in items], table)
    build_targets(args.task, table, ids, columns, time_col, args.event_column)

    from ..weights import load_world_model
    from .features import extract_features, feature_spec, render_frontal_views
    from .run import fit_task
    model, card = load_world_model(args.model, args.device)
    keep = set(ids)
    images, got = render_frontal_views([it for it in items if it.id in keep], card, args.angle,
                                       device=args.device, progress=progress)
    if not got:
        raise InputError("none of the labelled CTs could be read")
    targets = build_targets(args.task, table, got, columns, time_col, args.event_column)
    features = extract_features(model, images, args.angle, imagined, progress=progress)
    spec = feature_spec(model, args.angle, imagined)
    model_id = {"name": card.get("name", card.get("model")), "version": card.get("version"),
                "sha256": card.get("content_sha256", card.get("sha256"))}
    trained_on = {"data": args.data,
                  "labels": str(Path(args.labels).resolve()) if args.labels else "data source",
                  "columns": dict(columns), "model": model_id}
    if time_col:
        trained_on.update(time_column=time_col, event_column=args.event_column)
    if args.labels:
        from ..fileutil import sha256_of
        trained_on["labels_sha256"] = sha256_of(Path(args.labels))
    entry = fit_task(features, targets, spec, args.folds, args.seed, args.bootstrap, C, alpha,
                     trained_on)

    written = {}
    if args.out:
        from ..fileutil import atomic_path
        out = Path(args.out).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            Path(tmp).write_text(json.dumps(entry, indent=1))
        written["out"] = str(out)
    if args.save_into:
        written["saved_into"] = str(save_heads_into(args.model, Path(args.save_into).expanduser(),
                                                    {args.task: entry}))
    summary = {"task": args.task, "model": model_id, "data": args.data,
               "labels": trained_on["labels"], "n": len(got), "features": spec,
               "metrics": entry["metrics"],
               "heads": [{"kind": h["kind"], **({"labels": h["labels"]} if h["kind"] == "logistic"
                                                 else {"name": h["name"]})}
                         for h in entry["heads"]], **written}
    print(json.dumps(summary, indent=1))
    return 0

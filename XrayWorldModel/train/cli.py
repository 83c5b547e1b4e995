"""``xray2xray train`` and ``xray2xray eval-views``: the world model's training and its
novel-view evaluation. Also behind ``python -m XrayWorldModel.train`` (and torchrun)."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..console import PROG, emit, show_progress
from ..conventions import parse_angles


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` and ``eval-views`` subcommands to ``subparsers``; returns ``train``'s."""
    t = subparsers.add_parser(
        "train", help="train the world model on CTs (or phantoms)",
        description="Train the world model. Views are rendered on the fly from the configured "
        "CTs; checkpoints go to run.out_dir/checkpoints. Under torchrun it trains "
        "data-parallel on every rank.")
    t.add_argument("--config", required=True,
                   help="a preset (cpu-small, paper) or a .json/.toml config file")
    t.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. optim.steps=500 data.source=phantom:32")
    t.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from a checkpoint (default: the latest in run.out_dir) with "
                   "the run's recorded config; overrides given now change it, and the change "
                   "is reported")
    t.add_argument("--quiet", action="store_true",
                   help="no progress bar or progress lines (messages and errors only)")
    t.set_defaults(func=cmd_train)

    e = subparsers.add_parser(
        "eval-views", help="novel-view PSNR/SSIM of a trained model, as JSON",
        description="Predict views at --angles from the frontal (0 deg) view of each CT in "
        "--data and compare with the true DRRs, next to two baselines: copying the input view "
        "and the mean training view.")
    e.add_argument("--model", required=True, help="checkpoint file or run folder")
    e.add_argument("--data", required=True, help="CT folder, CSV manifest or phantom:N[:SEED]")
    e.add_argument("--angles", default=None, help="target angles, e.g. 45,90 (default: the run's)")
    e.add_argument("--limit", type=int, default=None, help="evaluate at most N CTs")
    e.add_argument("--seed", type=int, default=None,
                   help="first phantom seed when --data is phantom:N (same as phantom:N:SEED)")
    e.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    e.set_defaults(func=cmd_eval_views)
    return t


def cmd_train(args) -> int:
    from ..config import load_config        # imports the data pipeline (torch)
    from .preflight import prepare_run
    overrides, resume = list(args.overrides), args.resume
    if resume is not None and "=" in resume and not Path(resume).exists():
        overrides, resume = overrides + [resume], "auto"    # `--resume optim.steps=60`
    cfg = load_config(args.config, overrides)
    plan = prepare_run(cfg, overrides, resume)     # before any work
    rank0 = int(os.environ.get("RANK", "0")) == 0
    for note in plan.notes if rank0 else ():
        emit(f"{PROG} train: {note}")
    if plan.done:
        return 0
    from .trainer import train
    cfg = plan.config
    last = train(cfg, resume=plan.checkpoint, progress=show_progress(args.quiet))
    if rank0:
        emit(f"trained to step {cfg.optim.steps}; final loss {last.get('total', float('nan')):.4f}; "
             f"checkpoints in {Path(cfg.run.out_dir) / 'checkpoints'}")
    return 0


def cmd_eval_views(args) -> int:
    from ..data import is_stack_source, list_stacks, resolve_source
    from .checkpoint import read_checkpoint_card
    from .evaluate import evaluate_checkpoint
    data = args.data
    if args.seed is not None and data.startswith("phantom:") and data.count(":") == 1:
        data = f"{data}:{args.seed}"
    angles = None if args.angles is None else [float(a) for a in parse_angles(args.angles)]
    read_checkpoint_card(args.model)         # bad input fails before the model is loaded
    (list_stacks if is_stack_source(data) else resolve_source)(data)
    result = evaluate_checkpoint(args.model, data, angles, limit=args.limit, device=args.device)
    print(json.dumps(result, indent=1))
    return 0

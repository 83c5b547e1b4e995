"""``xray2xray train``: the world model's training. Also behind ``python -m
XrayWorldModel.train`` (and torchrun). Its evaluation, ``eval-views``, takes any model (a
name, model file, checkpoint or run folder), so it lives with ``eval-volume`` in
:mod:`XrayWorldModel.infer.cli`."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..console import PROG, emit, show_progress


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to ``subparsers`` and return it."""
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

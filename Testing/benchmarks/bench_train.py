#!/usr/bin/env python
"""Training throughput: samples per second and the share of each step spent rendering views.

    python Testing/benchmarks/bench_train.py                       # cpu-small on the CPU
    python Testing/benchmarks/bench_train.py --config paper --device cuda --batch-size 64

Runs the real training loop (on-the-fly DRRs from procedural phantoms, all losses, AdamW,
EMA) for a few warm-up steps and then ``--steps`` timed steps, and prints a markdown table:
seconds per step, samples per second, and the fraction of the step spent rendering.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="cpu-small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--phantoms", type=int, default=8)
    args = ap.parse_args()

    import numba
    import torch
    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    from XrayWorldModel.config import load_config
    from XrayWorldModel.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        over = [f"data.source=\"phantom:{args.phantoms}\"", "data.val_count=0",
                f"run.out_dir=\"{tmp}/run\"", f"run.device=\"{args.device}\"",
                "run.val_every=0", "run.checkpoint_every=0", "run.log_every=1000000",
                f"optim.steps={args.warmup + args.steps}"]
        if args.batch_size:
            over.append(f"optim.batch_size={args.batch_size}")
        cfg = load_config(args.config, over)
        trainer = Trainer(cfg, progress=False)
        sync = (lambda: torch.cuda.synchronize()) if trainer.device.type == "cuda" else (lambda: None)
        render = total = 0.0
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            batch = trainer._batch(i)
            sync()
            t1 = time.perf_counter()
            losses = trainer.objective(batch.context, batch.context_angle, batch.targets, batch.deltas)
            trainer.opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            trainer.opt.step()
            trainer.ema.update(trainer.model.encoder, i, cfg.optim.steps)
            sync()
            t2 = time.perf_counter()
            if i >= args.warmup:
                render += t1 - t0
                total += t2 - t0
    B = cfg.optim.batch_size
    K = cfg.views.targets_per_context
    print(f"Training throughput: config {args.config}, device {args.device}, {args.threads} threads, "
          f"batch {B} x (1 + {K}) views of {cfg.views.image_size}px, {args.steps} timed steps")
    print()
    print("| config | device | batch | s / step | samples / s | views rendered / s | render share |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.config} | {args.device} | {B} | {total / args.steps:.3f} | "
          f"{B * args.steps / total:.1f} | {B * (1 + K) * args.steps / total:.0f} | {render / total:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

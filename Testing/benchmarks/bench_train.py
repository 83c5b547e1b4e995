#!/usr/bin/env python
"""Training throughput: samples per second and the share of each step spent rendering views.

    python Testing/benchmarks/bench_train.py                       # cpu-small on the CPU
    python Testing/benchmarks/bench_train.py --config paper --device cuda --steps 10
    python Testing/benchmarks/bench_train.py --resolutions 64,128  # what a finer model costs

Runs the trainer's own step (``Trainer._train_step``: on-the-fly DRRs of procedural phantoms,
all losses, gradient clipping, AdamW, the schedule, EMA; bf16 autocast on CUDA when the
config says so) for ``--warmup`` steps and then ``--steps`` timed steps, and prints a markdown
table: seconds per step, samples per second, views rendered per second, milliseconds per
rendered view and the fraction of the step spent rendering (the trainer's own split: drawing
and rendering the batch vs the whole step). ``measure`` is also what ``gpu_check.py`` runs.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def measure(config: str = "cpu-small", device: str = "cpu", steps: int = 20, warmup: int = 3,
            batch_size=None, phantoms: int = 8, overrides=(), out_dir=None) -> dict:
    """Time ``steps`` training steps after ``warmup`` of ``config`` on ``phantoms`` procedural
    chests (all generated during the warm-up, so the timed steps render only)."""
    import torch
    from XrayWorldModel.config import load_config
    from XrayWorldModel.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        over = [f"data.source=\"phantom:{phantoms}\"", "data.val_count=0",
                f"run.out_dir=\"{out_dir or tmp}/run\"", f"run.device=\"{device}\"",
                "run.val_every=0", "run.checkpoint_every=0", "run.log_every=1000000",
                f"optim.steps={warmup + steps}"]
        if batch_size:
            over.append(f"optim.batch_size={batch_size}")
        cfg = load_config(config, over + list(overrides))
        t0 = time.perf_counter()
        trainer = Trainer(cfg, progress=None)
        setup_s = time.perf_counter() - t0
        cuda = trainer.device.type == "cuda"
        bf16 = bool(cuda and cfg.run.bf16)
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()
        render = total = 0.0
        for i in range(warmup + steps):
            if i == warmup and cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            *_, t_render, t_total = trainer._train_step(amp)   # ends with float(loss): synced
            if i >= warmup:
                render += t_render
                total += t_total
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    B = cfg.optim.batch_size
    views = B * (1 + cfg.views.targets_per_context)
    return {"config": config, "device": str(trainer.device), "batch_size": B,
            "views_per_sample": 1 + cfg.views.targets_per_context,
            "image_size": cfg.views.image_size, "phantoms": phantoms, "steps": steps,
            "warmup": warmup, "setup_s": setup_s, "s_per_step": total / steps,
            "steps_per_s": steps / total, "samples_per_s": B * steps / total,
            "views_rendered_per_s": views * steps / total,
            "ms_per_rendered_view": 1e3 * render / (views * steps),
            "render_share": render / total, "bf16": bf16, "peak_gpu_mb": peak,
            "torch_threads": torch.get_num_threads()}


def table(rows) -> str:
    head = ("| config | device | batch x views | s / step | steps / s | samples / s | "
            "views rendered / s | ms / rendered view | render share | bf16 | peak GPU (MB) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        peak = "n/a" if r["peak_gpu_mb"] is None else f"{r['peak_gpu_mb']:,.0f}"
        lines.append(f"| {r['config']} | {r['device']} | {r['batch_size']} x {r['views_per_sample']} "
                     f"({r['image_size']} px) | {r['s_per_step']:.3f} | {r['steps_per_s']:.2f} | "
                     f"{r['samples_per_s']:.1f} | {r['views_rendered_per_s']:.0f} | "
                     f"{r['ms_per_rendered_view']:.2f} | {r['render_share']:.1%} | "
                     f"{'yes' if r['bf16'] else 'no'} | {peak} |")
    return "\n".join(lines)


def view_sizes(text: str) -> list:
    """``--resolutions``: comma-separated positive view sizes (a one-line usage error else)."""
    try:
        sizes = [int(v) for v in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"expected sizes in pixels like 64,128, got {text!r}")
    return sizes


def resolution_overrides(n: int) -> list:
    """Config overrides for ``n``-px views and model, one row band per image row."""
    return [f"views.image_size={n}", f"model.image_size={n}", f"model.patch_width={n}"]


def resolution_table(rows, budget_min: float) -> str:
    """Each size's cost per step relative to the first row, and the steps it gets in budget."""
    lines = ["| view size | s / step | cost vs first | steps in %.0f min |" % budget_min,
             "|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['image_size']} px | {r['s_per_step']:.3f} | "
                     f"{r['s_per_step'] / rows[0]['s_per_step']:.2f}x | "
                     f"{budget_min * 60 / r['s_per_step']:,.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--config", default="cpu-small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for torch and numba")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--phantoms", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1,
                    help="measure this many times in a row and report each and the median")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--resolutions", default=None, metavar="N,N", type=view_sizes,
                    help="measure the config at each view size (model and views resized, one "
                         "row band per image row as cpu-small has), side by side with the cost "
                         "ratio to the first: does a finer model fit the training budget?")
    ap.add_argument("--budget-min", type=float, default=90.0,
                    help="with --resolutions: the training budget the steps are counted in")
    args = ap.parse_args(argv)

    import numba
    import torch
    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    if args.resolutions:
        sizes = args.resolutions
        rows = [measure(args.config, args.device, args.steps, args.warmup, args.batch_size,
                        args.phantoms, resolution_overrides(n)) for n in sizes]
        print(f"Training cost against view size: config {args.config}, device {rows[0]['device']}, "
              f"{args.threads} threads, {args.steps} timed steps after {args.warmup}; "
              f"{time.strftime('%Y-%m-%d %H:%M')}\n")
        print(table(rows))
        print()
        print(resolution_table(rows, args.budget_min))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return 0
    rows = [measure(args.config, args.device, args.steps, args.warmup, args.batch_size,
                    args.phantoms) for _ in range(args.repeats)]
    r = rows[0]
    print(f"Training throughput: config {args.config}, device {r['device']}, {args.threads} threads, "
          f"batch {r['batch_size']} x {r['views_per_sample']} views of {r['image_size']} px, "
          f"{args.steps} timed steps after {args.warmup}, {args.phantoms} phantoms; "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    print()
    print(table(rows))
    if len(rows) > 1:
        import statistics
        print(f"\nmedian of {len(rows)}: {statistics.median(x['samples_per_s'] for x in rows):.1f} "
              f"samples/s, render share {statistics.median(x['render_share'] for x in rows):.1%}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Phantom generation time: the procedural chest (``phantom:chest``, the default) against the
realistic variant (``phantom:chest2``), as a plain volume and as a labelled cohort case (all
five findings and calcium), at the grid training uses and at a coarse and a fine one.

Run from the repository root::

    python Testing/benchmarks/bench_phantom.py                 # all three grids, 5 seeds each
    python Testing/benchmarks/bench_phantom.py --quick         # training grid only, 3 seeds
    python Testing/benchmarks/bench_phantom.py --threads 2 --json phantom.json

Each cell is the median wall time over seeds 100, 101, ... (one untimed warm-up call first),
the generators interleaved seed by seed so that a busy machine slows them alike. Single
threaded by default (``OMP_NUM_THREADS`` and friends are set before numpy is imported), as a
data-loader worker would run. Needs no data files.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

GRIDS = {  # name: (shape, spacing mm)
    "coarse 64x64x48": ((64, 64, 48), (5.6, 5.6, 7.0)),
    "training 128x128x96": ((128, 128, 96), (2.8, 2.8, 3.5)),
    "fine 256x256x192": ((256, 256, 192), (1.4, 1.4, 1.75)),
}


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="training grid only, 3 seeds")
    ap.add_argument("--seeds", type=int, default=5, help="timed seeds per cell (default 5)")
    ap.add_argument("--threads", type=int, default=1, help="numpy/BLAS threads (default 1)")
    ap.add_argument("--json", default=None, help="also write the results here")
    return ap.parse_args(argv)


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000.0


def bench(grids, n_seeds):
    """{grid: {row: median ms}} for the four generator rows."""
    import numpy as np

    from XrayWorldModel.phantom import CohortConfig, cohort_case
    from XrayWorldModel.phantom.variants import chest_volume

    every = CohortConfig.with_prevalence(1.0)
    results = {}
    for name in grids:
        shape, spacing = GRIDS[name]
        rows = {
            "chest": lambda s: chest_volume("chest", seed=s, shape=shape, spacing=spacing),
            "chest2": lambda s: chest_volume("chest2", seed=s, shape=shape, spacing=spacing),
            "chest cohort case": lambda s: cohort_case(s, shape, spacing, every, kind="chest"),
            "chest2 cohort case": lambda s: cohort_case(s, shape, spacing, every, kind="chest2"),
        }
        for fn in rows.values():
            fn(99)                                           # warm-up, not timed
        times = {row: [] for row in rows}
        for seed in range(100, 100 + n_seeds):
            for row, fn in rows.items():
                times[row].append(_time(lambda: fn(seed)))
        results[name] = {row: float(np.median(t)) for row, t in times.items()}
        print(f"  {name}: done", file=sys.stderr, flush=True)
    return results


def table(results) -> str:
    lines = ["| grid | chest ms | chest2 ms | ratio | chest cohort case ms | "
             "chest2 cohort case ms |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['chest']:.0f} | {r['chest2']:.0f} | "
                     f"{r['chest2'] / r['chest']:.1f}x | {r['chest cohort case']:.0f} | "
                     f"{r['chest2 cohort case']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    grids = ["training 128x128x96"] if args.quick else list(GRIDS)
    n_seeds = 3 if args.quick else args.seeds
    results = bench(grids, n_seeds)
    print(f"median ms per phantom over {n_seeds} seeds, {args.threads} thread(s), "
          f"{platform.processor() or platform.machine()}, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "seeds": n_seeds,
                                               "ms": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Radiograph-style augmentation of the context view: milliseconds per view.

Run from the repository root::

    python Testing/benchmarks/bench_radiograph_style.py             # 64 and 256 px, 50 views
    python Testing/benchmarks/bench_radiograph_style.py --sizes 64 --views 200 --json out.json

A frontal DRR of a procedural chest at the model's detector (400 mm at the isocentre) is
styled ``--views`` times (``data/radiograph_style.py``), one thread, each with a new seed:
each effect alone, all effects, and the training draw at probability 0.5 and 1
(``views.radiograph_style``), whose mean includes the views that drew no effect. The last
column is the render of one training sample (context and 4 targets) for scale.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def _ms(fn, n: int) -> float:
    t = time.perf_counter()
    for seed in range(n):
        fn(seed)
    return 1000.0 * (time.perf_counter() - t) / n


def measure(size: int, n: int) -> dict:
    import numpy as np
    import torch
    from XrayWorldModel.data import ViewSampling
    from XrayWorldModel.data import radiograph_style as rs
    from XrayWorldModel.drr import DRRRenderer
    from XrayWorldModel.phantom import procedural_chest
    torch.set_num_threads(1)
    s = ViewSampling(image_size=size)
    vol = procedural_chest(3)
    renderer = DRRRenderer(vol, "fast", "cpu", s.mu_water)
    drr = renderer.render(s.geometry([0.0], 0.0, vol.center))[0]
    ctx = torch.from_numpy(drr)
    rng = np.random.default_rng
    row = {"size": size}
    for effect in rs.EFFECTS:
        row[effect] = _ms(lambda k, e=effect: rs.radiograph_style(drr, [e], rng(k)), n)
    row["all"] = _ms(lambda k: rs.radiograph_style(drr, rs.EFFECTS, rng(k)), n)
    for p in (0.5, 1.0):
        row[f"p={p:g}"] = _ms(lambda k, p=p: rs.style_context(ctx, p, rng(k)), n)
    sample = s.geometry([0.0, 15.0, 30.0, 45.0, 60.0], 0.0, vol.center)
    row["render sample"] = _ms(lambda k: renderer.render_tensor(sample), n)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--views", type=int, default=50)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = [measure(size, args.views) for size in args.sizes]
    keys = [k for k in rows[0] if k != "size"]
    print("ms per view  " + "  ".join(f"{k:>9}" for k in keys))
    for r in rows:
        print(f"{r['size']:>4} px      " + "  ".join(f"{r[k]:9.2f}" for k in keys))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

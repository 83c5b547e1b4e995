#!/usr/bin/env python
"""Anatomy augmentation on the real chest CTs: is each new patient plausible, and how fast?

Run from the repository root::

    python Testing/benchmarks/bench_anatomy.py                  # 3 real CTs x 20 seeds
    python Testing/benchmarks/bench_anatomy.py --seeds 5 --json anatomy.json

Each CT is preprocessed as training does (the ``cpu-small`` preset's grid: 96^3 voxels of
3.5 mm, ``data/cache.py``), then patients 0..N-1 are made from it (``data/anatomy.py``). Per
CT the table gives: ms per augmentation (median wall time over the seeds, and the CPU time
in brackets, which shared cores inflate less; one thread; the CT's landmarks already found,
finding them is the next column, once per CT), the least and
greatest Jacobian determinant of the deformation over every voxel and seed (> 0: no
folding), and the fraction of lung voxels (the CT's thresholded lungs carried by the
deformation) outside the augmented CT's body mask, and outside the bony hull (per axial
slice, the convex hull of bone > 200 HU within +-15 mm): the CT's bone carried by the same
deformation (geometry alone), and bone thresholded on the augmented CT (blur, thick slices
and HU scale included), worst seed and mean. "CT itself" is the hull fraction on the
unaugmented CT, the floor of this measurement (ribs partial-volumed away at 3.5 mm leave
gaps in the hull).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
DATA = Path(os.environ.get("XRAY2XRAY_SHARED_DATA") or HERE.parents[3] / "shared" / "data")
CTS = ("chest_ct.nii.gz", "real_ct/lidc_idri_0314.nii.gz", "real_ct/lung_pet_ct_dx_a0001.nii.gz")


def measure(path: Path, seeds: int, prep) -> dict:
    """Timing and plausibility of ``seeds`` patients made from the CT at ``path``."""
    import numpy as np

    from XrayWorldModel.data import anatomy
    from XrayWorldModel.data.cache import preprocess
    from XrayWorldModel.io import read_ct

    volume = preprocess(read_ct(path), prep)
    t0 = time.perf_counter()
    landmarks = anatomy.find_landmarks(volume)
    landmark_ms = 1000 * (time.perf_counter() - t0)
    times, cpu, rows = [], [], []
    for seed in range(seeds):
        t0, c0 = time.perf_counter(), time.process_time()
        anatomy.augment_anatomy(volume, seed, landmarks=landmarks)
        times.append(1000 * (time.perf_counter() - t0))
        cpu.append(1000 * (time.process_time() - c0))
        rows.append(anatomy.plausibility(volume, seed))
        print(f"  {path.name} seed {seed}: {times[-1]:.0f} ms, "
              + ", ".join(f"{k} {v:.4f}" for k, v in rows[-1].items()), file=sys.stderr)
    col = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    return {"ct": path.name, "seeds": seeds, "ms_per_augmentation": float(np.median(times)),
            "cpu_ms_per_augmentation": float(np.median(cpu)),
            "landmarks_ms": landmark_ms,
            "jacobian_min": float(col["jacobian_min"].min()),
            "jacobian_max": float(col["jacobian_max"].max()),
            "lung_outside_body_max": float(col["lung_outside_body"].max()),
            "lung_outside_hull_max": float(col["lung_outside_hull"].max()),
            "lung_outside_hull_mean": float(col["lung_outside_hull"].mean()),
            "lung_outside_thresholded_hull_max": float(col["lung_outside_hull_thresholded"].max()),
            "lung_outside_thresholded_hull_mean": float(col["lung_outside_hull_thresholded"].mean()),
            "ct_itself_outside_hull": float(col["baseline_outside_hull"][0])}


def table(results) -> str:
    head = ("| CT | seeds | ms / augmentation (CPU ms) | landmarks ms | min Jacobian | max Jacobian | "
            "lung outside body (worst) | lung outside carried hull (worst / mean) | "
            "lung outside thresholded hull (worst / mean) | CT itself |")
    lines = [head, "|" + " --- |" * 10]
    for r in results:
        lines.append(f"| {r['ct']} | {r['seeds']} | {r['ms_per_augmentation']:.0f} "
                     f"({r['cpu_ms_per_augmentation']:.0f}) | "
                     f"{r['landmarks_ms']:.0f} | {r['jacobian_min']:.3f} | {r['jacobian_max']:.3f} | "
                     f"{100 * r['lung_outside_body_max']:.2f} % | "
                     f"{100 * r['lung_outside_hull_max']:.2f} % / {100 * r['lung_outside_hull_mean']:.2f} % | "
                     f"{100 * r['lung_outside_thresholded_hull_max']:.2f} % / "
                     f"{100 * r['lung_outside_thresholded_hull_mean']:.2f} % | "
                     f"{100 * r['ct_itself_outside_hull']:.2f} % |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=20, help="patients per CT (default 20)")
    ap.add_argument("--preset", default="cpu-small", help="config whose data grid to use")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import torch

    torch.set_num_threads(1)
    from XrayWorldModel.config import load_config

    missing = [str(DATA / c) for c in CTS if not (DATA / c).is_file()]
    if missing:
        print(f"bench_anatomy: missing real CT(s): {', '.join(missing)}", file=sys.stderr)
        return 2
    prep = load_config(args.preset).data.preprocessing()
    print(f"grid {prep.size}^3 x {prep.spacing} mm ({args.preset}), {args.seeds} seeds per CT, "
          f"1 thread", file=sys.stderr)
    results = [measure(DATA / c, args.seeds, prep) for c in CTS]
    print(table(results))
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Pixel spacing from anatomy: how well a hidden spacing is recovered, and at what cost.

Run from the repository root::

    python Testing/benchmarks/bench_scale.py                      # 24 phantoms, real data
    python Testing/benchmarks/bench_scale.py --phantoms 8 --json scale.json

1. Held-out procedural chests (seeds 100.., never in the reference's 0..63), frontal DRRs
   at the demo model's geometry (SDD 1800, SOD 1500) with 0.5, 1.0, 1.5, 2.0 and 2.5 mm
   pixels over 420-480 mm wide detectors; the spacing is hidden and estimated
   (``infer/scale.py``, the fallback reference, the DRRs' own magnification). Reported: the
   error of each estimate, and the spread of one chest's estimates over the five pitches.
2. The three real CTs of ``../shared/data`` the same way at 1.0 mm.
3. The real CR (zero PixelSpacing): its estimate, and ms per estimate on it and on a 256 px
   DRR (one thread, median of 5).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("XRAY2XRAY_SHARED_DATA") or HERE.parents[3] / "shared" / "data")
CTS = ("chest_ct.nii.gz", "real_ct/lidc_idri_0314.nii.gz", "real_ct/lung_pet_ct_dx_a0001.nii.gz")
ACQUISITIONS = ((0.5, 430.0), (1.0, 470.0), (1.5, 440.0), (2.0, 480.0), (2.5, 420.0))


def _drr(volume, pitch, width):
    from XrayWorldModel.drr import DRRRenderer
    from XrayWorldModel.geometry import ProjectionGeometry
    n = int(round(width / pitch))
    g = ProjectionGeometry(angles=(0.0,), detector_shape=(n, n), pixel_spacing=(pitch, pitch),
                           isocenter=tuple(volume.center))
    return DRRRenderer(volume, "fast", "cpu", 0.02).render(g)[0]


def _median_ms(fn, n=5):
    import numpy as np
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(1000.0 * (time.perf_counter() - t))
    return float(np.median(times))


def phantoms(n: int) -> dict:
    import numpy as np
    from XrayWorldModel.infer.scale import estimate_spacing
    from XrayWorldModel.phantom import procedural_chest
    errors, spreads = [], []
    for seed in range(100, 100 + n):
        vol = procedural_chest(seed)
        ratios = [estimate_spacing(_drr(vol, p, w), magnification=1.2).spacing_mm / p
                  for p, w in ACQUISITIONS]
        errors += [r - 1.0 for r in ratios]
        spreads.append(max(ratios) / min(ratios) - 1.0)
    e = np.abs(errors)
    return {"phantoms": n, "estimates": len(errors), "median_abs_error": float(np.median(e)),
            "max_abs_error": float(e.max()), "share_within_10pct": float(np.mean(e < 0.10)),
            "mean_error": float(np.mean(errors)), "max_spread_over_pitches": float(max(spreads))}


def real_data() -> dict:
    import numpy as np
    from XrayWorldModel.infer.scale import estimate_spacing
    from XrayWorldModel.io import read_ct, read_cxr
    out = {}
    for name in CTS:
        if (DATA / name).exists():
            est = estimate_spacing(_drr(read_ct(DATA / name), 1.0, 470.0), magnification=1.2)
            out[Path(name).name] = {"error": est.spacing_mm - 1.0, "measure": est.measure}
    cr = DATA / "chest_cr_pa.dcm"
    if cr.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = read_cxr(cr).image
        est = estimate_spacing(image)
        out["chest_cr_pa.dcm"] = {"spacing_mm": est.spacing_mm, "measure": est.measure,
                                  "lung_width_px": est.widths.lung_px,
                                  "ms": _median_ms(lambda: estimate_spacing(image))}
    from XrayWorldModel.phantom import procedural_chest
    drr = _drr(procedural_chest(100), 1.875, 480.0)
    out["ms_256px_drr"] = _median_ms(lambda: estimate_spacing(drr, magnification=1.2))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phantoms", type=int, default=24)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    result = {"held_out_phantoms": phantoms(args.phantoms), "real": real_data()}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

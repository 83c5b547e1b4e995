"""Measure the anatomy widths the spacing estimator compares radiographs against.

    python tools/scale_reference.py [--phantoms 64] [--config cpu-small] [--ct FILE ...]

Renders frontal DRRs of the first N training phantoms of CONFIG (preprocessed as the trainer
sees them) and of any CT files given, at the model's detector and field of view with 256
pixels across, and prints :func:`XrayWorldModel.infer.scale.anatomy_reference` of the
phantoms, of the CTs, and each CT's own widths. The phantom numbers are
``FALLBACK_REFERENCE`` in ``XrayWorldModel/infer/scale.py``, used for model cards without
``domain.anatomy`` (``tools/build_demo.py`` stores the reference of the model's own training
data there). A release helper, not part of the installed package.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from XrayWorldModel.config import load_config  # noqa: E402
from XrayWorldModel.data import PreprocessedCache, resolve_source  # noqa: E402
from XrayWorldModel.data.cache import VolumeProvider  # noqa: E402
from XrayWorldModel.infer.scale import anatomy_reference, reference_frontals  # noqa: E402


def preprocessed(spec: str, cfg, n: int):
    """The first ``n`` CTs of source ``spec``, preprocessed as ``cfg``'s trainer does."""
    items = resolve_source(spec)[:n]
    cache = PreprocessedCache(Path(cfg.data.cache_dir) if cfg.data.cache_dir else None)
    data = VolumeProvider(items, cache, cfg.data.preprocessing(), len(items))
    return [data.get(i)[0] for i in range(len(items))], [it.id for it in items]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phantoms", type=int, default=64)
    ap.add_argument("--config", default="cpu-small")
    ap.add_argument("--ct", nargs="*", default=[], help="CT files to measure as well")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    mag = cfg.views.sdd / cfg.views.sod
    out = {}
    if args.phantoms:
        vols, _ = preprocessed(f"phantom:{args.phantoms}", cfg, args.phantoms)
        drrs, spacing = reference_frontals(vols, cfg.views)
        out["phantoms"] = anatomy_reference(drrs, spacing, mag,
                                            f"{args.phantoms} procedural phantoms")
    if args.ct:
        vols = [preprocessed(p, cfg, 1)[0][0] for p in args.ct]
        drrs, spacing = reference_frontals(vols, cfg.views)
        out["cts"] = anatomy_reference(drrs, spacing, mag, f"{len(vols)} CTs")
        out["each_ct"] = {Path(p).name: anatomy_reference(d[None], spacing, mag, Path(p).name)
                          for p, d in zip(args.ct, drrs)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

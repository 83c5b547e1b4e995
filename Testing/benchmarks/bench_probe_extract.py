#!/usr/bin/env python
"""Feature extraction throughput of ``xray2xray probe`` on a radiograph dataset (images/s).

Writes ``--images`` NIH-sized radiographs (1024x1024 8-bit PNG, as ChestX-ray14 ships them:
frontal DRRs of procedural chests, upsampled, each file with its own bytes) and times
:func:`XrayWorldModel.probe.radiograph_features.extract_dataset_features` (what ``probe``
runs: read, inference preprocessing, encoding with the imagined view, one cache file per
image) with the built-in model (or ``--model``):

* ``cold``: an empty cache, every image read, decoded and encoded;
* ``warm``: the same images again, every one from the cache (a resumed run, or a second
  probe task on the same images);

for each ``--workers`` count (DataLoader processes decoding) and ``--device``; and, one
image at a time, the milliseconds of each step (hash, read, preprocess, encode).

    python Testing/benchmarks/bench_probe_extract.py [--images 256] [--workers 0,2]
        [--batch-size 32] [--device cpu] [--threads 2] [--json out.json]

Needs no real data. CUDA: ``--device cuda`` (or the GPU check's ``probe`` part).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

PX = 1024
FILM_MM = 409.6         # 1024 x 0.4 mm: a chest film


def write_dataset(folder: Path, n: int, px: int = PX, sources: int = 8):
    """``n`` PNGs of ``px``^2 (frontal DRRs of ``sources`` chests, upsampled, a row of each
    file nudged so no two files share bytes) and a manifest with their pixel spacing."""
    import numpy as np
    from PIL import Image
    from XrayWorldModel.config import TrainConfig
    from XrayWorldModel.data import resolve_source
    from XrayWorldModel.probe.features import render_frontal_views
    folder.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig().to_dict()
    cfg["views"].update(image_size=256)
    cfg["model"].update(image_size=256)
    drrs, _ = render_frontal_views(resolve_source(f"phantom:{sources}"), cfg)
    top = float(np.percentile(drrs, 99.5))
    base = [Image.fromarray(np.clip(d[0] / top * 255, 0, 255).astype(np.uint8)).resize((px, px))
            for d in drrs]
    lines = ["path,pixel_spacing,cardiomegaly"]
    for k in range(n):
        a = np.array(base[k % sources], dtype=np.int16)
        a[k % px] = np.clip(a[k % px] + 1, 0, 255)
        Image.fromarray(a.astype(np.uint8)).save(folder / f"img{k:05d}.png")
        lines.append(f"img{k:05d}.png,{FILM_MM / px:g},{k % 2}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


def measure(manifest: Path, model_spec, device: str, workers: int, batch_size: int,
            cache: Path) -> dict:
    """Cold and warm extraction of the manifest's images: images/s and the counts."""
    import warnings
    from XrayWorldModel.probe.datasets import read_dataset
    from XrayWorldModel.probe.features import feature_spec
    from XrayWorldModel.probe.radiograph_features import extract_dataset_features
    from XrayWorldModel.weights import load_world_model
    model, card = load_world_model(model_spec, device)
    spec = feature_spec(model, 0.0, [90.0])
    records = read_dataset(manifest, [("cardiomegaly", "cardiomegaly")]).records
    out = {"device": device, "workers": workers, "batch_size": batch_size,
           "images": len(records)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extract_dataset_features(records[: 2 * batch_size], model, card, spec,
                                 cache / "warm-up", batch_size, 0)       # JIT, allocator, imports
        for run in ("cold", "warm"):
            t = time.perf_counter()
            ex = extract_dataset_features(records, model, card, spec, cache / "bench",
                                          batch_size, workers)
            dt = time.perf_counter() - t
            out[run] = {"seconds": round(dt, 2), "images_per_s": round(len(records) / dt, 1),
                        "encoded": ex.encoded, "from_cache": ex.from_cache,
                        "unreadable": len(ex.unreadable)}
    return out


def stage_ms(manifest: Path, model_spec, device: str, n: int = 16) -> dict:
    """Median ms per image of each step, one image at a time in this process: hashing the
    file, reading it (``read_cxr``, with the radiograph screen), the inference preprocessing
    (``radiograph_input``) and encoding (a batch of ``n``, per image)."""
    import statistics
    import warnings
    import numpy as np
    from XrayWorldModel.infer.domain import radiograph_input
    from XrayWorldModel.io import read_cxr
    from XrayWorldModel.probe.datasets import read_dataset
    from XrayWorldModel.probe.features import extract_features
    from XrayWorldModel.probe.radiograph_features import image_key
    from XrayWorldModel.weights import load_world_model
    model, card = load_world_model(model_spec, device)
    records = read_dataset(manifest, [("cardiomegaly", "cardiomegaly")]).records[:n]
    times = {"hash": [], "read": [], "preprocess": []}
    images = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in records:
            t0 = time.perf_counter()
            image_key(r.path, r.spacing_mm)
            t1 = time.perf_counter()
            rad = read_cxr(r.path, check=True)
            rad.spacing, rad.spacing_is_default = (r.spacing_mm, r.spacing_mm), False
            t2 = time.perf_counter()
            images.append(radiograph_input(rad, card).image)
            t3 = time.perf_counter()
            for k, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
                times[k].append(1e3 * dt)
        x = np.stack(images)[:, None]
        extract_features(model, x, 0.0, [90.0], batch_size=len(x))        # warm-up
        t = time.perf_counter()
        extract_features(model, x, 0.0, [90.0], batch_size=len(x))
        encode = 1e3 * (time.perf_counter() - t) / len(x)
    return {**{k: round(statistics.median(v), 2) for k, v in times.items()},
            "encode": round(encode, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--workers", default="0,2", help="comma-separated DataLoader worker counts")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="comma-separated: cpu, cuda")
    p.add_argument("--model", default=None, help="model (default: the built-in one)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of this process")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-probe-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        manifest = write_dataset(tmp / "images", args.images)
        print(f"wrote {args.images} PNGs of {PX}x{PX} in {time.perf_counter() - t:.1f} s",
              file=sys.stderr)
        for device in args.device.split(","):
            stages = stage_ms(manifest, args.model, device)
            print(f"{device:5s} ms per image, one at a time: " +
                  ", ".join(f"{k} {v:.1f}" for k, v in stages.items()), flush=True)
            rows.append({"device": device, "stages_ms": stages})
            for workers in (int(w) for w in args.workers.split(",")):
                cache = tmp / f"cache-{device}-{workers}"
                rows.append(measure(manifest, args.model, device, workers, args.batch_size,
                                    cache))
                r = rows[-1]
                print(f"{device:5s} workers {workers}: cold {r['cold']['images_per_s']:7.1f} "
                      f"img/s ({r['cold']['encoded']} encoded), warm "
                      f"{r['warm']['images_per_s']:7.1f} img/s ({r['warm']['from_cache']} "
                      "from cache)", flush=True)
    info = {"cpu_count": os.cpu_count(), "torch_threads": args.threads, "png_px": PX,
            "torch": torch.__version__, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

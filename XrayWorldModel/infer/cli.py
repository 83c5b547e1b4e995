"""``xray2xray infer CXR --out DIR``, ``demo`` and ``eval-volume``: the command-line face of
:func:`.pipeline.run_inference`, :func:`.demo.run_demo` and :func:`.evaluate.evaluate_volumes`.

Only torch-free modules are imported at the top, so that building the command line stays
fast; each command imports the inference code when it runs.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..conventions import parse_angles
from ..errors import GeometryError, InputError
from ..io import read_cxr


def parse_views(text: str):
    """``--views``: comma-separated angles in degrees (none: no predicted views)."""
    try:
        return list(parse_angles(text, allow_empty=True))
    except GeometryError:
        raise InputError(f"--views takes comma-separated angles in degrees, got {text!r}") from None


def run_infer(args) -> int:
    from .outputs import input_info, write_outputs
    from .pipeline import run_inference
    t0 = time.perf_counter()
    path = Path(args.cxr).expanduser()
    rad = read_cxr(path)
    result = run_inference(rad, args.model, parse_views(args.views), args.volume_size, args.device,
                           args.sweep_step, args.refine)
    data = write_outputs(result, args.out, input_info(path, rad))
    s = data["scores"]
    print(f"model {data['model']['name']}: consistency NCC {result.consistency:.3f} "
          f"({data['consistency']['reading']})")
    if s["risk"] is not None:
        print(f"cardiovascular risk {s['risk']:.3f}")
    if s["pathologies"]:
        print("pathologies: " + ", ".join(f"{k} {v:.3f}" for k, v in s["pathologies"].items()))
    for note in data["preprocessing"]["notes"]:
        print(f"note: {note}")
    print(f"wrote views, volume and results.json to {args.out} "
          f"({time.perf_counter() - t0:.1f} s; model {result.timings['total']:.2f} s)")
    if args.json:
        print(json.dumps(data, indent=1))
    return 0


def add_infer_parser(sub) -> None:
    p = sub.add_parser("infer", help="predict views, a volume and scores from one frontal CXR",
                       description="From one frontal chest radiograph (DICOM, PNG, JPEG): "
                       "predicted views, a reconstructed volume, risk and pathology scores, "
                       "and a consistency score.")
    p.add_argument("cxr", help="the radiograph file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default=None,
                   help="registry name, model file or checkpoint (default: the built-in demo model)")
    p.add_argument("--views", default="90,180,270", help="angles to predict, degrees (default 90,180,270)")
    p.add_argument("--volume-size", type=int, default=128, help="reconstructed volume, voxels per side")
    p.add_argument("--sweep-step", type=float, default=15.0,
                   help="angular step of the sweep reconstructed by FDK (degrees, default 15)")
    p.add_argument("--refine", type=int, default=0, metavar="N",
                   help="N SIRT steps after FDK (sharper volume, ~0.4 s each; default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--json", action="store_true", help="also print results.json")
    p.set_defaults(func=run_infer)


def run_demo_command(args) -> int:
    from .demo import run_demo
    data = run_demo(args.out, args.cxr, args.model, args.volume_size, args.device)
    out = Path(args.out)
    print(f"report: {out / data['report']}")
    print(f"results: {out / 'results.json'} (consistency NCC {data['consistency']['ncc']:.3f})")
    print(f"done in {data['wall_time_s']:.1f} s")
    return 0


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="one-page report: a built-in phantom (or your CXR) through "
                       "the default model", description="Render a built-in procedural chest (or "
                       "read --cxr), run inference with the default model and write report.png "
                       "and results.json.")
    p.add_argument("--out", default="xray2xray-demo", help="output folder (default ./xray2xray-demo)")
    p.add_argument("--cxr", default=None, help="a frontal chest radiograph instead of the phantom")
    p.add_argument("--model", default=None, help="model name or file (default: the built-in demo model)")
    p.add_argument("--volume-size", type=int, default=128, help="reconstructed volume, voxels per side")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.set_defaults(func=run_demo_command)


def run_eval_volume(args) -> int:
    from ..config import TrainConfig
    from ..data import PreprocessedCache, resolve_source
    from ..data.cache import VolumeProvider
    from .evaluate import evaluate_volumes
    from .pipeline import load_inference_model
    from .prior import VolumePrior
    model, card, path = load_inference_model(args.model, args.device)
    cfg = TrainConfig.from_dict(card["config"])
    cache = PreprocessedCache(Path(args.cache_dir) if args.cache_dir else None)
    prep = cfg.data.preprocessing()

    def volumes(source, limit):
        items = resolve_source(source)[:limit]
        data = VolumeProvider(items, cache, prep, len(items))
        return [data.get(i)[0] for i in range(len(items)) if i not in data.bad]
    held_out = volumes(args.data, args.limit)
    train = volumes(cfg.data.source, 16)
    # the model file's own prior, as infer uses it; else the mean of those training CTs
    result = evaluate_volumes(model, card, held_out, train, args.volume_size, args.sweep_step,
                              args.refine, prior=VolumePrior.from_model_file(path, card))
    print(json.dumps({"model": card.get("name"), "model_version": card.get("version"),
                      "data": args.data, **result}, indent=1))
    return 0


def add_eval_volume_parser(sub) -> None:
    p = sub.add_parser("eval-volume", help="volume from one frontal view vs the true CT, as JSON",
                       description="Pearson r and SSIM of the volume reconstructed from each "
                       "CT's frontal DRR against the CT (on the model's volume prior, and by FDK "
                       "of the views alone), next to the mean training CT and FDK of the frontal "
                       "view copied to every angle, with the per-CT difference in r against the "
                       "mean CT and its bootstrap 95% CI.")
    p.add_argument("--model", default=None, help="model name, file or checkpoint")
    p.add_argument("--data", required=True, help="held-out CTs: folder, CSV or phantom:N[:SEED]")
    p.add_argument("--limit", type=int, default=None, help="use at most this many CTs")
    p.add_argument("--volume-size", type=int, default=64)
    p.add_argument("--sweep-step", type=float, default=15.0)
    p.add_argument("--refine", type=int, default=0, metavar="N", help="SIRT steps after FDK")
    p.add_argument("--cache-dir", default=None, help="preprocessed-CT cache (default: user cache)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run_eval_volume)

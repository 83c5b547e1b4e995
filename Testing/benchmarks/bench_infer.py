"""Inference latency, stage by stage, and peak memory.

Runs the stages of ``xray2xray infer`` one by one on one radiograph (the real PA radiograph in
../shared/data when present, else a procedural chest's DRR), ``--repeats`` times after one
warm-up, and prints the median of each: load (model file -> model), preprocess (radiograph ->
DRR domain), encode, sweep (transition steps to every sweep angle), decode, reconstruct
(FDK + resampling), heads, consistency. It then times ``run_inference`` itself (what
``infer`` runs in process, model file loaded each time) with the uncertainty maps off, at the
default number of test-time augmentation passes and at ``--passes`` (default 8), side by side
and interleaved repeat by repeat, so that a change of load on the machine hits every column
alike. Last it times the whole command, ``xray2xray infer``, in a fresh process (Python
start-up and imports included, default passes) and reports its peak RSS.

    python Testing/benchmarks/bench_infer.py [--model NAME|FILE] [--volume-size 128]
        [--threads 2] [--device cpu,cuda] [--repeats 5] [--passes 8] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED_CR = ROOT.parent / "shared" / "data" / "chest_cr_pa.dcm"


def _radiograph(sampling):
    from XrayWorldModel.io import read_cxr
    if SHARED_CR.exists():
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return read_cxr(SHARED_CR), str(SHARED_CR)
    from XrayWorldModel.infer.demo import demo_phantom
    return demo_phantom(sampling)[0], "procedural chest"


def stage_times(model_spec, volume_size: int, device: str, repeats: int):
    import numpy as np
    import torch
    from XrayWorldModel.infer.domain import to_model_input
    from XrayWorldModel.infer.trust import assess_trust
    from XrayWorldModel.infer.pipeline import (apply_card_heads, consistency_score,
                                               reconstruct, wrap_delta)
    from XrayWorldModel.config import TrainConfig
    from XrayWorldModel.weights import load_world_model
    from XrayWorldModel.weights.registry import resolve_model

    path = resolve_model(model_spec)
    rows = {k: [] for k in ("load", "preprocess", "encode", "sweep", "decode", "reconstruct",
                            "heads", "consistency", "trust", "total")}
    sync = (lambda: torch.cuda.synchronize()) if device == "cuda" else (lambda: None)
    for rep in range(repeats + 1):
        t = {}
        t0 = time.perf_counter()
        model, card = load_world_model(path, device)
        t["load"] = time.perf_counter() - t0
        sampling = TrainConfig.from_dict(card["config"]).views
        rad, source = _radiograph(sampling)
        t0 = time.perf_counter()
        mi = to_model_input(rad, sampling, card.get("domain"))
        t["preprocess"] = time.perf_counter() - t0
        with torch.no_grad():
            t0 = time.perf_counter()
            x = torch.from_numpy(mi.image)[None, None].to(device)
            state = model.encode(x, torch.zeros(1, device=device))
            sync()
            t["encode"] = time.perf_counter() - t0
            angles = np.arange(0.0, 360.0, 15.0)
            d = wrap_delta(angles)
            d = np.where(np.abs(d) > 90, wrap_delta(d + 180.0), d)
            t0 = time.perf_counter()
            z = model.step(state.expand(len(d), *state.shape[1:]),
                           torch.as_tensor(d, dtype=torch.float32, device=device),
                           torch.zeros(len(d), device=device))
            sync()
            t["sweep"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            model.decode(z)
            sync()
            t["decode"] = time.perf_counter() - t0
            # reconstruct() repeats the sweep and decode (cheap, timed above) before FDK
            t0 = time.perf_counter()
            volume = reconstruct(model, state, sampling, volume_size)
            t["reconstruct"] = time.perf_counter() - t0 - t["sweep"] - t["decode"]
            t0 = time.perf_counter()
            apply_card_heads(model, card, x)
            t["heads"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ncc = consistency_score(volume, mi, sampling)
        t["consistency"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        assess_trust(model, card, x, ncc, mi)       # the OOD score on the heads' features
        t["trust"] = time.perf_counter() - t0
        t["total"] = sum(t.values())
        if rep:           # the first round warms caches and JIT
            for k, v in t.items():
                rows[k].append(v)
    return {k: statistics.median(v) for k, v in rows.items()}, source, card.get("name")


def uncertainty_times(model_spec, volume_size: int, device: str, repeats: int, passes):
    """Median stage times of ``run_inference`` for each number of uncertainty ``passes``
    (0 = off), the columns interleaved within every repeat; one warm-up round first."""
    import torch
    from XrayWorldModel.config import TrainConfig
    from XrayWorldModel.infer.pipeline import run_inference
    from XrayWorldModel.weights import load_world_model
    from XrayWorldModel.weights.registry import resolve_model
    path = resolve_model(model_spec)
    sampling = TrainConfig.from_dict(load_world_model(path, device)[1]["config"]).views
    rad, _ = _radiograph(sampling)
    rows = {n: {} for n in passes}
    for rep in range(repeats + 1):
        for n in passes:
            t = run_inference(rad, path, volume_size=volume_size, device=device, uncertainty=n).timings
            if device == "cuda":
                torch.cuda.synchronize()
            if rep:
                for k, v in t.items():
                    rows[n].setdefault(k, []).append(v)
    return {n: {k: statistics.median(v) for k, v in r.items()} for n, r in rows.items()}


def print_uncertainty_table(results, default_passes: int) -> None:
    for device, r in results.items():
        cols = list(r["uncertainty_s"])
        names = [("off" if n == 0 else f"N={n}" + (" (default)" if n == default_passes else ""))
                 for n in cols]
        print(f"\n`run_inference` with the uncertainty maps, {device} (ms, median)\n")
        print("| stage | " + " | ".join(names) + " |")
        print("|---|" + "---:|" * len(cols))
        for k in r["uncertainty_s"][cols[0]]:
            print(f"| {k} | " + " | ".join(f"{r['uncertainty_s'][n][k] * 1e3:.1f}" for n in cols) + " |")
        base = r["uncertainty_s"][cols[0]]["total"]
        print("| total vs off | " + " | ".join(
            f"{(r['uncertainty_s'][n]['total'] / base - 1) * 100:+.0f}%" for n in cols) + " |")


def cli_wall(model_spec, volume_size: int, device: str):
    """Wall time and peak RSS of ``xray2xray infer`` in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        cxr = SHARED_CR if SHARED_CR.exists() else None
        if cxr is None:
            return None, None
        cmd = [sys.executable, "-m", "XrayWorldModel.cli", "infer", str(cxr), "--out", tmp,
               "--volume-size", str(volume_size), "--device", device]
        if model_spec:
            cmd += ["--model", str(model_spec)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=dict(os.environ))
        wall = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        return wall, max(peak, before) / 1024.0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model name or file (default: built-in demo)")
    ap.add_argument("--volume-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="comma-separated: cpu,cuda")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--passes", type=int, default=8,
                    help="uncertainty passes of the third column (beside off and the default)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    from XrayWorldModel.conventions import UNCERTAINTY_PASSES
    torch.set_num_threads(args.threads)
    try:
        import numba
        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass
    results = {}
    for device in [d.strip() for d in args.device.split(",") if d.strip()]:
        if device == "cuda" and not torch.cuda.is_available():
            print("cuda: not available, skipped")
            continue
        stages, source, name = stage_times(args.model, args.volume_size, device, args.repeats)
        passes = list(dict.fromkeys([0, UNCERTAINTY_PASSES, args.passes]))
        unc = uncertainty_times(args.model, args.volume_size, device, args.repeats, passes)
        wall, rss = cli_wall(args.model, args.volume_size, device)
        results[device] = {"stages_s": stages, "uncertainty_s": unc, "cli_wall_s": wall,
                           "cli_peak_rss_mb": rss, "input": source, "model": name}
    print(f"\ninference latency, volume {args.volume_size}^3, {args.threads} threads, "
          f"median of {args.repeats} (model: {next(iter(results.values()))['model']})\n")
    devs = list(results)
    print("| stage | " + " | ".join(f"{d} (ms)" for d in devs) + " |")
    print("|---|" + "---:|" * len(devs))
    for k in next(iter(results.values()))["stages_s"]:
        print(f"| {k} | " + " | ".join(f"{results[d]['stages_s'][k] * 1e3:.1f}" for d in devs) + " |")
    print("| `xray2xray infer` wall, fresh process (s) | " +
          " | ".join("n/a" if results[d]["cli_wall_s"] is None else f"{results[d]['cli_wall_s']:.2f}"
                     for d in devs) + " |")
    print("| `xray2xray infer` peak RSS (MB) | " +
          " | ".join("n/a" if results[d]["cli_peak_rss_mb"] is None else f"{results[d]['cli_peak_rss_mb']:.0f}"
                     for d in devs) + " |")
    print_uncertainty_table(results, UNCERTAINTY_PASSES)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()

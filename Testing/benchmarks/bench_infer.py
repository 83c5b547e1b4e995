"""Inference latency, stage by stage, and peak memory.

Runs the stages of ``xray2xray infer`` one by one on one radiograph (the real PA radiograph in
../shared/data when present, else a procedural chest's DRR), ``--repeats`` times after one
warm-up, and prints the median of each: load (model file -> model), preprocess (radiograph ->
DRR domain), encode, sweep (transition steps to every sweep angle), decode, reconstruct
(FDK + resampling), heads, consistency. It then times ``run_inference`` itself (what
``infer`` runs in process, model file loaded each time) with the uncertainty maps off, at the
default number of test-time augmentation passes and at ``--passes`` (default 8), side by side
and interleaved repeat by repeat, so that a change of load on the machine hits every column
alike. These run with ``OMP_WAIT_POLICY=PASSIVE`` unless it is set or ``--spin`` is given:
with OpenMP's spinning waits a busy machine multiplies them (6.6 s instead of 0.44 s at load 5
on 2 cores), and ``xray2xray infer`` sets PASSIVE for itself.

Last the whole command, ``xray2xray infer`` on the real radiograph, from a fresh process:
``--fresh`` runs (default 5) interleaved with as many of ``python -c "import torch"`` and of
importing only the libraries ``infer`` needs (``INFER_LIBRARIES``: the floor under the ratio),
so all meet the same load; it prints the median wall time of each, their ratio, the peak RSS of the
command (``wait4`` of that child), its first run with an empty user cache, a stage timer of
one more fresh run (Python start-up and exit, the imports, reading, each stage of the model,
writing)
and the packages that ``python -X importtime`` charges most. Every fresh run gets an
``$XRAY2XRAY_CACHE`` of its own under a temporary folder, filled by the first run.

    python Testing/benchmarks/bench_infer.py [--model NAME|FILE] [--volume-size 128]
        [--threads 2] [--device cpu,cuda] [--repeats 5] [--passes 8] [--fresh 5]
        [--fresh-only] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
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
    from XrayWorldModel.infer.prior import VolumePrior
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
        prior = VolumePrior.from_model_file(path, card)     # what infer reconstructs on
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
            volume = reconstruct(model, state, sampling, volume_size, prior=prior)
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


def _infer_command(model_spec, volume_size: int, device: str, out: str, python_flags=()):
    cmd = [sys.executable, *python_flags, "-m", "XrayWorldModel", "infer", str(SHARED_CR),
           "--out", out, "--volume-size", str(volume_size), "--device", device]
    return cmd + (["--model", str(model_spec)] if model_spec else [])


#: Variables this process set for itself only, kept from the fresh runs (so that those
#: measure what the command does in the user's environment).
_OWN_VARIABLES = set()


def _fresh_env(work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _OWN_VARIABLES}
    return dict(env, XRAY2XRAY_CACHE=str(work / "cache"))


def _timed_child(cmd, env) -> tuple:
    """(wall s, peak RSS MB, stderr) of ``cmd`` run to the end in a fresh process; the peak
    is this child's own (``wait4``), not the largest of every child so far."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024.0, err.decode()


#: The third-party imports ``infer`` cannot do without (torch; the scale estimate's
#: scipy.ndimage and scikit-image, whose morphology package also loads scipy.spatial; SimpleITK
#: to write NIfTI; pydicom and Pillow to read radiographs), timed with nothing run: the floor
#: under the ratio whatever the package's own code does.
INFER_LIBRARIES = ("import torch, numpy, scipy.ndimage, skimage.morphology, skimage.filters, "
                   "skimage.transform, SimpleITK, pydicom, PIL.Image")


def fresh_process_times(model_spec, volume_size: int, device: str, runs: int, work: Path):
    """Median wall of ``python -c "import torch"`` and of ``xray2xray infer`` (fresh
    processes, interleaved, the order alternating), the ratio, the command's peak RSS and
    its first run with an empty cache."""
    env = _fresh_env(work)
    out = str(work / "out")
    first, first_rss, _ = _timed_child(_infer_command(model_spec, volume_size, device, out), env)
    walls = {"torch": [], "libraries": [], "infer": []}
    rss = []
    for k in range(runs):
        trio = [("torch", [sys.executable, "-c", "import torch"]),
                ("libraries", [sys.executable, "-c", INFER_LIBRARIES]),
                ("infer", _infer_command(model_spec, volume_size, device, out))]
        for name, cmd in (trio if k % 2 == 0 else trio[::-1]):
            wall, peak, _ = _timed_child(cmd, env)
            walls[name].append(wall)
            if name == "infer":
                rss.append(peak)
    t, i = statistics.median(walls["torch"]), statistics.median(walls["infer"])
    lib = statistics.median(walls["libraries"])
    return {"import_torch_s": t, "infer_s": i, "ratio": i / t, "peak_rss_mb": max(rss + [first_rss]),
            "first_run_empty_cache_s": first, "import_torch_runs_s": walls["torch"],
            "infer_runs_s": walls["infer"], "import_libraries_s": lib, "libraries_ratio": lib / t,
            "import_libraries_runs_s": walls["libraries"]}


#: Run in a fresh process by ``--stage-child``: ``xray2xray infer`` itself (``cli.main``),
#: its imports done first and its three steps wrapped in timers.
def stage_child(result_path: str, argv) -> int:
    marks = [("start", time.perf_counter())]
    from XrayWorldModel import cli
    from XrayWorldModel.infer import cli as infer_cli
    marks.append(("import the command line (XrayWorldModel.cli)", time.perf_counter()))
    getattr(infer_cli, "passive_openmp_waits", lambda: None)()   # what `infer` does first
    import torch  # noqa: F401
    marks.append(("import torch", time.perf_counter()))
    from XrayWorldModel.infer import outputs, pipeline, trust  # noqa: F401
    marks.append(("import the rest of inference (pipeline, outputs, trust)", time.perf_counter()))
    steps, timings = {}, {}

    def timed(module, name, label):
        inner = getattr(module, name, None)
        if inner is None:
            return

        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                value = inner(*a, **k)
            finally:
                steps[label] = steps.get(label, 0.0) + time.perf_counter() - t0
            if hasattr(value, "timings"):
                timings.update(value.timings)
            return value
        setattr(module, name, wrapper)
    timed(infer_cli, "read_cxr", "read the radiograph")
    timed(pipeline, "run_inference", "run_inference")
    timed(outputs, "write_outputs", "write the outputs")
    t0 = time.perf_counter()
    with open(os.devnull, "w") as sink:
        stdout, sys.stdout = sys.stdout, sink
        try:
            rc = cli.main(argv)
        finally:
            sys.stdout = stdout
    command_s = time.perf_counter() - t0
    imports = [(b[0], b[1] - a[1]) for a, b in zip(marks, marks[1:])]
    Path(result_path).write_text(json.dumps({"rc": rc, "imports_s": imports, "steps_s": steps,
                                             "model_stages_s": timings, "command_s": command_s,
                                             "in_process_s": time.perf_counter() - marks[0][1]}))
    return rc


def stage_breakdown(model_spec, volume_size: int, device: str, work: Path) -> dict:
    """One more fresh ``infer`` with the stage timer (Python's start-up and exit = the
    child's wall minus what it timed itself)."""
    env = _fresh_env(work)
    result = work / "stages.json"
    argv = _infer_command(model_spec, volume_size, device, str(work / "out"))[3:]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage-child", str(result), "--", *argv]
    wall, _, _ = _timed_child(cmd, env)
    data = json.loads(result.read_text())
    data["wall_s"] = wall
    data["startup_s"] = wall - data["in_process_s"]
    return data


def import_breakdown(model_spec, volume_size: int, device: str, work: Path, top: int = 12):
    """``python -X importtime`` of one fresh ``infer``: the self time summed per top-level
    package (importtime's own overhead inflates every entry a little) and the total."""
    env = _fresh_env(work)
    cmd = _infer_command(model_spec, volume_size, device, str(work / "out"), ("-X", "importtime"))
    _, _, err = _timed_child(cmd, env)
    per_package = {}
    for line in err.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, name = (part.strip() for part in line[len("import time:"):].split("|"))
        root = name.split(".")[0]
        per_package[root] = per_package.get(root, 0.0) + int(self_us) / 1e6
    ranked = sorted(per_package.items(), key=lambda kv: -kv[1])
    return {"total_s": sum(per_package.values()), "top": ranked[:top],
            "others_s": sum(v for _, v in ranked[top:])}


def print_fresh_tables(fresh, stages, imports) -> None:
    print(f"\n`xray2xray infer` on the real CR from a fresh process, side by side with "
          f"`python -c \"import torch\"` (median of {len(fresh['infer_runs_s'])}, interleaved)\n")
    print("| what | s |\n|---|---:|")
    print(f"| `python -c \"import torch\"` | {fresh['import_torch_s']:.2f} |")
    print(f"| `xray2xray infer` | {fresh['infer_s']:.2f} |")
    print(f"| **ratio** | **{fresh['ratio']:.2f}x** |")
    print(f"| importing only the libraries `infer` needs, nothing run (`python -c \"{INFER_LIBRARIES}\"`) "
          f"| {fresh['import_libraries_s']:.2f} ({fresh['libraries_ratio']:.2f}x) |")
    print(f"| `xray2xray infer`, first run (empty user cache) | {fresh['first_run_empty_cache_s']:.2f} |")
    print(f"| peak RSS of `xray2xray infer` (MB) | {fresh['peak_rss_mb']:.0f} |")
    print("\nwhere one fresh `xray2xray infer` spends its time (stage timer)\n")
    print("| stage | ms |\n|---|---:|")
    print(f"| Python start-up and exit (wall - what the child timed) | {stages['startup_s'] * 1e3:.0f} |")
    for name, sec in stages["imports_s"]:
        print(f"| {name} | {sec * 1e3:.0f} |")
    for name, sec in stages["steps_s"].items():
        print(f"| {name} | {sec * 1e3:.0f} |")
        if name == "run_inference":
            for k, v in stages["model_stages_s"].items():
                if k != "total":
                    print(f"| &nbsp;&nbsp;{k} | {v * 1e3:.0f} |")
    print(f"| **wall** | **{stages['wall_s'] * 1e3:.0f}** |")
    print(f"\n`python -X importtime`, self time per top-level package (ms; total "
          f"{imports['total_s'] * 1e3:.0f} under importtime's own overhead)\n")
    print("| package | ms |\n|---|---:|")
    for name, sec in imports["top"]:
        print(f"| {name} | {sec * 1e3:.0f} |")
    print(f"| (the rest) | {imports['others_s'] * 1e3:.0f} |")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--stage-child"]:
        return stage_child(argv[1], argv[3:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model name or file (default: built-in demo)")
    ap.add_argument("--volume-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="comma-separated: cpu,cuda")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--passes", type=int, default=8,
                    help="uncertainty passes of the third column (beside off and the default)")
    ap.add_argument("--fresh", type=int, default=5,
                    help="fresh-process runs of `xray2xray infer` and of `import torch` (default 5)")
    ap.add_argument("--fresh-only", action="store_true",
                    help="only the fresh-process tables (no in-process stage tables)")
    ap.add_argument("--spin", action="store_true",
                    help="keep OpenMP's default wait policy in this process (threads spin); "
                    "default: PASSIVE, as `xray2xray infer` sets it for itself")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if not args.spin and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"      # before torch loads OpenMP
        _OWN_VARIABLES.add("OMP_WAIT_POLICY")          # the fresh `infer` runs set it themselves
    import torch
    from XrayWorldModel.conventions import UNCERTAINTY_PASSES
    torch.set_num_threads(args.threads)
    results = {}
    for device in [d.strip() for d in args.device.split(",") if d.strip()]:
        if device == "cuda" and not torch.cuda.is_available():
            print("cuda: not available, skipped")
            continue
        results[device] = r = {}
        if not args.fresh_only:
            stages, source, name = stage_times(args.model, args.volume_size, device, args.repeats)
            passes = list(dict.fromkeys([0, UNCERTAINTY_PASSES, args.passes]))
            unc = uncertainty_times(args.model, args.volume_size, device, args.repeats, passes)
            r.update(stages_s=stages, uncertainty_s=unc, input=source, model=name,
                     in_process_infer_s=unc[UNCERTAINTY_PASSES]["total"])
        if SHARED_CR.exists():
            with tempfile.TemporaryDirectory(prefix="bench_infer_") as tmp:
                work = Path(tmp)
                r["fresh"] = fresh_process_times(args.model, args.volume_size, device, args.fresh, work)
                r["fresh_stages"] = stage_breakdown(args.model, args.volume_size, device, work)
                r["importtime"] = import_breakdown(args.model, args.volume_size, device, work)
    if not args.fresh_only:
        print_stage_tables(results, args, UNCERTAINTY_PASSES)
    for device, r in results.items():
        if "fresh" in r:
            print(f"\n## {device}")
            print_fresh_tables(r["fresh"], r["fresh_stages"], r["importtime"])
            if "in_process_infer_s" in r:
                print(f"\nin-process `run_inference` (default {UNCERTAINTY_PASSES} passes, model file "
                      f"loaded each time): {r['in_process_infer_s'] * 1e3:.0f} ms")
        else:
            print(f"\n{device}: no real radiograph at {SHARED_CR}: fresh-process rows skipped")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


def print_stage_tables(results, args, default_passes: int) -> None:
    print(f"\ninference latency, volume {args.volume_size}^3, {args.threads} threads, "
          f"median of {args.repeats} (model: {next(iter(results.values()))['model']}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset (spin)')})\n")
    devs = list(results)
    print("| stage | " + " | ".join(f"{d} (ms)" for d in devs) + " |")
    print("|---|" + "---:|" * len(devs))
    for k in next(iter(results.values()))["stages_s"]:
        print(f"| {k} | " + " | ".join(f"{results[d]['stages_s'][k] * 1e3:.1f}" for d in devs) + " |")
    print_uncertainty_table(results, default_passes)


if __name__ == "__main__":
    main()

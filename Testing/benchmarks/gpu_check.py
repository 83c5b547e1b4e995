#!/usr/bin/env python
"""GPU check: the numbers that need a GPU, in at most 8 minutes on one, ready to run.

    python Testing/benchmarks/gpu_check.py --out gpu_check            # on a CUDA machine
    python Testing/benchmarks/gpu_check.py --dry-run --out /tmp/gc    # same code paths, CPU, tiny

Four parts, each in its own process under its own time budget (a part that runs over is
stopped and reported as such; the others still run):

``drr``       the CUDA renderer (the PyTorch Joseph path ``DRRRenderer`` takes on CUDA) on the
              real chest CT (a procedural chest of the same grid when ../shared/data is
              absent): DRR/s at 256^2 and 512^2 (64 angles per call), peak GPU memory, and
              the relative L2 error against the CPU exact renderer on 8 of the angles;
``train``     the ``paper`` config on procedural phantoms for a fixed number of steps (the
              trainer's own step, bf16 autocast as configured): steps/s, samples/s, peak GPU
              memory, and the share of each step spent rendering (``bench_train.measure``);
``torchrun``  ``torchrun --nproc_per_node 1`` training with the process group on NCCL (one
              all-reduce checks it), a checkpoint, then ``--resume`` from it for more steps;
``infer``     ``run_inference`` on CUDA in process (median of 5 after a warm-up, stage times)
              and ``xray2xray infer --device cuda`` from a fresh process.

On request (``--parts ...,probe``): ``probe``, the radiograph feature extraction of ``xray2xray
probe`` on 256 NIH-sized PNGs, cold and from the cache, 0 and 8 decoding workers
(``bench_probe_extract.py``).

It writes ``gpu_check.json`` (everything) and ``gpu_check.md`` (the tables) to ``--out``.
``--dry-run`` runs the same code on the CPU at tiny sizes (gloo instead of NCCL); the test
suite runs it (Testing/test_gpu_check.py) so this script cannot rot while no GPU is at hand.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
DATA = REPO.parent / "shared" / "data"
TOTAL_BUDGET_S = 480.0
BUDGETS_S = {"drr": 100.0, "train": 170.0, "torchrun": 120.0, "infer": 70.0, "probe": 90.0}
PARTS = tuple(BUDGETS_S)
#: what runs without --parts; ``probe`` (radiograph feature extraction, bench_probe_extract.py)
#: on request: --parts drr,train,torchrun,infer,probe
DEFAULT_PARTS = ("drr", "train", "torchrun", "infer")
MU_WATER = 0.02
SDD, SOD = 1800.0, 1500.0
#: the paper model shrunk to seconds on a CPU (the dry run); same code, same config file
TINY_PAPER = ["model.image_size=32", "model.patch_size=8", "model.embed_dim=32", "model.depth=1",
              "model.heads=2", "model.transition_depth=1", "model.decoder_dim=32",
              "model.decoder_depth=1", "model.decoder_heads=2", "model.decoder_channels=4",
              "model.n_freq=2", "views.image_size=32", "data.grid_size=32", "data.grid_spacing=10.0"]
FULL = {"sizes": (256, 512), "angles": 64, "error_angles": 8, "repeats": 3,
        "train_steps": 10, "train_warmup": 3, "train_phantoms": 8, "train_overrides": [],
        "run_steps": (4, 6), "run_batch": 32, "run_overrides": [], "infer_repeats": 5,
        "infer_args": []}
DRY = {"sizes": (24, 32), "angles": 4, "error_angles": 2, "repeats": 1,
       "train_steps": 2, "train_warmup": 1, "train_phantoms": 2, "train_batch": 2,
       "train_overrides": TINY_PAPER, "run_steps": (2, 3), "run_batch": 2,
       "run_overrides": TINY_PAPER, "infer_repeats": 1,
       "infer_args": ["--volume-size", "32", "--uncertainty", "0"]}


def _sizes(dry: bool) -> dict:
    return DRY if dry else FULL


def _sync(device):
    import torch
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _peak_mb(device):
    import torch
    return torch.cuda.max_memory_allocated() / 2**20 if torch.device(device).type == "cuda" else None


def _reset_peak(device):
    import torch
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


# ====================================================================== part: drr
def _ct(dry: bool):
    """(HU volume, what it is): the real CT, else a procedural chest on the same grid."""
    from XrayWorldModel.phantom import procedural_chest
    if dry:
        return procedural_chest(0, shape=(40, 40, 32), spacing=(9.0, 9.0, 11.0)), "procedural chest 40x40x32"
    path = DATA / "chest_ct.nii.gz"
    if path.exists():
        from XrayWorldModel.io import read_ct
        return read_ct(path), "chest_ct.nii.gz 512x512x133"
    vol = procedural_chest(0, shape=(512, 512, 133), spacing=(0.703125, 0.703125, 2.5))
    return vol, "procedural chest 512x512x133 (../shared/data absent)"


def part_drr(device: str, dry: bool, deadline: float) -> dict:
    from dataclasses import replace
    import numpy as np
    from XrayWorldModel.drr import DRRRenderer
    from XrayWorldModel.geometry import ProjectionGeometry
    s = _sizes(dry)
    vol, source = _ct(dry)
    exact = DRRRenderer(vol, "exact", mu_water=MU_WATER)
    rows = []
    for size in s["sizes"]:
        if time.monotonic() > deadline:
            rows.append({"size": size, "status": "skipped: part budget spent"})
            continue
        g = ProjectionGeometry(angles=tuple(360.0 * k / s["angles"] for k in range(s["angles"])),
                               detector_shape=(size, size), pixel_spacing=(512.0 / size,) * 2,
                               sdd=SDD, sod=SOD).resolve(vol)
        _reset_peak(device)
        t = time.perf_counter()
        r = DRRRenderer(vol, "fast", device=device, mu_water=MU_WATER, engine="torch")
        r.render_tensor(g)                       # warm-up: volume to the device, kernels
        _sync(device)
        setup = time.perf_counter() - t
        times = []
        for _ in range(s["repeats"]):
            t = time.perf_counter()
            r.render_tensor(g)
            _sync(device)
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        sub = replace(g, angles=g.angles[::max(1, s["angles"] // s["error_angles"])])
        fast, ref = r.render(sub), exact.render(sub)
        rows.append({"size": size, "status": "ok", "angles_per_call": s["angles"],
                     "drr_per_s": s["angles"] / med, "ms_per_drr": 1e3 * med / s["angles"],
                     "setup_s": setup, "peak_gpu_mb": _peak_mb(device),
                     "rel_l2_vs_exact": float(np.linalg.norm(fast - ref) / np.linalg.norm(ref)),
                     "error_angles": list(sub.angles)})
    return {"volume": source, "rows": rows, "ok": all(r["status"] == "ok" for r in rows)}


# ==================================================================== part: train
def part_train(device: str, dry: bool, deadline: float) -> dict:
    sys.path.insert(0, str(HERE.parent))
    from bench_train import measure
    s = _sizes(dry)
    res = measure("paper", device, s["train_steps"], s["train_warmup"], s.get("train_batch"),
                  s["train_phantoms"], s["train_overrides"])
    return {**res, "ok": True}


# ================================================================= part: torchrun
def torchrun_entry(argv) -> int:
    """Run under torchrun: the process group on NCCL (gloo on the CPU), one all-reduce to
    prove it works, then ``xray2xray train ARGV`` in the same process group."""
    import torch
    import torch.distributed as dist
    cuda = torch.cuda.is_available() and "--cpu" not in argv
    argv = [a for a in argv if a != "--cpu"]
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    x = torch.ones(1, device="cuda" if cuda else "cpu")
    dist.all_reduce(x)
    report = {"backend": dist.get_backend(), "world_size": dist.get_world_size(),
              "all_reduce": float(x.item())}
    out = os.environ.get("GPU_CHECK_DIST_REPORT")
    if out:
        Path(out).write_text(json.dumps(report))
    from XrayWorldModel.train.__main__ import main as train_main
    try:
        return train_main(argv)
    finally:
        if dist.is_initialized():          # the trainer may have closed it already
            dist.destroy_process_group()


def _torchrun():
    exe = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    return [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]


def _train_log(run_dir: Path):
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def part_torchrun(device: str, dry: bool, deadline: float) -> dict:
    s = _sizes(dry)
    work = Path(os.environ["GPU_CHECK_WORK"]) / "torchrun"
    run_dir = work / "run"
    work.mkdir(parents=True, exist_ok=True)
    n1, n2 = s["run_steps"]
    over = ["data.source=phantom:4", "data.val_count=0", "run.val_every=0", "run.log_every=1",
            f"run.checkpoint_every={n1}", f"optim.batch_size={s['run_batch']}",
            f"run.device={'cuda' if device.startswith('cuda') else 'cpu'}",
            f"run.out_dir={run_dir}"] + s["run_overrides"]
    base = _torchrun() + ["--standalone", "--nproc_per_node", "1", str(HERE), "--torchrun-entry"]
    base += [] if device.startswith("cuda") else ["--cpu"]
    runs = []
    for steps, resume in ((n1, []), (n2, ["--resume"])):
        report = work / f"dist-{steps}.json"
        env = dict(os.environ, GPU_CHECK_DIST_REPORT=str(report))
        cmd = base + ["--config", "paper", *over, f"optim.steps={steps}", "--quiet", *resume]
        t = time.perf_counter()
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True,
                              timeout=max(10.0, deadline - time.monotonic()))
        runs.append({"steps": steps, "resume": bool(resume), "rc": done.returncode,
                     "wall_s": time.perf_counter() - t,
                     "dist": json.loads(report.read_text()) if report.exists() else None,
                     "stderr_tail": done.stderr[-1500:] if done.returncode else ""})
        if done.returncode:
            break
    logged = [r["step"] for r in _train_log(run_dir) if "loss_total" in r]
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*.safetensors"))
    resumed = len(runs) == 2 and runs[1]["rc"] == 0 and logged[-1:] == [n2] and \
        logged.count(n1) == 1 and f"step-{n2:07d}.safetensors" in ckpts
    return {"runs": runs, "steps_logged": logged, "checkpoints": ckpts,
            "backend": (runs[0]["dist"] or {}).get("backend"), "resumed": resumed,
            "ok": resumed and all(r["dist"] and r["dist"]["all_reduce"] == 1.0 for r in runs)}


# ==================================================================== part: infer
def _radiograph_file(work: Path):
    """The real PA radiograph, else the demo phantom's frontal DRR written as NRRD."""
    cr = DATA / "chest_cr_pa.dcm"
    if cr.exists():
        return cr, "chest_cr_pa.dcm"
    import SimpleITK as sitk
    from XrayWorldModel.config import TrainConfig
    from XrayWorldModel.infer.demo import demo_phantom
    sampling = TrainConfig().views
    rad = demo_phantom(sampling)[0]
    img = sitk.GetImageFromArray(rad.image.astype("float32"))
    img.SetSpacing(tuple(float(x) for x in rad.spacing[::-1]))
    path = work / "demo_pa.nrrd"
    sitk.WriteImage(img, str(path))
    return path, "demo phantom DRR (../shared/data absent)"


def part_infer(device: str, dry: bool, deadline: float) -> dict:
    import warnings
    from XrayWorldModel.infer.pipeline import run_inference
    from XrayWorldModel.io import read_cxr
    s = _sizes(dry)
    work = Path(os.environ["GPU_CHECK_WORK"]) / "infer"
    work.mkdir(parents=True, exist_ok=True)
    path, source = _radiograph_file(work)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rad = read_cxr(path)
    kw = {"volume_size": 32, "uncertainty": 0} if dry else {}
    run_inference(rad, None, device=device, **kw)           # warm-up
    _reset_peak(device)
    runs = []
    for _ in range(s["infer_repeats"]):
        t = time.perf_counter()
        res = run_inference(rad, None, device=device, **kw)
        _sync(device)
        runs.append((time.perf_counter() - t, dict(res.timings)))
    total = statistics.median(r[0] for r in runs)
    stages = {k: statistics.median(r[1].get(k, 0.0) for r in runs) for k in runs[0][1]}
    cmd = [sys.executable, "-m", "XrayWorldModel", "infer", str(path), "--out", str(work / "out"),
           "--device", device, *s["infer_args"]]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=work,
                          timeout=max(10.0, deadline - time.monotonic()))
    fresh = time.perf_counter() - t
    return {"radiograph": source, "in_process_ms": 1e3 * total,
            "stages_ms": {k: 1e3 * v for k, v in stages.items()},
            "peak_gpu_mb": _peak_mb(device), "fresh_process_s": fresh,
            "fresh_rc": done.returncode, "fresh_stderr_tail": done.stderr[-1500:] if done.returncode else "",
            "ok": done.returncode == 0}


def part_probe(device: str, dry: bool, deadline: float) -> dict:
    """``probe``'s feature extraction on NIH-sized PNGs (bench_probe_extract.measure)."""
    sys.path.insert(0, str(HERE.parent))
    from bench_probe_extract import measure, write_dataset
    work = Path(os.environ["GPU_CHECK_WORK"]) / "probe"
    manifest = write_dataset(work / "images", 8 if dry else 256, 64 if dry else 1024)
    rows = [measure(manifest, None, device, w, 4 if dry else 64, work / f"cache-{w}")
            for w in ((0,) if dry else (0, 8))]
    return {"rows": rows, "ok": all(r["cold"]["encoded"] == r["images"] for r in rows)}


PART_FUNCS = {"drr": part_drr, "train": part_train, "torchrun": part_torchrun, "infer": part_infer,
              "probe": part_probe}


# =================================================================== parent side
def _env(out: Path, threads: int) -> dict:
    env = dict(os.environ, XRAY2XRAY_CACHE=str(out / "cache"), GPU_CHECK_WORK=str(out / "work"),
               PYTHONWARNINGS="ignore")
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def run_part(name: str, args, budget: float) -> dict:
    """One part in a child process with ``budget`` seconds; its JSON result or why none."""
    result = args.out / "work" / f"{name}.json"
    cmd = [sys.executable, str(HERE), "--part", name, "--out", str(args.out), "--device", args.device,
           "--budget", str(budget)] + (["--dry-run"] if args.dry_run else [])
    t = time.perf_counter()
    try:
        done = subprocess.run(cmd, env=_env(args.out, args.threads), capture_output=True,
                              text=True, timeout=budget)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "budget_s": budget, "wall_s": time.perf_counter() - t,
                "message": f"stopped after its budget of {budget:.0f} s"}
    wall = time.perf_counter() - t
    if done.returncode or not result.exists():
        return {"status": "error", "budget_s": budget, "wall_s": wall,
                "message": (done.stderr or done.stdout)[-2000:]}
    res = json.loads(result.read_text())
    return {"status": "ok" if res.get("ok") else "failed", "budget_s": budget, "wall_s": wall, **res}


def child_part(args) -> int:
    deadline = time.monotonic() + 0.9 * args.budget
    if args.device.startswith("cuda"):
        import torch
        torch.backends.cuda.matmul.allow_tf32 = True
    res = PART_FUNCS[args.part](args.device, args.dry_run, deadline)
    out = args.out / "work" / f"{args.part}.json"
    out.write_text(json.dumps(res, indent=1, default=str))
    return 0


def _meta(args) -> dict:
    code = ("import json, torch, platform; d = torch.cuda.is_available(); print(json.dumps({"
            "'torch': torch.__version__, 'cuda': torch.version.cuda, 'python': platform.python_version(),"
            "'gpu': torch.cuda.get_device_name(0) if d else None,"
            "'gpu_memory_gb': torch.cuda.get_device_properties(0).total_memory / 2**30 if d else None,"
            "'cuda_available': d}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=_env(args.out, args.threads))
    info = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {"error": r.stderr[-500:]}
    return {**info, "device": args.device, "dry_run": args.dry_run, "cpu_count": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def markdown(report) -> str:
    m, p = report["meta"], report["parts"]
    lines = [f"GPU check {m['date']}: {m.get('gpu') or 'no GPU'} (torch {m.get('torch')}, CUDA "
             f"{m.get('cuda')}), device {m['device']}{' -- DRY RUN, tiny sizes on the CPU' if m['dry_run'] else ''}; "
             f"total {report['wall_s']:.0f} s of {TOTAL_BUDGET_S:.0f}.", "",
             "| part | status | budget (s) | wall (s) |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['status']} | {v['budget_s']:.0f} | {v['wall_s']:.1f} |" for k, v in p.items()]
    lines += _drr_md(p.get("drr")) + _train_md(p.get("train")) + _run_md(p.get("torchrun")) + \
        _infer_md(p.get("infer")) + _probe_md(p.get("probe"))
    return "\n".join(lines) + "\n"


def _fmt(x, spec=".1f", none="n/a"):
    return none if x is None else format(x, spec)


def _drr_md(r):
    if not r or "rows" not in r:
        return []
    out = ["", f"CUDA DRR renderer ({r['volume']}; SDD {SDD:g}, SOD {SOD:g} mm, 512 mm detector):", "",
           "| detector | angles / call | DRR/s | ms / DRR | setup (s) | peak GPU (MB) | rel. L2 vs CPU exact |",
           "|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        if x["status"] != "ok":
            out.append(f"| {x['size']}^2 | {x['status']} | | | | | |")
            continue
        out.append(f"| {x['size']}^2 | {x['angles_per_call']} | {x['drr_per_s']:.1f} | "
                   f"{x['ms_per_drr']:.2f} | {x['setup_s']:.2f} | {_fmt(x['peak_gpu_mb'], ',.0f')} | "
                   f"{x['rel_l2_vs_exact']:.2e} |")
    return out


def _train_md(r):
    if not r or "samples_per_s" not in r:
        return []
    return ["", f"Training, `paper` config on {r['phantoms']} phantoms ({r['steps']} timed steps after "
            f"{r['warmup']}):", "",
            "| batch x views | steps/s | samples/s | render share | bf16 | peak GPU (MB) |",
            "|---|---|---|---|---|---|",
            f"| {r['batch_size']} x {r['views_per_sample']} ({r['image_size']} px) | "
            f"{r['steps_per_s']:.2f} | {r['samples_per_s']:.1f} | {r['render_share']:.1%} | "
            f"{'yes' if r['bf16'] else 'no'} | {_fmt(r['peak_gpu_mb'], ',.0f')} |"]


def _run_md(r):
    if not r or "runs" not in r:
        return []
    runs = "; ".join(f"{'resume to' if x['resume'] else 'train to'} step {x['steps']}: rc {x['rc']}, "
                     f"{x['wall_s']:.1f} s" for x in r["runs"])
    return ["", f"torchrun --nproc_per_node 1, backend {r['backend']}: {runs}; resumed: "
            f"{'yes' if r['resumed'] else 'NO'} (steps logged {r['steps_logged']})."]


def _infer_md(r):
    if not r or "in_process_ms" not in r:
        return []
    stages = ", ".join(f"{k} {v:.0f}" for k, v in r["stages_ms"].items())
    return ["", f"Inference on {r['radiograph']}: in process {r['in_process_ms']:.0f} ms (median; "
            f"stages, ms: {stages}), peak GPU {_fmt(r['peak_gpu_mb'], ',.0f')} MB; "
            f"`xray2xray infer` from a fresh process {r['fresh_process_s']:.1f} s (rc {r['fresh_rc']})."]


def _probe_md(r):
    if not r or "rows" not in r:
        return []
    return ["", "Probe feature extraction (images/s; cold: read + preprocess + encode + cache, "
            "warm: from the cache):", "", "| device | workers | batch | images | cold | warm |",
            "|---|---|---|---|---|---|"] + \
        [f"| {x['device']} | {x['workers']} | {x['batch_size']} | {x['images']} | "
         f"{x['cold']['images_per_s']:.1f} | {x['warm']['images_per_s']:.1f} |" for x in r["rows"]]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("gpu_check"), help="output folder")
    p.add_argument("--dry-run", action="store_true", help="the same code on the CPU at tiny sizes")
    p.add_argument("--device", default=None, help="cuda (default), or cpu with --dry-run")
    p.add_argument("--parts", default=",".join(DEFAULT_PARTS),
                   help=f"subset of {','.join(PARTS)} (default: {','.join(DEFAULT_PARTS)})")
    p.add_argument("--threads", type=int, default=min(16, os.cpu_count() or 1),
                   help="CPU threads of the children (OMP_NUM_THREADS unless set)")
    p.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    p.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--torchrun-entry"]:
        return torchrun_entry(argv[1:])
    args = parse_args(argv)
    args.device = args.device or ("cpu" if args.dry_run else "cuda")
    args.out = args.out.resolve()
    if args.part:
        return child_part(args)
    parts = [x for x in args.parts.split(",") if x]
    if set(parts) - set(PARTS):
        sys.exit(f"gpu_check: unknown part(s) {sorted(set(parts) - set(PARTS))}; choose from {PARTS}")
    (args.out / "work").mkdir(parents=True, exist_ok=True)
    meta = _meta(args)
    if args.device.startswith("cuda") and not meta.get("cuda_available"):
        print("gpu_check: no CUDA device is visible to torch here; run with --dry-run to check "
              "the script on the CPU", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    report = {"meta": meta, "parts": {}}
    for name in parts:
        left = TOTAL_BUDGET_S - (time.monotonic() - t0)
        budget = min(BUDGETS_S[name], left)
        if budget < 10:
            report["parts"][name] = {"status": "skipped", "budget_s": 0.0, "wall_s": 0.0,
                                     "message": "the 8-minute total was spent"}
            continue
        print(f"[gpu_check] {name} (budget {budget:.0f} s) ...", end="", flush=True, file=sys.stderr)
        report["parts"][name] = run_part(name, args, budget)
        print(f" {report['parts'][name]['status']} ({report['parts'][name]['wall_s']:.0f} s)",
              file=sys.stderr)
    report["wall_s"] = time.monotonic() - t0
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    md = markdown(report)
    (args.out / "gpu_check.md").write_text(md)
    print(md)
    return 0 if all(v["status"] == "ok" for v in report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

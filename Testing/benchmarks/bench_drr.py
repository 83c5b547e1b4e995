#!/usr/bin/env python
"""DRR renderer benchmark: XrayWorldModel (fast Joseph, exact Siddon) against DiffDRR 0.6.1 and
Plastimatch (``plastimatch drr``, SlicerRT's engine).

Run from the repository root::

    python Testing/benchmarks/bench_drr.py                 # full run: 256 and 512, 1 and 16 angles
    python Testing/benchmarks/bench_drr.py --quick         # 1 repeat, 256x256 only
    python Testing/benchmarks/bench_drr.py --threads 2 --device cpu --json drr.json
    python Testing/benchmarks/bench_drr.py --cli-only        # only the command-line row

The command-line row: ``xray2xray drr`` on the same CT and geometry (256x256 unless
``--sizes`` says otherwise) at 16 and at 64 angles (``--cli-angles``), each a fresh process,
interleaved for ``--repeats`` rounds; its marginal time per DRR, (T(64) - T(16)) / 48, split by
the stages its sidecar times (render, write), next to the engine's time per DRR at the same
geometry and angles (a prepared ``DRRRenderer``, the 16- and 64-angle calls interleaved in one
child), so what the command adds per DRR beyond the engine is read off directly.

Every (renderer, detector, angles) case runs in its own child process (this same script with
``--child``) so that its peak RSS (``ru_maxrss``) belongs to that case alone; the parent only
imports the standard library, so the child does not inherit a large forked image. On the CPU a
child runs under an address-space cap (``RLIMIT_AS``); a DiffDRR batch that does not fit is
retried with one pose per call and the row says so.

Geometry: the real chest CT (``../shared/data/chest_ct.nii.gz``, 512x512x133, 0.703x0.703x2.5
mm), SDD 1800 mm, SOD 1500 mm, isocentre = volume centre, 1 angle = 0 deg (PA) or 16 angles
0, 22.5, ..., 337.5 deg; 2.0 mm pixels at 256x256 and 1.0 mm at 512x512. All renderers
integrate the same attenuation mu = 0.02 * (1 + HU/1000) clipped at 0. DiffDRR gets the
exact camera pose of the package's geometry (see ``diffdrr_pose_matrices``); Plastimatch gets
the option mapping of ``plastimatch_drr.py``, checked on an asymmetric case before its rows
are run (a row whose geometry is not verified is not reported). So the error column is a
like-for-like comparison against the package's exact Siddon renderer.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
DATA = HERE.parents[3] / "shared" / "data"
CT_NAME = "chest_ct.nii.gz"

SDD, SOD = 1800.0, 1500.0
MU_WATER = 0.02
PIXEL_SPACING = {256: 2.0, 512: 1.0}   # mm at the detector; both cover ~512 mm (427 mm at isocentre)
TRILINEAR_POINTS = 500                 # DiffDRR's default n_points
RENDERERS = ("xwm-exact", "xwm-fast", "diffdrr-trilinear", "diffdrr-siddon", "plastimatch-exact",
             "plastimatch-uniform")
LABELS = {"xwm-exact": "xwm exact (Siddon)", "xwm-fast": "xwm fast (Joseph)",
          "diffdrr-trilinear": f"DiffDRR trilinear ({TRILINEAR_POINTS} pts)",
          "diffdrr-siddon": "DiffDRR Siddon",
          "plastimatch-exact": "Plastimatch -i exact", "plastimatch-uniform": "Plastimatch -i uniform"}
PLASTIMATCH_MIN_IOU = 0.95   # every real-CT view must cover the body as ours does
OOM_MARKERS = ("can't allocate memory", "not enough memory", "out of memory", "std::bad_alloc",
               "cannot allocate memory")


def angles_for(n: int):
    """1 angle -> 0 deg (PA); n angles -> evenly over [0, 360)."""
    return tuple(360.0 * k / n for k in range(n))


# =============================================================================== child side
def _rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or any(m in str(exc).lower() for m in OOM_MARKERS)


def _sync(device):
    if device.type == "cuda":
        import torch
        torch.cuda.synchronize(device)


def load_ct(path: Path):
    """The CT as a float32 HU Volume in LPS (package reader when present, else SimpleITK)."""
    try:
        from XrayWorldModel.io import read_ct
    except ImportError:
        read_ct = None
    if read_ct is not None:
        return read_ct(path)
    import numpy as np
    import SimpleITK as sitk
    from XrayWorldModel.volume import Volume
    img = sitk.ReadImage(str(path))
    arr = np.ascontiguousarray(sitk.GetArrayFromImage(img).transpose(2, 1, 0), dtype=np.float32)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    return Volume.from_spacing(arr, img.GetSpacing(), img.GetOrigin(), direction)


def diffdrr_pose_matrices(geometry):
    """DiffDRR extrinsics [A, 4, 4] (float64, RAS world) reproducing ``geometry`` exactly.

    DiffDRR 0.6.1 (``orientation=None`` so ``reorient`` is the identity, and
    ``reverse_x_axis=False``) places the source at the camera origin and pixel (i, j) at
    ``((j-(W-1)/2)*delx, -(i-(H-1)/2)*dely, sdd)`` in camera coordinates, then maps camera to
    world with the pose matrix. Our pixel (i, j) is ``s - SDD*e + (j-(W-1)/2)*du*u +
    (i-(H-1)/2)*dv*v`` (LPS), so the camera axes are (u, -v, -e) and the translation is the
    source; a proper rotation because (u, v, e) is right-handed. LPS -> RAS flips x and y.
    """
    import numpy as np
    e, u, v = geometry.frames()
    src = geometry.source_positions()
    flip = np.diag([-1.0, -1.0, 1.0])
    mats = np.zeros((geometry.n_angles, 4, 4))
    mats[:, :3, :3] = flip @ np.stack([u, -v, -e], axis=-1)
    mats[:, :3, 3] = src @ flip.T
    mats[:, 3, 3] = 1.0
    return mats


def _xwm_jit_warmup(method, device, geometry):
    """Compile (or load from numba's cache) the kernels on a tiny volume, same angles."""
    import numpy as np
    from dataclasses import replace
    from XrayWorldModel.drr import DRRRenderer
    from XrayWorldModel.volume import Volume
    tiny = Volume.from_spacing(np.zeros((12, 12, 12), np.float32), (10.0, 10.0, 10.0))
    g = replace(geometry, detector_shape=(4, 4), pixel_spacing=(60.0, 60.0), isocenter=None)
    DRRRenderer(tiny, method, device=device, mu_water=MU_WATER).render(g)


def run_xwm(volume, geometry, spec, device):
    from XrayWorldModel.drr import DRRRenderer
    method = "exact" if spec["renderer"] == "xwm-exact" else "fast"
    t = time.perf_counter()
    _xwm_jit_warmup(method, device, geometry)
    jit_ms = 1e3 * (time.perf_counter() - t)

    t = time.perf_counter()
    renderer = DRRRenderer(volume, method, device=device, mu_water=MU_WATER)
    ctor_ms = 1e3 * (time.perf_counter() - t)

    def call():
        out = renderer.render(geometry)   # numpy on the host: includes the device->host copy
        _sync(device)
        return out

    # The memory layouts are built lazily by the first render: count them as setup.
    return ctor_ms, call, {"jit_warmup_ms": jit_ms, "device": str(renderer.device),
                           "lazy_setup": True}


def run_diffdrr(volume, geometry, spec, device):
    import numpy as np
    import torch
    from torchio import ScalarImage, Subject
    from diffdrr.drr import DRR
    from diffdrr.pose import RigidTransform
    from XrayWorldModel.drr import hu_to_mu

    H, W = geometry.detector_shape
    dv, du = geometry.pixel_spacing
    poses = torch.as_tensor(diffdrr_pose_matrices(geometry), dtype=torch.float32, device=device)
    chunk = spec.get("chunk") or geometry.n_angles
    patch = spec.get("patch_size")

    t = time.perf_counter()
    # diffdrr.data.read() always rescales HU to a [0, 1] "density" (transform_hu_to_density),
    # so we build the Subject it would build (orientation=None, no re-centring) by hand with
    # our attenuation as the density: both renderers then integrate the same mu.
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine
    mu = torch.from_numpy(hu_to_mu(volume.array, MU_WATER))[None]
    image = ScalarImage(tensor=mu, affine=ras)
    subject = Subject(volume=image, mask=None, orientation=None, reorient=torch.eye(4),
                      density=image, fiducials=None)
    renderer = "siddon" if spec["renderer"] == "diffdrr-siddon" else "trilinear"
    drr = DRR(subject, sdd=geometry.sdd, height=H, width=W, delx=du, dely=dv,
              reverse_x_axis=False, renderer=renderer, patch_size=patch).to(device)
    _sync(device)
    ctor_ms = 1e3 * (time.perf_counter() - t)
    kwargs = {"n_points": TRILINEAR_POINTS} if renderer == "trilinear" else {}

    def call():
        with torch.no_grad():
            parts = [drr(RigidTransform(poses[lo:lo + chunk]), **kwargs)
                     for lo in range(0, len(poses), chunk)]
            out = torch.cat(parts)[:, 0].cpu().numpy()
        _sync(device)
        return out

    # All of DiffDRR's preparation happens in the constructor; its first call does no extra
    # work, so (first - median) would only add timing noise to the setup column.
    return ctor_ms, call, {"device": str(device), "poses_per_call": chunk, "patch_size": patch,
                           "lazy_setup": False}


def run_plastimatch(volume, geometry, spec, device):
    """``plastimatch drr`` on the same attenuation (written once as a float MetaImage, the
    setup) and geometry. Each call renders the angles in one process and, interleaved, the
    first angle alone: the time per DRR is the marginal one, (T(A) - T(1)) / (A - 1), so the
    process start and the volume read are left out as our renderer's setup is."""
    from dataclasses import replace
    import plastimatch_drr as pm
    from XrayWorldModel.drr import hu_to_mu
    work = Path(spec["result"]).parent / f"{spec['renderer']}-{spec['size']}-{spec['n_angles']}"
    t = time.perf_counter()
    mha = pm.write_mha(hu_to_mu(volume.array, MU_WATER), volume.affine, work / "ct.mha")
    ctor_ms = 1e3 * (time.perf_counter() - t)
    algorithm = spec["renderer"].split("-", 1)[1]
    A = geometry.n_angles
    one = replace(geometry, angles=geometry.angles[:1])

    def call():
        _, t1 = pm.render(one, mha, algorithm, work, spec["threads"])
        out, ta = pm.render(geometry, mha, algorithm, work, spec["threads"])
        return out, 1e3 * (ta - t1) * A / (A - 1)     # as the time of A marginal DRRs

    return ctor_ms, call, {"device": "cpu", "lazy_setup": False, "marginal": True,
                           "plastimatch": pm.version()}


def _plastimatch_coverage(res, out, ref):
    """Every view must cover the body as ours does, else the row is not reported."""
    import plastimatch_drr as pm
    cmp = pm.compare_views(ref, out)
    res["coverage_iou_min"] = cmp["min_coverage_iou"]
    res["rel_l2_max_view"] = cmp["max_rel_l2"]
    res["verified"] = cmp["min_coverage_iou"] >= PLASTIMATCH_MIN_IOU


def verify_main(spec) -> dict:
    """The child's job for ``plastimatch-verify``: the mapping on the asymmetric case."""
    import plastimatch_drr as pm
    if pm.executable() is None:
        return {"status": "absent", "message": "plastimatch is not on PATH "
                "(Debian: apt-get install plastimatch)"}
    res = pm.verify(Path(spec["result"]).parent / "verify", spec["threads"])
    ok = res["exact"]["ok"] and res["uniform"]["ok"]
    return {"status": "ok" if ok else "failed", "version": pm.version(), **res}


def engine_pair_main(spec) -> dict:
    """The fast engine at the command line's two angle counts: one prepared renderer, one
    warm-up of each, then ``repeats`` rounds of both calls (ms per call, medians)."""
    import numpy as np
    import numba
    import torch
    from XrayWorldModel.drr import DRRRenderer
    from XrayWorldModel.geometry import ProjectionGeometry
    T = spec["threads"]
    torch.set_num_threads(T)
    numba.set_num_threads(min(T, numba.config.NUMBA_NUM_THREADS))
    volume = load_ct(Path(spec["ct"]))
    size = spec["size"]
    geometries = {A: ProjectionGeometry(angles=angles_for(A), detector_shape=(size, size),
                                        pixel_spacing=(PIXEL_SPACING[size],) * 2, sdd=SDD,
                                        sod=SOD).resolve(volume) for A in spec["angle_pair"]}
    renderer = DRRRenderer(volume, "fast", device=spec["device"], mu_water=MU_WATER)
    times = {A: [] for A in geometries}
    for rep in range(spec["repeats"] + 1):
        for A, g in geometries.items():
            t = time.perf_counter()
            renderer.render(g)
            if rep:                                   # round 0 warms JIT and layouts
                times[A].append(1e3 * (time.perf_counter() - t))
    med = {A: float(np.median(v)) for A, v in times.items()}
    lo, hi = spec["angle_pair"]
    return {"call_ms": {str(A): v for A, v in times.items()},
            "ms_per_drr": {str(A): med[A] / A for A in med},
            "marginal_ms_per_drr": (med[hi] - med[lo]) / (hi - lo)}


def _time_calls(call, repeats: int, marginal: bool):
    """(last output, first call ms, [ms of each timed call]) after one warm-up call; a
    ``marginal`` runner's call returns (output, ms) itself."""
    t = time.perf_counter()
    out = call()                                       # warm-up (first call)
    first_ms = 1e3 * (time.perf_counter() - t)
    if marginal:
        out, first_ms = out
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = call()
        ms = 1e3 * (time.perf_counter() - t)
        if marginal:
            out, ms = out
        times.append(ms)
    return out, first_ms, times


def _runner(name):
    if name.startswith("xwm"):
        return run_xwm
    return run_diffdrr if name.startswith("diffdrr") else run_plastimatch


def child_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    res = {"renderer": spec["renderer"], "size": spec["size"], "n_angles": spec["n_angles"],
           "rss_start_mb": _peak_rss_mb()}
    out_path = Path(spec["result"])

    def finish(status, **kw):
        res.update(status=status, **kw)
        out_path.write_text(json.dumps(res))
        return 0

    if spec["renderer"] == "plastimatch-verify":
        res.update(verify_main(spec))
        return finish(res["status"])
    if spec["renderer"] == "xwm-engine-pair":
        res.update(engine_pair_main(spec))
        return finish("ok")
    if spec["device"] == "cpu" and spec.get("mem_cap_gb"):
        cap = int(spec["mem_cap_gb"] * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        import numpy as np
        import numba
        import torch
        T = spec["threads"]
        torch.set_num_threads(T)
        numba.set_num_threads(min(T, numba.config.NUMBA_NUM_THREADS))
        from XrayWorldModel.geometry import ProjectionGeometry

        device = torch.device(spec["device"])
        if not spec["renderer"].startswith(("xwm-fast", "diffdrr")):
            device = torch.device("cpu")   # the exact renderer and Plastimatch: CPU only
        volume = load_ct(Path(spec["ct"]))
        size = spec["size"]
        geometry = ProjectionGeometry(angles=angles_for(spec["n_angles"]), detector_shape=(size, size),
                                      pixel_spacing=(PIXEL_SPACING[size],) * 2, sdd=SDD, sod=SOD
                                      ).resolve(volume)
        res["rss_after_load_mb"] = _rss_now_mb()
        ctor_ms, call, extra = _runner(spec["renderer"])(volume, geometry, spec, device)
        res.update(extra)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        out, first_ms, times = _time_calls(call, spec["repeats"], bool(extra.get("marginal")))
        res["peak_rss_mb"] = _peak_rss_mb()            # before the reference is read
        if device.type == "cuda":
            res["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    except BaseException as exc:  # noqa: BLE001 - report, never a traceback to the table
        if _is_oom(exc):
            return finish("oom", message=f"{type(exc).__name__}: {str(exc)[:300]}",
                          peak_rss_mb=_peak_rss_mb())
        import traceback
        traceback.print_exc()
        return finish("error", message=f"{type(exc).__name__}: {str(exc)[:300]}")

    A = spec["n_angles"]
    med = float(np.median(times))
    res.update(ctor_ms=ctor_ms, first_call_ms=first_ms, call_ms=times, median_call_ms=med,
               ms_per_drr=med / A, drr_per_s=1e3 * A / med,
               setup_ms=ctor_ms + (max(0.0, first_ms - med) if res.get("lazy_setup") else 0.0))
    out = np.asarray(out, dtype=np.float32)
    res["output_shape"] = list(out.shape)
    res["finite"] = bool(np.isfinite(out).all())
    if spec.get("save_ref"):
        np.save(spec["save_ref"], out)
        res["rel_l2_error"] = 0.0
    elif spec.get("ref") and Path(spec["ref"]).exists():
        ref = np.load(spec["ref"]).astype(np.float64)
        res["rel_l2_error"] = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
        if spec["renderer"].startswith("plastimatch"):
            _plastimatch_coverage(res, out, ref)
    return finish("ok")


# ============================================================================== parent side
def _child_env(threads: int) -> dict:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def _probe(env) -> dict:
    code = ("import json, torch, numba, numpy\n"
            "try:\n import diffdrr; d = diffdrr.__version__\n"
            "except Exception as e: d = None\n"
            "print(json.dumps({'torch': torch.__version__, 'numba': numba.__version__,"
            " 'numpy': numpy.__version__, 'diffdrr': d, 'cuda': torch.cuda.is_available(),"
            " 'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"bench_drr: cannot import torch/numba in this environment:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _mem_available_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def run_case(spec: dict, env, workdir: Path, timeout: float) -> dict:
    tag = (f"{spec['renderer']}-{spec['size']}-{spec['n_angles']}-{spec.get('chunk') or 'all'}"
           f"-{spec.get('patch_size') or 'full'}")
    spec = dict(spec, result=str(workdir / f"{tag}.result.json"))
    spec_path = workdir / f"{tag}.spec.json"
    spec_path.write_text(json.dumps(spec))
    t = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, str(HERE), "--child", str(spec_path)], env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "status": "timeout", "message": f"over {timeout:.0f} s"}
    wall = time.perf_counter() - t
    result_path = Path(spec["result"])
    if result_path.exists():
        res = json.loads(result_path.read_text())
    else:
        tail = (r.stderr or "")[-600:]
        status = "oom" if (r.returncode < 0 and r.returncode in (-9,)) or _is_oom(RuntimeError(tail)) else "crashed"
        res = {"status": status, "message": f"exit code {r.returncode}: {tail.strip()[-300:]}"}
    if res["status"] == "error" and r.stderr:
        res["stderr_tail"] = r.stderr[-1500:]
    res.update(renderer=spec["renderer"], size=spec["size"], n_angles=spec["n_angles"],
               chunk=spec.get("chunk"), child_wall_s=wall)
    return res


def _diffdrr_fallbacks(res, spec, env, workdir, timeout, mem_cap):
    """When DiffDRR runs out of memory, retry with smaller calls, as a user would: first one
    pose per call, then also DiffDRR's own ``patch_size`` (a quarter of the detector side, so
    16 patches rendered in series). The row's notes say which form was timed."""
    A, size = spec["n_angles"], spec["size"]
    cap = f" under the {mem_cap:g} GB cap" if mem_cap else ""
    ladder = ([] if A == 1 else [({"chunk": 1}, "1 pose per call")]) + \
        [({"chunk": 1, "patch_size": size // 4}, f"1 pose per call in 16 patches (patch_size={size // 4})")]
    tried = f"{A} pose{'s' if A > 1 else ''} per call"
    notes = []
    for extra, how in ladder:
        if res["status"] != "oom":
            break
        notes.append(f"{tried}: OOM{cap}")
        print(f" OOM with {tried}, retrying {how} ...", end="", flush=True, file=sys.stderr)
        res = run_case(dict(spec, **extra), env, workdir, timeout)
        tried = how
    if notes:
        res["notes"] = notes + ([f"timed with {tried}"] if res["status"] == "ok" else [])
    return res


def _fmt(x, nd=1):
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{nd}f}"


def _row_cells(r, cuda: bool):
    ok = r["status"] == "ok"
    err = r.get("rel_l2_error")
    err_s = "0 (reference)" if r["renderer"] == "xwm-exact" and ok else (
        "n/a" if err is None else f"{err:.2e}")
    notes = list(r.get("notes", []))
    if not ok:
        notes.append(f"{r['status']}: {r.get('message', '')}".strip().replace("|", "/")[:160])
    if ok and r["renderer"].startswith("plastimatch"):
        notes.append(f"marginal time per DRR; every view covers the body (IoU >= "
                     f"{r['coverage_iou_min']:.3f})")
    cells = [LABELS[r["renderer"]], r.get("device", "n/a"), f"{r['size']}x{r['size']}",
             str(r["n_angles"]),
             _fmt(r.get("ms_per_drr")) if ok else r["status"].upper(),
             _fmt(r.get("drr_per_s"), 2) if ok else "n/a",
             _fmt(r.get("setup_ms")) if ok else "n/a",
             _fmt(r.get("peak_rss_mb"), 0) if ok else "n/a"]
    if cuda:
        cells.append(_fmt(r.get("peak_gpu_mb"), 0) if ok and r.get("peak_gpu_mb") else "n/a")
    ratio = r.get("speed_vs_diffdrr_trilinear")
    pm = r.get("speed_vs_plastimatch_faster")
    cells += [err_s, "n/a" if ratio is None else f"{ratio:.2f}x",
              "n/a" if pm is None else f"{pm:.2f}x", "; ".join(notes)]
    return cells


def _plastimatch_line(meta) -> str:
    chk = meta.get("plastimatch_check")
    if not chk:
        return "Plastimatch: not asked for."
    if chk["status"] != "ok":
        return f"Plastimatch rows left out: {chk['status']}: {chk.get('message', '')}"
    return (f"Plastimatch {chk['version']} at the mapped geometry (Testing/benchmarks/"
            f"plastimatch_drr.py), checked first on {chk['case']}: max view error vs xwm exact "
            f"{chk['exact']['max_rel_l2']:.1e} (-i exact), {chk['uniform']['max_rel_l2']:.1e} "
            f"(-i uniform), coverage IoU {min(chk['exact']['min_coverage_iou'], chk['uniform']['min_coverage_iou']):.3f}. "
            "Its ms / DRR is marginal, (T(A angles) - T(1 angle)) / (A - 1) of the command, "
            "so process start and volume read are left out (its setup = writing the float "
            "MetaImage); 2+ angles only. OMP_NUM_THREADS = the thread count.")


def make_table(rows, meta) -> str:
    cuda = meta["device"] == "cuda"
    head = ["renderer", "device", "detector", "angles", "ms / DRR", "DRR/s", "setup (ms)",
            "peak RSS (MB)"] + (["peak GPU (MB)"] if cuda else []) + \
           ["rel. L2 err vs exact", "speed vs DiffDRR trilinear", "speed vs Plastimatch faster mode",
            "notes"]
    lines = [
        f"DRR benchmark, chest CT {meta['ct_shape']} ({meta['ct_spacing']} mm); SDD {SDD:g} mm, "
        f"SOD {SOD:g} mm, isocentre = volume centre; pixel spacing 2.0 mm at 256x256, 1.0 mm at "
        f"512x512; 1 angle = 0 deg (PA), 16 angles = 0..337.5 deg step 22.5.",
        f"device {meta['device']}{' (' + meta['gpu'] + ')' if meta.get('gpu') else ''}, "
        f"{meta['threads']} CPU threads, median of {meta['repeats']} after 1 warm-up; "
        f"CPU memory cap {meta['mem_cap']}; torch {meta['torch']}, numba {meta['numba']}, "
        f"diffdrr {meta['diffdrr']}; {meta['cpu']}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    hidden = [r for r in rows if r["status"] == "unverified"]
    lines += ["| " + " | ".join(_row_cells(r, cuda)) + " |" for r in rows
              if r["status"] != "unverified"]
    lines += ["", "ms / DRR = median wall time of one render call / number of angles (host "
              "output, device synchronised). setup = one-time preparation: xwm = "
              "DRRRenderer construction (HU->mu, cropping) + the memory layouts its first render "
              "builds (first call - median call), numba JIT warmed on a tiny volume first and not "
              "counted; DiffDRR = HU->mu + Subject + DRR module construction (its first call does "
              "no extra work). Peak RSS = ru_maxrss of the "
              "child process running the case (includes Python, torch, numba and the loaded "
              f"CT: {meta.get('baseline_rss_mb', 'n/a')} MB before any renderer is built). "
              "Error = ||x - ref|| / ||ref|| over all angles, ref = xwm exact (Siddon) on the "
              "same geometry and attenuation. Speed ratios = the other renderer's ms / this ms "
              "in the same case.", "", _plastimatch_line(meta)]
    lines += [f"Not reported (geometry not verified on the real CT): {LABELS[r['renderer']]} "
              f"{r['size']}x{r['size']} x{r['n_angles']}: {r.get('message', '')}" for r in hidden]
    return "\n".join(lines)


def _speed_ratios(case_rows) -> None:
    """Speed of each row against DiffDRR trilinear and against Plastimatch's faster mode
    (its lower ms per DRR of ``-i exact`` and ``-i uniform``) in the same case."""
    ok = {k: r for k, r in case_rows.items() if r["status"] == "ok"}
    base = ok.get("diffdrr-trilinear")
    pm = [r for k, r in ok.items() if k.startswith("plastimatch")]
    pm_fast = min(pm, key=lambda r: r["ms_per_drr"]) if pm else None
    for r in ok.values():
        if base:
            r["speed_vs_diffdrr_trilinear"] = base["ms_per_drr"] / r["ms_per_drr"]
        if pm_fast:
            r["speed_vs_plastimatch_faster"] = pm_fast["ms_per_drr"] / r["ms_per_drr"]
            r["plastimatch_faster_mode"] = pm_fast["renderer"]


def _cli_drr(args, size: int, A: int, out: Path, env) -> dict:
    """One fresh ``xray2xray drr`` at ``A`` angles: wall s and its sidecar's stage times."""
    step = 360.0 / A
    cmd = [sys.executable, "-m", "XrayWorldModel", "drr", str(args.ct), "--out", str(out),
           "--angle-range", "0", "360", repr(step), "--detector", str(size), str(size),
           "--pixel-spacing", str(PIXEL_SPACING[size]), "--sdd", str(SDD), "--sod", str(SOD),
           "--mu-water", str(MU_WATER), "--device", args.device, "--quiet", "--overwrite"]
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - t
    if r.returncode:
        raise RuntimeError(f"xray2xray drr failed ({r.returncode}): {r.stderr[-1500:]}")
    side = json.loads(out.with_name(out.name.replace(".nii.gz", ".json")).read_text())
    if side["angles_deg"] != list(angles_for(A)):
        raise RuntimeError(f"xray2xray drr rendered angles {side['angles_deg'][:3]}..., "
                           f"not the engine's {list(angles_for(A))[:3]}...")
    return {"wall_s": wall, **side["timings_s"]}


def cli_rows(args, env, workdir: Path, sizes, repeats: int) -> list:
    """For each size: the command at the two angle counts, interleaved (order alternating),
    then the engine child at the same geometry; marginal times per DRR of both."""
    import statistics
    lo, hi = (int(a) for a in args.cli_angles.split(","))
    rows = []
    for size in sizes:
        print(f"[bench_drr] xray2xray drr (fresh processes) {size}x{size} x{lo} vs x{hi} ...",
              end="", flush=True, file=sys.stderr)
        load = [os.getloadavg()[0]]
        runs = {lo: [], hi: []}
        for rep in range(repeats):
            for A in ((lo, hi) if rep % 2 == 0 else (hi, lo)):
                runs[A].append(_cli_drr(args, size, A, workdir / f"cli-{size}-{A}.nii.gz", env))
        spec = {"renderer": "xwm-engine-pair", "size": size, "n_angles": hi,
                "angle_pair": [lo, hi], "threads": args.threads, "device": args.device,
                "repeats": repeats, "ct": str(args.ct)}
        engine = run_case(spec, env, workdir, args.timeout)
        load.append(os.getloadavg()[0])
        med = {A: {k: statistics.median(r[k] for r in v) for k in v[0]} for A, v in runs.items()}
        marginal = {k: 1e3 * (med[hi][k] - med[lo][k]) / (hi - lo) for k in med[hi]}
        row = {"size": size, "angles": [lo, hi], "cli_median_s": med, "cli_runs": runs,
               "cli_marginal_ms_per_drr": marginal, "engine": engine, "load_avg_1min": load}
        if engine["status"] == "ok":
            row["ratio_vs_engine_marginal"] = marginal["wall_s"] / engine["marginal_ms_per_drr"]
            row["ratio_vs_engine_per_drr"] = marginal["wall_s"] / engine["ms_per_drr"][str(hi)]
        rows.append(row)
        print(f" {marginal['wall_s']:.1f} ms/DRR marginal", file=sys.stderr)
    return rows


def cli_table(rows, meta) -> str:
    if not rows:
        return ""
    lo, hi = rows[0]["angles"]
    lines = ["", f"`xray2xray drr` against its engine, {meta['threads']} threads, device "
             f"{meta['device']}, median of {meta['repeats']} fresh runs per angle count (interleaved); "
             f"marginal = (T({hi}) - T({lo})) / {hi - lo}", "",
             f"| detector | command, {lo} angles (s) | command, {hi} angles (s) | command, marginal "
             f"ms / DRR | of which render | of which write | engine ms / DRR ({lo} / {hi} angles) | "
             f"engine marginal ms / DRR | command / engine | load avg |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        m, e = r["cli_marginal_ms_per_drr"], r["engine"]
        ok = e["status"] == "ok"
        per = f"{e['ms_per_drr'][str(lo)]:.1f} / {e['ms_per_drr'][str(hi)]:.1f}" if ok else e["status"]
        lines.append(
            f"| {r['size']}x{r['size']} | {r['cli_median_s'][lo]['wall_s']:.2f} | "
            f"{r['cli_median_s'][hi]['wall_s']:.2f} | **{m['wall_s']:.1f}** | {m['render'] :.1f} | "
            f"{m['write']:.1f} | {per} | {e.get('marginal_ms_per_drr', float('nan')):.1f} | "
            f"**{r.get('ratio_vs_engine_marginal', float('nan')):.2f}x** | "
            f"{r['load_avg_1min'][0]:.1f} -> {r['load_avg_1min'][1]:.1f} |")
    return "\n".join(lines)


def _verify_plastimatch(env, args) -> dict:
    """The Plastimatch option mapping checked on the asymmetric case, in a child process."""
    print("[bench_drr] Plastimatch geometry check (asymmetric case) ...", end="", flush=True,
          file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench_drr_pm_") as tmp:
        spec = {"renderer": "plastimatch-verify", "size": 0, "n_angles": 4,
                "threads": args.threads, "device": "cpu", "repeats": 1, "ct": str(args.ct)}
        res = run_case(spec, env, Path(tmp), args.timeout)
    print(f" {res['status']}", file=sys.stderr)
    if res["status"] != "ok":
        print(f"bench_drr: Plastimatch rows left out: {res.get('message') or res}", file=sys.stderr)
    return res


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="1 repeat and only the 256x256 detector (unless --sizes is given)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch and numba (default 2)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="device for xwm fast and DiffDRR (xwm exact always runs on the CPU)")
    p.add_argument("--json", type=Path, help="write the rows and metadata to this JSON file")
    p.add_argument("--repeats", type=int, help="timed repeats after the warm-up (default 3; 1 with --quick)")
    p.add_argument("--sizes", help="detector sizes, comma-separated from 256,512 (default both)")
    p.add_argument("--angles", default="1,16", help="angle counts, comma-separated (default 1,16)")
    p.add_argument("--renderers", default=",".join(RENDERERS),
                   help=f"subset of {','.join(RENDERERS)} (xwm-exact is always run: it is the reference)")
    p.add_argument("--mem-cap-gb", type=float, default=20.0,
                   help="address-space cap per CPU child, GB (default 20, lowered to 80%% of the "
                        "memory available when the machine has less); 0 = no cap")
    p.add_argument("--timeout", type=float, default=7200.0, help="seconds per case (default 7200)")
    p.add_argument("--cli-angles", default="16,64",
                   help="the two angle counts of the `xray2xray drr` row (default 16,64; "
                   "'none' leaves the row out)")
    p.add_argument("--cli-only", action="store_true",
                   help="only the `xray2xray drr` row (256x256 unless --sizes is given)")
    p.add_argument("--ct", type=Path, default=DATA / CT_NAME, help=argparse.SUPPRESS)
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    if not args.ct.exists():
        sys.exit(f"bench_drr: the real chest CT is needed but {args.ct} does not exist "
                 f"(expected ../shared/data next to the repository; see DESIGN.md).")
    sizes = [int(s) for s in (args.sizes or ("256" if args.quick or args.cli_only
                                             else "256,512")).split(",")]
    bad = [s for s in sizes if s not in PIXEL_SPACING]
    if bad:
        sys.exit(f"bench_drr: --sizes must come from {sorted(PIXEL_SPACING)}, got {bad}")
    n_angles = [int(a) for a in args.angles.split(",")]
    wanted = [r.strip() for r in args.renderers.split(",") if r.strip()]
    unknown = set(wanted) - set(RENDERERS)
    if unknown:
        sys.exit(f"bench_drr: unknown renderer(s) {sorted(unknown)}; choose from {RENDERERS}")
    renderers = [] if args.cli_only else [r for r in RENDERERS if r in wanted or r == "xwm-exact"]
    repeats = args.repeats or (1 if args.quick else 3)
    env = _child_env(args.threads)
    info = _probe(env)
    if args.device == "cuda" and not info["cuda"]:
        sys.exit("bench_drr: --device cuda was asked for but torch sees no CUDA device here")
    if any(r.startswith("diffdrr") for r in renderers) and not info["diffdrr"]:
        print("bench_drr: diffdrr is not importable; its rows will be skipped "
              "(pip install --no-deps diffdrr==0.6.1 torchio fastcore einops pandas scipy matplotlib)",
              file=sys.stderr)
        renderers = [r for r in renderers if not r.startswith("diffdrr")]
    mem_cap = 0.0
    pm_note = None
    if any(r.startswith("plastimatch") for r in renderers):
        pm_note = _verify_plastimatch(env, args)
        if pm_note["status"] != "ok":
            renderers = [r for r in renderers if not r.startswith("plastimatch")]
    if args.device == "cpu" and args.mem_cap_gb > 0:
        mem_cap = round(min(args.mem_cap_gb, 0.8 * _mem_available_gb()), 1)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    meta = {"device": args.device, "threads": args.threads, "repeats": repeats,
            "mem_cap": f"{mem_cap:.1f} GB (RLIMIT_AS)" if mem_cap else "none",
            "mem_cap_gb": mem_cap, "cpu": cpu, "ct": str(args.ct),
            "ct_shape": "512x512x133", "ct_spacing": "0.703x0.703x2.5",
            "python": platform.python_version(), **info, "plastimatch_check": pm_note,
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    rows, cli = [], []
    with tempfile.TemporaryDirectory(prefix="bench_drr_") as tmp:
        workdir = Path(tmp)
        if args.cli_angles != "none":
            cli = cli_rows(args, env, workdir, [s for s in sizes if s == 256] or sizes[:1], repeats)
        for size in ([] if args.cli_only else sizes):
            for A in n_angles:
                ref = workdir / f"ref-{size}-{A}.npy"
                case_rows = {}
                for name in renderers:
                    if name.startswith("plastimatch") and A < 2:
                        continue                 # its time per DRR is marginal: 2+ angles
                    spec = {"renderer": name, "size": size, "n_angles": A, "threads": args.threads,
                            "device": args.device, "repeats": repeats, "ct": str(args.ct),
                            "mem_cap_gb": mem_cap}
                    if name == "xwm-exact":
                        spec["save_ref"] = str(ref)
                    else:
                        spec["ref"] = str(ref)
                    print(f"[bench_drr] {LABELS[name]:28s} {size}x{size} x{A:<3d} ...",
                          end="", flush=True, file=sys.stderr)
                    res = run_case(spec, env, workdir, args.timeout)
                    if name.startswith("diffdrr"):
                        res = _diffdrr_fallbacks(res, spec, env, workdir, args.timeout, mem_cap)
                    if res["status"] == "ok" and not res.get("finite", True):
                        res.setdefault("notes", []).append("output has non-finite values")
                    if res["status"] == "ok" and res.get("verified") is False:
                        res["status"] = "unverified"     # kept in the JSON, not in the table
                        res["message"] = (f"a view covers the body only to IoU "
                                          f"{res['coverage_iou_min']:.3f}")
                    print(f" {res['status']}"
                          + (f", {res['ms_per_drr']:.1f} ms/DRR" if res["status"] == "ok" else "")
                          + f" ({res['child_wall_s']:.0f} s)", file=sys.stderr)
                    case_rows[name] = res
                    rows.append(res)
                _speed_ratios(case_rows)
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    base = [r["rss_after_load_mb"] for r in rows if r.get("rss_after_load_mb")]
    meta["baseline_rss_mb"] = round(min(base)) if base else "n/a"
    table = (make_table(rows, meta) if rows else "") + cli_table(cli, meta)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": rows, "cli_rows": cli,
                                         "table": table}, indent=1))
        print(f"\nrows written to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

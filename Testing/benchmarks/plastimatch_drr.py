"""Plastimatch's DRR engine (``plastimatch drr``, what SlicerRT's DRR module runs) driven at
exactly the package's geometry and attenuation, for ``bench_drr.py``.

Option mapping (Plastimatch 1.9.4, checked by :func:`verify` on an asymmetric case):

=====================  ======================================================================
ours                   ``plastimatch drr``
=====================  ======================================================================
angle phi (deg)        ``-y`` theta = 270 deg - phi **in radians** (1.9.4 reads ``-y`` as
                       radians although its help says degrees; ``-N`` is in degrees). Its
                       source sits at iso + SAD (cos theta, -sin theta, 0); ours at
                       iso + SOD (-sin phi, cos phi, 0). Evenly spaced angles go in one call:
                       ``-a A -N -step``.
SOD, SDD               ``--sad``, ``--sid``
isocentre (LPS mm)     ``-o "x y z"`` (Plastimatch's DICOM/ITK world coordinates are LPS)
rows (superior up)     ``--vup "0 0 1"`` (its default): row 0 is the head end, as ours
columns                Plastimatch's columns run along -u (it views the panel from the source
                       side), so its image is ours mirrored left-right: columns are flipped
W x H, du x dv         ``-r "W H"``, ``-z "W*du H*dv"``: the first value is the column count /
                       width (its help says "row col"; a non-square detector shows otherwise)
image centre           not set: ((W-1)/2, (H-1)/2), as ours
attenuation            Plastimatch's own HU conversion (``-P preprocess``/``inline``) is
                       mu = 0.022 (1 + HU/1000) for HU > -800, else 0, and it divides the line
                       integral by 10 (mm -> cm). We give it our mu (1/mm, float) with
                       ``-P none`` and undo the division with ``-s 10``.
input                  MetaImage (``.mha``), MET_FLOAT, identity direction: its ray tracers use
                       the origin and spacing only, so axes with a negative direction are
                       flipped (exactly, no resampling) before writing
output                 ``-t raw``: float32, row-major, one file per angle
``-i exact``           Siddon-type walk, like our exact renderer
``-i uniform``         trilinear samples every 0.75 x spacing[0] mm along the ray
=====================  ======================================================================

Checked by :func:`verify`: an off-centre ellipsoid body with two balls, a 40 x 56 detector,
angles 0, 30, 90 and 200 deg: ``-i exact`` equals our exact renderer to ~1e-6, and each view
covers the same pixels (``-i uniform``: ~1% error). The check discriminates: without the
column flip the error is 7.6%, with theta given in degrees 29%.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import time
from pathlib import Path

ALGORITHMS = ("exact", "uniform")
#: MU_WATER of the benchmark volume is irrelevant here: the volume is given as attenuation.
VERIFY_ANGLES = (0.0, 30.0, 90.0, 200.0)


def executable():
    """The ``plastimatch`` program, or None."""
    return shutil.which("plastimatch")


def version() -> str:
    exe = executable()
    if exe is None:
        return "absent"
    r = subprocess.run([exe, "--version"], capture_output=True, text=True)
    return (r.stdout.strip().split() or ["?"])[-1]


def write_mha(mu, affine, path) -> Path:
    """``mu`` [X, Y, Z] (index order of the 4x4 LPS ``affine``, axis-aligned) as a float32
    MetaImage with identity direction; axes whose direction is negative are flipped."""
    import numpy as np
    arr = np.asarray(mu, np.float32)
    m = np.asarray(affine, np.float64)[:3, :3]
    if not np.allclose(m, np.diag(np.diag(m))):
        raise ValueError("Plastimatch ignores direction cosines: only axis-aligned volumes "
                         "(a diagonal index-to-LPS matrix) are mapped exactly")
    origin = np.asarray(affine, np.float64)[:3, 3].copy()
    flips = []
    for ax in range(3):
        if m[ax, ax] < 0:
            flips.append(slice(None, None, -1))
            origin[ax] += m[ax, ax] * (arr.shape[ax] - 1)
        else:
            flips.append(slice(None))
    arr = arr[tuple(flips)]
    spacing = np.abs(np.diag(m))
    header = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
              "TransformMatrix = 1 0 0 0 1 0 0 0 1\n"
              f"Offset = {' '.join(repr(float(x)) for x in origin)}\n"
              f"ElementSpacing = {' '.join(repr(float(x)) for x in spacing)}\n"
              f"DimSize = {arr.shape[0]} {arr.shape[1]} {arr.shape[2]}\n"
              "ElementType = MET_FLOAT\nElementDataFile = LOCAL\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header.encode())
        f.write(np.asarray(arr, "<f4").tobytes(order="F"))   # x fastest
    return path


def gantry_radians(angle_deg: float) -> float:
    """Plastimatch's ``-y`` value (radians) for our angle (degrees)."""
    return math.radians((270.0 - angle_deg) % 360.0)


def _angle_runs(angles):
    """Split ``angles`` into runs of constant step: [(first angle, step, count)]."""
    runs = []
    i = 0
    while i < len(angles):
        if i + 1 < len(angles):
            step = angles[i + 1] - angles[i]
            n = 2
            while i + n < len(angles) and abs(angles[i + n] - angles[i + n - 1] - step) < 1e-9:
                n += 1
        else:
            step, n = 0.0, 1
        runs.append((angles[i], step, n))
        i += n
    return runs


def command(geometry, mha, prefix, algorithm: str, first: float, step: float, count: int):
    """The ``plastimatch drr`` command line rendering ``count`` angles from ``first`` (deg)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}")
    if geometry.beam != "cone" or geometry.tilt:
        raise ValueError("Plastimatch's gantry is a cone beam without tilt")
    H, W = geometry.detector_shape
    dv, du = geometry.pixel_spacing
    iso = geometry.isocenter
    return [executable(), "drr", "-t", "raw", "-i", algorithm, "-P", "none", "-s", "10",
            "--sad", repr(float(geometry.sod)), "--sid", repr(float(geometry.sdd)),
            "-r", f"{W} {H}", "-z", f"{W * du!r} {H * dv!r}",
            "-o", " ".join(repr(float(x)) for x in iso), "--vup", "0 0 1",
            "-y", repr(gantry_radians(first)), "-a", str(count),
            f"--gantry-angle-spacing={-step!r}", "-O", str(prefix), "-I", str(mha)]


def render(geometry, mha, algorithm: str, workdir, threads: int = 2):
    """Plastimatch DRRs of the volume in ``mha`` at ``geometry`` (isocentre set), in our
    layout: float32 [A, H, W] line integrals of attenuation. Returns (images, wall seconds
    of the ``plastimatch`` processes)."""
    import numpy as np
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    H, W = geometry.detector_shape
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    images, wall = [], 0.0
    for r, (first, step, count) in enumerate(_angle_runs(list(geometry.angles))):
        prefix = workdir / f"run{r}_"
        cmd = command(geometry, mha, prefix, algorithm, first, step, count)
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall += time.perf_counter() - t
        if done.returncode:
            raise RuntimeError(f"plastimatch drr failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout)[-500:]}")
        for a in range(count):
            raw = prefix.parent / f"{prefix.name}{a:04d}.raw"
            images.append(np.fromfile(raw, "<f4").reshape(H, W)[:, ::-1])
            raw.unlink()
    return np.stack(images), wall


def coverage_iou(a, b, frac: float = 0.01) -> float:
    """Intersection over union of the pixels above ``frac`` of the maximum in two views."""
    import numpy as np
    ma = a > frac * max(float(a.max()), 1e-30)
    mb = b > frac * max(float(b.max()), 1e-30)
    union = np.logical_or(ma, mb).sum()
    return float(np.logical_and(ma, mb).sum() / union) if union else 0.0


def compare_views(ours, theirs) -> dict:
    """Per-view relative L2 error and coverage IoU of ``theirs`` against ``ours`` [A, H, W]."""
    import numpy as np
    errs = [float(np.linalg.norm(t - o) / max(np.linalg.norm(o), 1e-30)) for o, t in zip(ours, theirs)]
    ious = [coverage_iou(o, t) for o, t in zip(ours, theirs)]
    return {"rel_l2_per_view": errs, "coverage_iou_per_view": ious,
            "max_rel_l2": max(errs), "min_coverage_iou": min(ious)}


def verify(workdir, threads: int = 2, tolerance=None) -> dict:
    """The mapping above, checked on an asymmetric case against our exact renderer: an
    off-centre body with two balls, a non-square 40 x 56 detector, four angles. ``ok`` when
    every view covers the body as ours does (IoU >= 0.99) and the relative L2 error of each
    view is within ``tolerance`` (exact 1e-4, uniform 2e-2)."""
    from XrayWorldModel.drr import render_drr
    from XrayWorldModel.geometry import ProjectionGeometry
    from XrayWorldModel.phantom import Ellipsoid, EllipsoidPhantom
    tolerance = tolerance or {"exact": 1e-4, "uniform": 2e-2}
    ph = EllipsoidPhantom([Ellipsoid((12.0, -8.0, 5.0), (110.0, 80.0, 95.0), None, 0.02),
                           Ellipsoid((50.0, -20.0, 40.0), (15.0, 15.0, 15.0), None, 0.03),
                           Ellipsoid((-30.0, 40.0, -50.0), (10.0, 20.0, 10.0), None, 0.04)])
    vol = ph.voxelize((80, 64, 72), 3.5)
    g = ProjectionGeometry(angles=VERIFY_ANGLES, detector_shape=(40, 56), pixel_spacing=(3.0, 3.0),
                           sdd=1800.0, sod=1500.0).resolve(vol)
    ref = render_drr(vol, g, "exact", units="mu")
    mha = write_mha(vol.array, vol.affine, Path(workdir) / "verify.mha")
    out = {"case": "ellipsoid body + 2 balls, 80x64x72 @ 3.5 mm, detector 40x56 @ 3 mm, "
                   f"angles {', '.join(f'{a:g}' for a in VERIFY_ANGLES)} deg"}
    for alg in ALGORITHMS:
        imgs, _ = render(g, mha, alg, Path(workdir) / f"verify-{alg}", threads)
        res = compare_views(ref, imgs)
        res["ok"] = res["min_coverage_iou"] >= 0.99 and res["max_rel_l2"] <= tolerance[alg]
        out[alg] = res
    return out

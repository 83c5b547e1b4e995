"""Tomographic reconstruction in the package geometry: FDK plus optional SIRT refinement.

FDK (Feldkamp-Davis-Kress) is the standard cone-beam filtered backprojection for a
circular orbit: cosine pre-weighting, a windowed ramp filter along detector rows, and a
voxel-driven backprojection with the cone-beam distance weight. It runs in PyTorch, so
the same code uses a GPU when there is one, and projections are backprojected in chunks
of angles to keep memory bounded. :func:`refine` then lowers the reprojection error with a
few SIRT steps through the differentiable fast renderer.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..console import progress_bar
from ..drr.render import DEFAULT_MU_WATER, project, resolve_device
from ..errors import GeometryError, InputError
from ..geometry import ProjectionGeometry
from ..volume import Volume

FILTERS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")
#: Projection values above this fraction of the largest are the object's shadow (support).
SUPPORT_THRESHOLD = 0.01
#: Room left around the support by the default grid (a fraction of its size).
SUPPORT_MARGIN = 0.02


def mu_to_hu(array, mu_water: float = DEFAULT_MU_WATER):
    """Hounsfield units from linear attenuation (1/mm): the inverse of ``hu_to_mu``."""
    return (np.asarray(array, dtype=np.float32) / np.float32(mu_water) - 1.0) * 1000.0


def ramp_filter(n: int, spacing: float, window: str = "hann", device=None) -> torch.Tensor:
    """Frequency response (length ``n``, FFT order) of the band-limited ramp filter for
    samples ``spacing`` mm apart, from the exact discrete (Ram-Lak) spatial kernel so the
    DC term is right, times an apodisation window."""
    if window not in FILTERS:
        raise InputError(f"unknown filter {window!r}; choose one of {', '.join(FILTERS)}")
    k = torch.arange(n, dtype=torch.float64, device=device)
    k = torch.where(k <= n // 2, k, k - n)              # signed offsets in FFT order
    h = torch.zeros(n, dtype=torch.float64, device=device)
    h[k == 0] = 1.0 / (4.0 * spacing ** 2)
    odd = (k.abs() % 2) == 1
    h[odd] = -1.0 / (math.pi * k[odd] * spacing) ** 2
    resp = torch.fft.fft(h).real * spacing                # includes the sample spacing
    f = torch.fft.fftfreq(n, device=device, dtype=torch.float64).abs() * 2   # 0..1 of Nyquist
    if window == "shepp-logan":
        resp = resp * torch.sinc(f / 2)
    elif window == "cosine":
        resp = resp * torch.cos(math.pi * f / 2)
    elif window == "hamming":
        resp = resp * (0.54 + 0.46 * torch.cos(math.pi * f))
    elif window == "hann":
        resp = resp * (0.5 + 0.5 * torch.cos(math.pi * f))
    return resp


def default_grid(geometry: ProjectionGeometry, shape: Sequence[int],
                 spacing: Optional[Sequence[float]] = None) -> Volume:
    """An axis-aligned LPS grid centred on the isocentre; with no ``spacing``, just large
    enough for the cylinder every projection sees (the field of view)."""
    shape = tuple(int(n) for n in np.broadcast_to(np.asarray(shape), (3,)))
    H, W = geometry.detector_shape
    dv, du = geometry.pixel_spacing
    m = geometry.magnification
    if spacing is None:
        radius = (W - 1) / 2 * du / m
        half_h = (H - 1) / 2 * dv / m
        if geometry.beam == "cone":      # the cone narrows on the far side
            radius = radius * geometry.sod / (geometry.sod + radius)
            half_h = half_h * (geometry.sod - radius) / geometry.sod
        spacing = (2 * radius / math.sqrt(2) / shape[0], 2 * radius / math.sqrt(2) / shape[1],
                   2 * half_h / shape[2])
    spacing = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,))
    c = np.asarray(geometry.isocenter if geometry.isocenter is not None else (0, 0, 0), float)
    origin = c - (np.asarray(shape) - 1) / 2 * spacing
    return Volume.from_spacing(np.zeros(shape, np.float32), spacing, origin)


def _half_gap(angles_deg: Sequence[float]) -> float:
    """Half the largest gap (radians, at most 45 deg) between view directions taken modulo
    180 deg: how far from side-on the view that sees a point most side-on can be."""
    a = np.sort(np.mod(np.asarray(angles_deg, dtype=np.float64), 180.0))
    gaps = np.diff(np.concatenate([a, a[:1] + 180.0])) if len(a) else np.array([180.0])
    return math.radians(min(float(gaps.max()) / 2, 45.0))


def support_extent(projections, geometry: ProjectionGeometry,
                   threshold: float = SUPPORT_THRESHOLD) -> Optional[Tuple[float, float]]:
    """(radius, half height) in mm, about the isocentre, of the cylinder that holds all the
    projections show (values above ``threshold`` times the largest); None when they show
    nothing. A point at radius r is seen side-on (depth 0) by some view of a full orbit,
    where its shadow lies r times the magnification from the detector centre; the widest
    shadow over the views therefore bounds r, with a margin for the angular step."""
    p = np.asarray(projections, dtype=np.float32)
    peak = float(p.max()) if p.size else 0.0
    if not peak > 0:
        return None
    H, W = geometry.detector_shape
    dv, du = geometry.pixel_spacing
    seen = p > threshold * peak                                       # [A, H, W]
    cols = np.flatnonzero(seen.any(axis=(0, 1)))
    rows = np.flatnonzero(seen.any(axis=(0, 2)))
    reach_u = (max(abs(cols[0] - (W - 1) / 2), abs(cols[-1] - (W - 1) / 2)) + 0.5) * du
    reach_v = (max(abs(rows[0] - (H - 1) / 2), abs(rows[-1] - (H - 1) / 2)) + 0.5) * dv
    delta = _half_gap(geometry.angles)
    if geometry.beam != "cone":
        return reach_u / math.cos(delta), reach_v
    # side-on up to delta, and possibly on the far (less magnified) side of the isocentre
    sod, sdd = geometry.sod, geometry.sdd
    radius = reach_u * sod / (sdd * math.cos(delta) - reach_u * math.sin(delta))
    return radius, reach_v * (sod + radius * math.sin(delta)) / sdd


def support_grid(projections, geometry: ProjectionGeometry, shape: Sequence[int]) -> Volume:
    """The default grid of :func:`fdk`: centred on the isocentre and just covering what the
    projections show (:func:`support_extent`, plus a small margin); the field every view
    sees (:func:`default_grid`) when they show nothing."""
    extent = support_extent(projections, geometry)
    shape = tuple(int(n) for n in np.broadcast_to(np.asarray(shape), (3,)))
    if extent is None:
        return default_grid(geometry, shape)
    radius, half_h = (e * (1 + SUPPORT_MARGIN) for e in extent)
    return default_grid(geometry, shape, (2 * radius / shape[0], 2 * radius / shape[1],
                                          2 * half_h / shape[2]))


def warn_if_cropped(grid: Volume, projections, geometry: ProjectionGeometry) -> None:
    """Warn when a grid chosen by the user is smaller than what the projections show."""
    extent = support_extent(projections, geometry)
    if extent is None:
        return
    radius, half_h = extent
    size = np.asarray(grid.shape) * np.asarray(grid.spacing)
    if min(size[0], size[1]) < 2 * radius or size[2] < 2 * half_h:
        warnings.warn(f"the reconstruction grid ({size[0]:.0f} x {size[1]:.0f} x {size[2]:.0f} "
                      f"mm) crops the object the projections show ({2 * radius:.0f} mm across, "
                      f"{2 * half_h:.0f} mm tall); the default voxel size covers it",
                      stacklevel=3)


def _check_orbit(geometry: ProjectionGeometry, n_proj: int):
    if geometry.tilt != 0:
        raise GeometryError("FDK needs an untilted circular orbit (tilt = 0)")
    if geometry.isocenter is None:
        raise GeometryError("FDK needs the geometry's isocentre (use geometry.resolve(volume))")
    if n_proj != geometry.n_angles:
        raise InputError(f"{n_proj} projections but the geometry has {geometry.n_angles} angles")


def _angle_weights(angles_deg: np.ndarray) -> np.ndarray:
    """Angular interval (radians) each projection stands for; warns for less than a full
    circle, where plain FDK is only approximate (no short-scan weighting)."""
    a = np.sort(np.mod(angles_deg, 360.0))
    order = np.argsort(np.mod(angles_deg, 360.0))
    gaps = np.diff(np.concatenate([a, a[:1] + 360.0]))
    if len(a) < 2 or gaps.max() > 3 * np.median(gaps) + 1e-9:
        warnings.warn("the projections do not cover a full circle evenly; FDK will show "
                      "limited-angle artefacts", stacklevel=3)
    # each projection owns half of the gap on either side
    own = 0.5 * (gaps + np.roll(gaps, 1))
    w = np.empty_like(own)
    w[order] = own
    return np.deg2rad(w)


def _voxel_offsets(grid: Volume, geometry: ProjectionGeometry) -> torch.Tensor:
    """Voxel centres of ``grid`` relative to the isocentre (mm, LPS), [3, N] in float64,
    voxels flattened in C order (the grid's last axis fastest)."""
    ii = [torch.arange(n, dtype=torch.float64) for n in grid.shape]
    idx = torch.stack([t.reshape(-1) for t in torch.meshgrid(*ii, indexing="ij")])
    aff = torch.as_tensor(grid.affine)
    centre = aff[:3, 3] - torch.as_tensor(geometry.isocenter, dtype=torch.float64)
    return aff[:3, :3] @ idx + centre[:, None]


def _orbit_axis(grid: Volume, geometry: ProjectionGeometry, tol: float = 1e-9) -> Optional[int]:
    """The grid axis the orbit turns about, when the backprojection separates along it: every
    view's source direction and detector columns are perpendicular to that axis, and its
    detector rows are perpendicular to the other two (an untilted orbit on a grid whose axes
    follow the patient's). Then a voxel's detector column and magnification depend on its
    in-plane position alone and its detector row on its slice alone. None otherwise."""
    e, u, v = geometry.frames()
    axes = np.asarray(grid.affine, np.float64)[:3, :3]
    axes = axes / np.linalg.norm(axes, axis=0, keepdims=True)
    for k in range(3):
        others = [j for j in range(3) if j != k]
        if (np.abs(e @ axes[:, k]).max() < tol and np.abs(u @ axes[:, k]).max() < tol
                and np.abs(v @ axes[:, others]).max() < tol):
            return k
    return None


def _axis_offsets(grid: Volume, geometry: ProjectionGeometry, k: int):
    """For :func:`_orbit_axis` ``k``: the in-plane voxel centres relative to the isocentre
    [3, P] (the other two axes, C order) and the offsets along axis ``k`` [3, K], float64;
    a voxel's offset is the sum of its two parts."""
    aff = np.asarray(grid.affine, np.float64)
    others = [j for j in range(3) if j != k]
    n = grid.shape
    i, j = np.meshgrid(np.arange(n[others[0]]), np.arange(n[others[1]]), indexing="ij")
    centre = aff[:3, 3] - np.asarray(geometry.isocenter, np.float64)
    plane = (aff[:3, others[0], None] * i.reshape(-1) + aff[:3, others[1], None] * j.reshape(-1)
             + centre[:, None])
    along = aff[:3, k, None] * np.arange(n[k], dtype=np.float64)
    return torch.as_tensor(plane), torch.as_tensor(along)


def _detector_positions(U: torch.Tensor, u: torch.Tensor, v: torch.Tensor, plane: torch.Tensor,
                        along: Optional[torch.Tensor]) -> torch.Tensor:
    """grid_sample coordinates (column, row) of the voxels in ``a`` views: ``[a, N, 1, 2]``
    for the voxels ``plane [3, N]``, or, separable, ``[a, K, P, 2]`` for the in-plane
    positions ``plane [3, P]`` and the slices ``along [3, K]`` (the column and the
    magnification ``U [a, P]`` from the plane, the row from the slice)."""
    if along is None:
        return torch.stack([U * (u @ plane), U * (v @ plane)], dim=-1)[:, :, None]
    g = torch.empty(U.shape[0], along.shape[1], plane.shape[1], 2, device=U.device)
    g[..., 0] = (U * (u @ plane))[:, None, :]
    g[..., 1] = U[:, None, :] * ((v @ plane)[:, None, :] + (v @ along)[:, :, None])
    return g


def _in_grid_order(acc: torch.Tensor, shape: Sequence[int], k: Optional[int]) -> torch.Tensor:
    """The backprojected sums ``[K, P]`` (slices along axis ``k``, in-plane voxels) as a
    volume of the grid's ``shape``; ``k`` None: ``acc`` already holds the voxels in order."""
    if k is None:
        return acc.reshape(tuple(shape))
    others = [j for j in range(3) if j != k]
    out = acc.reshape(shape[k], shape[others[0]], shape[others[1]])
    return out.permute(*np.argsort([k] + others).tolist()).contiguous()


def fdk(projections, geometry: ProjectionGeometry, shape: Sequence[int] = (128, 128, 128),
        spacing: Optional[Sequence[float]] = None, like: Optional[Volume] = None,
        filter: str = "hann", device=None, angles_per_chunk: int = 8,
        progress: bool = False) -> Volume:
    """Reconstruct attenuation (1/mm) from line-integral projections [A, H, W].

    The grid is ``like``'s (shape and affine) when given; else ``shape`` voxels of
    ``spacing`` mm centred on the isocentre, with a warning when that crops the object;
    else ``shape`` voxels covering what the projections show (:func:`support_grid`).
    """
    p = torch.as_tensor(np.asarray(projections, dtype=np.float32))
    if p.ndim != 3:
        raise InputError(f"projections must be [angles, rows, columns], got shape {tuple(p.shape)}")
    if not torch.isfinite(p).all():
        raise InputError("projections hold NaN or infinite values")
    _check_orbit(geometry, p.shape[0])
    dev = resolve_device(device)
    if like is not None:
        grid = like
    elif spacing is not None:
        grid = default_grid(geometry, shape, spacing)
        warn_if_cropped(grid, p.numpy(), geometry)
    else:
        grid = support_grid(p.numpy(), geometry, shape)
    A, H, W = p.shape
    dv, du = geometry.pixel_spacing
    m = geometry.magnification
    tu, tv = du / m, dv / m                              # sample spacing at the isocentre
    cols = (torch.arange(W, dtype=torch.float64) - (W - 1) / 2) * tu
    rows = (torch.arange(H, dtype=torch.float64) - (H - 1) / 2) * tv
    if geometry.beam == "cone":
        R = geometry.sod
        pre = R / torch.sqrt(R ** 2 + cols[None, :] ** 2 + rows[:, None] ** 2)
    else:
        pre = torch.ones(H, W, dtype=torch.float64)
    n_fft = 1 << int(math.ceil(math.log2(2 * W)))
    resp = ramp_filter(n_fft, tu, filter).to(dev, torch.float32)
    pre = pre.to(dev, torch.float32)

    e, u, v = (torch.as_tensor(f, dtype=torch.float32, device=dev) for f in geometry.frames())
    # grid_sample's coordinate (align_corners) is (column - (W-1)/2) / ((W-1)/2), and the
    # column is U (x.u) / tu + (W-1)/2: the detector's scale folds into u (rows: into v)
    u = u * (2.0 / (tu * max(W - 1, 1)))
    v = v * (2.0 / (tv * max(H - 1, 1)))
    dphi = torch.as_tensor(_angle_weights(np.asarray(geometry.angles)), dtype=torch.float32, device=dev)
    k = _orbit_axis(grid, geometry)
    if k is None:                   # any grid: every voxel's detector position on its own
        x = _voxel_offsets(grid, geometry).to(dev, torch.float32)     # [3, N]
        plane, along, n_along = x, None, 1
    else:                           # separable: in-plane [3, P] and along-axis [3, K] parts
        plane, along = (t.to(dev, torch.float32) for t in _axis_offsets(grid, geometry, k))
        n_along = along.shape[1]
    acc = torch.zeros(n_along, plane.shape[1], dtype=torch.float32, device=dev)
    bar = progress_bar(None, progress, total=A, desc="FDK", unit="view") if progress else None
    for lo in range(0, A, angles_per_chunk):
        hi = min(A, lo + angles_per_chunk)
        q = p[lo:hi].to(dev) * pre
        q = torch.fft.irfft(torch.fft.rfft(q, n=n_fft, dim=-1) * resp[: n_fft // 2 + 1], n=n_fft, dim=-1)[..., :W]
        if geometry.beam == "cone":
            U = geometry.sod / (geometry.sod - e[lo:hi] @ plane)   # [a, P] magnification
        else:
            U = torch.ones(hi - lo, plane.shape[1], device=dev)
        w = U.square() * (dphi[lo:hi, None] * 0.5)                 # [a, P]
        g = _detector_positions(U, u[lo:hi], v[lo:hi], plane, along)
        vals = F.grid_sample(q[:, None], g, mode="bilinear", padding_mode="zeros",
                             align_corners=True)[:, 0]             # [a, K, P] or [a, N, 1]
        if along is None:
            acc += (vals[..., 0] * w).sum(dim=0)[None]
        else:
            acc += (vals * w[:, None, :]).sum(dim=0)
        if bar is not None:
            bar.update(hi - lo)
    if bar is not None:
        bar.close()
    out = _in_grid_order(acc, grid.shape, k).cpu().numpy()
    meta = {"reconstruction": "fdk", "filter": filter, "n_projections": A}
    return Volume(out, grid.affine.copy(), meta)


def refine(volume: Volume, projections, geometry: ProjectionGeometry, iterations: int = 3,
           relaxation: float = 1.0, nonnegative: bool = True, progress: bool = False) -> Volume:
    """A few SIRT steps ``x += lam * C A^T R (p - A x)`` through the differentiable fast
    renderer (``R``, ``C`` the inverse row and column sums of the projector), starting
    from ``volume`` (attenuation), so the result reprojects closer to ``projections``."""
    p = torch.as_tensor(np.asarray(projections, dtype=np.float32))
    _check_orbit(geometry, p.shape[0])
    x = torch.as_tensor(np.asarray(volume.array, np.float32)).clone()

    def A(t):
        return project(t, volume.affine, geometry)

    def At(r):
        t = torch.zeros_like(x, requires_grad=True)
        (A(t) * r).sum().backward()
        return t.grad

    row = A(torch.ones_like(x))
    R = torch.where(row > 1e-6, 1.0 / row.clamp(min=1e-6), torch.zeros_like(row))
    col = At(torch.ones_like(p))
    C = torch.where(col > 1e-6, 1.0 / col.clamp(min=1e-6), torch.zeros_like(col))
    it = progress_bar(range(iterations), progress, desc="SIRT", unit="iteration") if progress \
        else range(iterations)
    for _ in it:
        with torch.no_grad():
            r = (p - A(x)) * R
        x = x + relaxation * C * At(r)
        if nonnegative:
            x = x.clamp(min=0)
    meta = dict(volume.metadata, refinement=f"sirt x{iterations}")
    return Volume(x.detach().numpy(), volume.affine.copy(), meta)

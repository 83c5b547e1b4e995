"""DRR rendering: HU volume + projection geometry -> line-integral images [angles, H, W].

Two renderers share one geometry: ``exact`` (Siddon, the reference) and ``fast`` (Joseph;
numba on the CPU, PyTorch on CUDA). Work is split into chunks of angles, with an optional
tqdm bar; rays are generated inside the kernels, so memory is the volume plus the output.
:func:`project` is the differentiable entry point for training and reconstruction.

The numba kernels (:mod:`.joseph`, :mod:`.siddon`, :mod:`.rays`) are imported where they
are first called: importing numba and loading its cached machine code costs about 0.3 s in a
fresh process, which the PyTorch path (``engine="torch"``, CUDA) and small volumes
(:func:`.support.support_box`) need not pay.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ..console import progress_bar
from ..conventions import MU_WATER
from ..errors import InputError
from ..geometry import ProjectionGeometry
from ..volume import Volume
from .joseph_torch import dense_rays_torch, joseph_project_columns_torch, joseph_project_torch
from .raytable import RayTable
from .support import support_box

DEFAULT_MU_WATER = MU_WATER  # linear attenuation of water, 1/mm (conventions.MU_WATER)
METHODS = ("fast", "exact")


def hu_to_mu(hu, mu_water: float = DEFAULT_MU_WATER):
    """Linear attenuation (1/mm) from Hounsfield units, clipped at 0 (air and padding)."""
    if isinstance(hu, torch.Tensor):
        return (mu_water * (1.0 + hu / 1000.0)).clamp(min=0)
    mu = np.asarray(hu, dtype=np.float32) * np.float32(mu_water / 1000.0) + np.float32(mu_water)
    np.maximum(mu, 0, out=mu)
    return mu


def resolve_device(device) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else CPU; a clear error for absent CUDA."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} was asked for but CUDA is not available here")
    return dev


def _conversion(units: str, mu_water: float):
    """(scale, offset, clip) turning stored values into attenuation per mm."""
    if units == "hu":
        return mu_water / 1000.0, mu_water, True
    if units == "mu":
        return 1.0, 0.0, False
    raise InputError(f"units must be 'hu' or 'mu', got {units!r}")


class DRRRenderer:
    """A volume prepared once for rendering any number of geometries.

    Preparation (HU -> attenuation, cropping to the attenuating box, the per-axis memory
    layouts) costs about as much as a few DRRs, so training and batch jobs keep one
    renderer per CT. ``units``: ``"hu"`` (converted with ``mu_water``, clipped at 0) or
    ``"mu"`` (attenuation per mm, used as is). The exact renderer is a CPU reference and
    runs there whatever ``device`` says. ``engine`` (fast method): ``"auto"`` = numba on
    the CPU, PyTorch elsewhere; ``"torch"`` = the PyTorch renderer on any device (the CUDA
    code path, runnable on the CPU; same sums to float rounding). On the CPU it takes the
    column-sheet form (:func:`.joseph_torch.joseph_project_columns_torch`) where the
    geometry allows: no numba to start, for small work such as one view of a 128^3 volume.
    """

    def __init__(self, volume: Volume, method: str = "fast", device=None,
                 mu_water: float = DEFAULT_MU_WATER, units: str = "hu", engine: str = "auto"):
        if method not in METHODS:
            raise InputError(f"unknown DRR method {method!r}; choose one of {', '.join(METHODS)}")
        if engine not in ("auto", "torch"):
            raise InputError(f"engine must be 'auto' or 'torch', got {engine!r}")
        # only the grid (shape + affine) is kept, not the Volume object, so caches may
        # hold renderers without keeping their volumes alive
        self.volume = Volume(np.broadcast_to(np.float32(0), volume.shape), volume.affine)
        self.method = method
        self.device = resolve_device(device) if method == "fast" else torch.device("cpu")
        self._numba = method == "fast" and self.device.type == "cpu" and engine == "auto"
        self._conv = _conversion(units, mu_water)
        box = support_box(volume.array, *self._conv)
        self._empty = box is None
        self._array, self._affine = (None, None) if box is None else _crop(volume, box)
        self._layouts = {}
        self._mu_t = None

    def _cpu_layouts(self, axes):
        """The numba kernels' :class:`.joseph.Layouts` for rays dominant along ``axes``."""
        from . import joseph
        missing = set(axes) - set(self._layouts)
        if missing:
            made = joseph.attenuation_layouts(self._array, missing, *self._conv)
            self._layouts.update({a: (made.vols[a], made.occ[a]) for a in missing})
        dummy = (np.zeros((1, 3, 3), np.float32), np.zeros((1, 3), np.uint8))
        parts = [self._layouts.get(a, dummy) for a in range(3)]
        return joseph.Layouts([p[0] for p in parts], [p[1] for p in parts])

    def _exact_array(self):
        """Attenuation in plain (x, y, z) layout for Siddon; no copy when it already is."""
        if self._conv == (1.0, 0.0, False) and self._array.dtype == np.float32:
            return self._array
        return self._cpu_layouts({0}).vols[0][:, 1:-1, 1:-1]

    def render_tensor(self, geometry: ProjectionGeometry, angles_per_chunk: int = 8) -> torch.Tensor:
        """Like :meth:`render` but a float32 tensor on the renderer's device (no copy to
        the host on CUDA): for rendering training batches on the training device."""
        on_device = self.method == "fast" and not self._numba
        out = self.render(geometry, angles_per_chunk, _on_device=on_device)
        return out if isinstance(out, torch.Tensor) else torch.from_numpy(out).to(self.device)

    def render(self, geometry: ProjectionGeometry, angles_per_chunk: int = 8,
               progress: bool = False, _on_device: bool = False) -> np.ndarray:
        """Float32 line integrals [A, H, W] for every angle of ``geometry``."""
        geometry = geometry.resolve(self.volume)
        geometry.check_volume_clearance(self.volume)
        A = geometry.n_angles
        H, W = geometry.detector_shape
        out = np.zeros((A, H, W), dtype=np.float32)
        if self._empty:  # nothing attenuates: every line integral is zero
            return out
        table = RayTable(self._affine, geometry)
        if self.method == "exact":
            from . import siddon
            mu = self._exact_array()
        elif self._numba:
            from .rays import dominant_axes
            layouts = self._cpu_layouts(dominant_axes(table))
        elif self._mu_t is None:
            scale, offset, clip = self._conv
            mu_t = torch.as_tensor(np.asarray(self._array, np.float32), device=self.device)
            self._mu_t = (mu_t * scale + offset).clamp(min=0) if clip else mu_t * scale + offset
        bar = progress_bar(None, progress, total=A, desc=f"DRR ({self.method})",
                           unit="view") if progress else None
        chunks = []
        for lo in range(0, A, angles_per_chunk):
            hi = min(A, lo + angles_per_chunk)
            index, lps = table.index[lo:hi], table.lps[lo:hi]
            if self.method == "exact":
                res = np.empty((hi - lo, H, W), np.float64)
                siddon.siddon_project(mu, index, lps, table.beam, res)
                out[lo:hi] = res
            elif self._numba:
                layouts.project(table.subset(lo, hi), out[lo:hi])
            else:
                with torch.no_grad():
                    sub = table.subset(lo, hi)
                    res = joseph_project_columns_torch(self._mu_t, sub) \
                        if self._mu_t.device.type == "cpu" else None    # None: not that case
                    if res is None:
                        res = _project_dense_torch(self._mu_t, sub)
                if _on_device:
                    chunks.append(res)
                else:
                    out[lo:hi] = res.cpu().numpy()
            if bar is not None:
                bar.update(hi - lo)
        if bar is not None:
            bar.close()
        if _on_device:
            return torch.cat(chunks) if chunks else torch.from_numpy(out).to(self.device)
        return out


def render_drr(volume: Volume, geometry: ProjectionGeometry, method: str = "fast",
               device=None, mu_water: float = DEFAULT_MU_WATER, units: str = "hu",
               angles_per_chunk: int = 8, progress: bool = False) -> np.ndarray:
    """Render DRRs of ``volume`` for every angle of ``geometry``: float32 [A, H, W] line
    integrals. One-shot form of :class:`DRRRenderer` (see there for the arguments)."""
    renderer = DRRRenderer(volume, method, device, mu_water, units)
    return renderer.render(geometry, angles_per_chunk, progress)


def _crop(volume: Volume, box):
    """The sub-array in ``box`` (index slices) and the affine that keeps it in place."""
    start = np.array([b.start for b in box], dtype=np.float64)
    affine = volume.affine.copy()
    affine[:3, 3] = volume.index_to_lps(start)
    return volume.array[box], affine


def _project_dense_torch(mu: torch.Tensor, table: RayTable) -> torch.Tensor:
    start, delta, length = dense_rays_torch(table, mu.device)
    return joseph_project_torch(mu, start, delta, length).reshape(table.shape)


class _JosephCPU(torch.autograd.Function):
    """Numba forward projection with its exact adjoint as the backward pass."""

    @staticmethod
    def forward(ctx, mu, table):
        from . import joseph
        from .rays import dominant_axes
        vol = mu.detach().cpu().numpy()
        axes = dominant_axes(table)
        out = np.empty(table.shape, dtype=np.float32)
        joseph.attenuation_layouts(vol, axes).project(table, out)
        ctx.table, ctx.axes, ctx.vol_shape = table, axes, vol.shape
        return torch.from_numpy(out).to(mu.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        from . import joseph
        table, axes, shape = ctx.table, ctx.axes, ctx.vol_shape
        grads = [np.zeros(tuple(shape[i] for i in joseph.AXIS_ORDER[a]), np.float64) if a in axes
                 else np.zeros((1, 1, 1), np.float64) for a in range(3)]
        g = np.ascontiguousarray(grad_out.detach().cpu().numpy(), dtype=np.float64)
        joseph.joseph_backproject(*grads, table.index, table.lps, table.beam, g)
        total = np.zeros(shape, np.float64)
        for a in axes:
            total += grads[a].transpose(np.argsort(joseph.AXIS_ORDER[a]))
        return torch.from_numpy(total.astype(np.float32)), None


def project(mu: torch.Tensor, affine: np.ndarray, geometry: ProjectionGeometry) -> torch.Tensor:
    """Differentiable fast projection of an attenuation tensor ``mu`` [X, Y, Z] (index order
    of ``affine``). ``geometry`` must have its isocentre set. Returns [A, H, W] on ``mu``'s
    device; gradients flow to ``mu`` (numba adjoint on the CPU, autograd on CUDA)."""
    if geometry.isocenter is None:
        raise InputError("project() needs a geometry with an isocentre (use geometry.resolve(volume))")
    table = RayTable(affine, geometry)
    if mu.device.type == "cpu":
        return _JosephCPU.apply(mu, table)
    return _project_dense_torch(mu, table)


#: The sources whose code decides what :func:`project` returns on the CPU.
_PROJECTOR_SOURCES = ("render.py", "joseph.py", "rays.py", "raytable.py")


def projector_fingerprint() -> str:
    """A digest of the CPU projector's source, for caches of its results (the volume
    prior's projections, :mod:`..infer.prior`): new kernel code is a new key, so nothing
    computed by an older projector is reused."""
    h = hashlib.sha256()
    for name in _PROJECTOR_SOURCES:
        h.update(Path(__file__).with_name(name).read_bytes())
    return h.hexdigest()

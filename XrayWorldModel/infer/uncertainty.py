"""How sure is the model of its views and volume? Test-time augmentation (TTA).

**Method.** The input radiograph is perturbed ``N`` times the way the model's own training
views were augmented (:class:`~XrayWorldModel.data.views.ViewSampling`; the magnitudes come
from the model file's config): the patient shifted by up to ``shift_max_mm`` left-right and
head-foot, the intensity scaled by ``1 +- intensity_jitter``, Gaussian noise of
``noise_std`` added. Each perturbed input goes through the model (encode, transition, decode);
the known effect of each perturbation is undone on every output (a patient shift ``(dx, dz)``
moves the view at angle ``phi`` by ``dx cos(phi)`` columns and ``-dz`` rows; the gain divides
out, as the training targets were scaled with their inputs), and the per-pixel standard
deviation over the ``N`` passes is the uncertainty of each predicted view.

**Two routes to one view.** TTA sees only how unstable the model is, not how wrong: a model
that has learnt real anatomy is steady on a phantom and still off, by a bias no perturbation
reveals. Where the model reaches one view by two routes, their disagreement measures that
error. The lateral views are two: 90 deg is the step +90 from the input and 270 deg the step
-90, and each is nearly the other mirrored (cone-beam magnification aside). The 0 and
180 deg views are the decoded step 0 (180 mirrored), which the input itself checks. For
those views, ``d``, the difference between the view and its second route (the opposite view
mirrored, or the observed input), pooled like the variance, adds ``d^2 / 2`` to the TTA
variance: two estimates with independent errors of variance ``s^2`` differ by ``2 s^2`` on
average. Other angles reach their view by one route (beyond +-90 deg a view is the mirror of
the opposite step) and keep TTA alone. Chosen on validation phantoms (seeds 7000-7015),
never on the held-out ones the tests use: there, with demonstration model 2.0 and 4 passes,
the Spearman correlation of the std with the error goes from 0.256 / 0.273 / 0.276 (TTA
alone) to 0.273 / 0.388 / 0.313 at 90 / 180 / 270 deg; with 1.3 from 0.318 / 0.304 / 0.317 to
0.330 / 0.410 / 0.349.

**Why this method.** It needs nothing but the trained model (no ensemble, no dropout at
training time, no second model to ship), it perturbs only along directions the model was
taught to be invariant to, so any spread it shows is the model's own instability on this
input, and it is the standard TTA estimate of Wang et al. (2019, "Aleatoric uncertainty
estimation with test-time augmentation for medical image segmentation", Neurocomputing).
The cranio-caudal tilt of training is not applied: it has no exact 2D counterpart on a
given image. The variance estimate from ``N`` passes is noisy (relative standard error
``sqrt(2 / (N - 1))``), so it is pooled over a Gaussian neighbourhood of
``VIEW_POOL_PX`` pixels before the square root.

**The volume.** The volume is linear in its views (FDK of the views' residual over the
prior, shrunk and smoothed, :mod:`.prior`; clipping aside), so each pass's volume differs
from another's by the same reconstruction applied to the difference of their views. The
per-voxel standard deviation of the ``N`` passes' volumes is computed exactly that way, but
cheaply: from a ``STD_SWEEP_STEP``-degree sweep (8 views from 5 distinct model steps, which
also give the default views at 90, 180 and 270 deg), interpolated linearly in angle onto the
``FDK_STEP`` sweep (FDK of 8 views alone adds streaks that are not uncertainty) and
reconstructed on a ``STD_GRID``^3 grid over the volume's extent, then resampled trilinearly
onto the volume's own grid (same shape and affine). Only the principal components of the
passes' views are reconstructed, ``N - 1`` of them (exact; at most ``MAX_COMPONENTS``,
:meth:`_VolumeDeviation.variance`). Reconstructing every pass in full would cost ``N``
sweeps of 13 model steps and ``N`` FDKs at 64^3 (about 0.1 s each on 2 cores). Against that
full-cost standard deviation (8 passes, 3 phantoms) this one correlates at r = 0.80 voxel by
voxel and is on average 1.09 times as large (the full volumes are clipped at 0 attenuation
and -1024 HU, which this linear estimate ignores); a 45-degree sweep without the
interpolation gave r = 0.62 and 1.8 times, a 16^3 grid r = 0.67. Backprojecting the views'
variance instead (each ray's std spread along its chord through the body) was tried and
does not correlate with the true std (r between -0.27 and 0.11).

**The default ``N`` = 4** (``conventions.UNCERTAINTY_PASSES``): with 2 or 3 passes the std
depends on the draw (Spearman with the error at 90 deg between 0.17 and 0.25 over four
seeds with 2 passes, on 16 held-out phantoms); with 4 it is 0.27-0.28 for every seed and 8
passes add 0.01-0.02. Its cost is in ``Testing/benchmarks/bench_infer.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from ..conventions import UNCERTAINTY_PASSES, uncertainty_passes as check_passes
from ..data import ViewSampling
from ..errors import InputError
from ..recon import fdk
from ..volume import Volume
from .prior import VolumePrior, fov_grid

#: Passes of ``infer`` by default (see ``Testing/benchmarks/bench_infer.py``).
DEFAULT_PASSES = UNCERTAINTY_PASSES
#: Passes encoded and decoded together (bounded memory; one progress report per chunk).
CHUNK = 4
#: Sweep (degrees) and grid (voxels per side) the volume's standard deviation is made on.
STD_SWEEP_STEP = 45.0
STD_GRID = 24
#: The sweep (degrees) the coarse views are interpolated onto for FDK.
FDK_STEP = 15.0
#: Most principal components of the passes' views reconstructed for the volume's std.
MAX_COMPONENTS = 16
#: Gaussian sigma (pixels) over which the views' variance estimate is pooled.
VIEW_POOL_PX = 1.0
#: Augmentation used when a model was trained without one (the ``cpu-small`` values).
FALLBACK_AUGMENTATION = {"shift_max_mm": 5.0, "intensity_jitter": 0.05, "noise_std": 0.02}
METHOD = ("test-time augmentation: input shift, intensity scale and noise as in training, "
          "undone on the outputs; per-pixel / per-voxel standard deviation over the passes; "
          "views at 0, 90, 180 and 270 deg add the disagreement with their second route "
          "(the opposite lateral mirrored, or the input)")

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Perturbations:
    """``N`` input perturbations: the patient's shift (mm; x = left, z = superior), the
    intensity gain and additive noise ``[N, H, W]`` (line-integral units)."""

    shift_mm: np.ndarray
    gain: np.ndarray
    noise: np.ndarray

    def __len__(self) -> int:
        return int(self.gain.shape[0])

    def part(self, lo: int, hi: int) -> "Perturbations":
        return Perturbations(self.shift_mm[lo:hi], self.gain[lo:hi], self.noise[lo:hi])


def augmentation(sampling: ViewSampling) -> Dict[str, float]:
    """The training augmentation's magnitudes (fallbacks where the model had none)."""
    return {k: float(getattr(sampling, k) or v) for k, v in FALLBACK_AUGMENTATION.items()}


def draw_perturbations(sampling: ViewSampling, n: int, seed: int = 0) -> Perturbations:
    """``n`` perturbations drawn like the training augmentation, from ``seed``."""
    aug = augmentation(sampling)
    rng = np.random.default_rng(seed)
    size = sampling.image_size
    shift = rng.uniform(-aug["shift_max_mm"], aug["shift_max_mm"], size=(n, 2))
    gain = 1.0 + rng.uniform(-aug["intensity_jitter"], aug["intensity_jitter"], size=n)
    noise = rng.normal(0.0, aug["noise_std"], size=(n, size, size)).astype(np.float32)
    return Perturbations(shift, gain, noise)


def shift_images(images: torch.Tensor, columns, rows) -> torch.Tensor:
    """``images [B, 1, H, W]`` with their content moved by ``columns`` and ``rows`` pixels
    (one value or one per image; bilinear, edges repeated)."""
    b, _, h, w = images.shape
    theta = torch.zeros(b, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = -torch.as_tensor(columns, dtype=images.dtype).to(images.device) * 2.0 / w
    theta[:, 1, 2] = -torch.as_tensor(rows, dtype=images.dtype).to(images.device) * 2.0 / h
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _pixels_per_mm(sampling: ViewSampling) -> float:
    """Detector pixels per mm of patient shift at the isocentre."""
    return sampling.image_size / sampling.field_of_view_mm


def perturbed_inputs(image: torch.Tensor, p: Perturbations, sampling: ViewSampling) -> torch.Tensor:
    """The model input ``[1, 1, H, W]`` under each perturbation -> ``[N, 1, H, W]``."""
    k = _pixels_per_mm(sampling)
    x = image.expand(len(p), *image.shape[1:])
    x = shift_images(x, p.shift_mm[:, 0] * k, -p.shift_mm[:, 1] * k)
    gain = torch.as_tensor(p.gain, dtype=x.dtype, device=x.device)[:, None, None, None]
    return x * gain + torch.from_numpy(p.noise)[:, None].to(x.device)


def undo_perturbations(views: np.ndarray, angles: Sequence[float], p: Perturbations,
                       sampling: ViewSampling) -> np.ndarray:
    """Views ``[N, A, H, W]`` predicted from the perturbed inputs, brought back to the
    unperturbed patient: the gain divided out, the shift moved back in every view."""
    n, a, h, w = views.shape
    k = _pixels_per_mm(sampling)
    cos = np.cos(np.deg2rad(np.asarray(angles, dtype=np.float64)))
    cols = -(p.shift_mm[:, 0:1] * k) * cos[None, :]                  # [N, A]
    rows = np.repeat(p.shift_mm[:, 1:2] * k, a, axis=1)
    t = torch.from_numpy(np.ascontiguousarray(views, dtype=np.float32)).reshape(n * a, 1, h, w)
    t = shift_images(t, cols.reshape(-1), rows.reshape(-1)).reshape(n, a, h, w)
    return t.numpy() / p.gain[:, None, None, None].astype(np.float32)


def _wrapped(angle):
    """``angle`` (degrees; a number or an array) in [-180, 180)."""
    return (np.asarray(angle, dtype=np.float64) + 180.0) % 360.0 - 180.0


def _same_angle(a: float, b: float) -> bool:
    return bool(abs(_wrapped(a - b)) < 1e-9)


def _is_mirrored(angle):
    """Whether :func:`imagine_batch` gives the view at ``angle`` as the opposite step's view
    mirrored (beyond +-90 deg)."""
    return np.abs(_wrapped(angle)) > 90.0


def _near_step(angle):
    """The model step (degrees, within +-90) whose decoded view gives the view at ``angle``."""
    return np.where(_is_mirrored(angle), _wrapped(np.asarray(angle) + 180.0), _wrapped(angle))


@torch.no_grad()
def imagine_batch(model, states: torch.Tensor, angles: Sequence[float]) -> np.ndarray:
    """Decoded views ``[B, A, H, W]`` at ``angles`` (degrees) from ``B`` states of 0-deg views.

    Rotations within +-90 deg are model steps; beyond, the mirrored view from the opposite
    side is used (see :mod:`.pipeline`). Each distinct step is decoded once: a full 15-deg
    sweep (24 angles) needs 13."""
    angles = np.asarray(angles, dtype=np.float64)
    if angles.size == 0:
        size = model.config.image_size
        return np.zeros((states.shape[0], 0, size, size), np.float32)
    far = _is_mirrored(angles)
    near = _near_step(angles)
    steps, which = np.unique(near, return_inverse=True)
    b, u = states.shape[0], len(steps)
    z = states.repeat_interleave(u, dim=0)
    d = torch.as_tensor(np.tile(steps, b), dtype=torch.float32, device=states.device)
    out = model.decode(model.step(z, d, torch.zeros(b * u, device=states.device)))
    out = out.float().cpu().numpy()[:, 0].reshape(b, u, *out.shape[-2:])
    views = out[:, which.reshape(-1)]
    views[:, far] = views[:, far][..., ::-1]
    return np.clip(views, 0.0, None)


@dataclass
class Uncertainty:
    """Per-pixel standard deviation of each predicted view and per-voxel of the volume."""

    views_std: np.ndarray                 # [V, H, W], DRR units, same geometry as the views
    volume_std: Optional[Volume]          # HU, same grid and affine as the volume
    passes: int
    settings: Dict = field(default_factory=dict)

    def to_dict(self) -> Dict:
        """The summary ``results.json`` carries under ``uncertainty``."""
        vol = self.volume_std.array if self.volume_std is not None else None
        return {"passes": self.passes, "method": METHOD, **self.settings,
                "views_std_mean": [float(v.mean()) for v in self.views_std],
                "volume_std_max_hu": None if vol is None else float(vol.max())}


class _Moments:
    """Running sums of deviations from a reference (the first sample) -> variance."""

    def __init__(self):
        self.n, self.ref, self.s1, self.s2 = 0, None, 0.0, 0.0

    def add(self, samples: np.ndarray) -> None:
        if self.ref is None:
            self.ref = samples[0].astype(np.float64)
        d = samples - self.ref
        self.n += samples.shape[0]
        self.s1 = self.s1 + d.sum(0)
        self.s2 = self.s2 + (d * d).sum(0)

    def variance(self) -> np.ndarray:
        return np.clip((self.s2 - self.s1 * self.s1 / self.n) / (self.n - 1), 0.0, None)

    def mean(self) -> np.ndarray:
        return self.ref + self.s1 / self.n


class _VolumeDeviation:
    """The volume's change for a change of its views: :meth:`VolumePrior.reconstruct`
    without its constant terms (or plain FDK without a prior), in HU, on ``STD_GRID``^3.

    The views come on the coarse ``STD_SWEEP_STEP`` sweep and are interpolated linearly in
    angle onto the ``FDK_STEP`` sweep before FDK: the deviations are smooth in angle, and
    FDK of 8 or 12 views alone would add streaks that are not uncertainty."""

    def __init__(self, sampling: ViewSampling, prior: Optional[VolumePrior], n_fdk: int):
        self.angles = np.arange(0.0, 360.0, STD_SWEEP_STEP)
        fine = np.arange(0.0, 360.0, FDK_STEP)
        self.geometry = sampling.geometry(fine, 0.0, (0.0, 0.0, 0.0))
        pos = fine / STD_SWEEP_STEP
        self.lo = np.floor(pos).astype(int) % len(self.angles)
        self.hi = (self.lo + 1) % len(self.angles)
        self.frac = (pos - np.floor(pos)).astype(np.float32)[:, None, None]
        n = min(STD_GRID, n_fdk)
        self.grid = fov_grid(self.geometry, n)
        self.weight = prior.residual_weight if prior is not None else 1.0
        self.sigma = prior.smoothing_voxels * n / n_fdk if prior is not None else 0.0
        self.hu_per_mu = 1000.0 / sampling.mu_water

    def __call__(self, delta_views: np.ndarray) -> np.ndarray:
        views = delta_views[self.lo] * (1.0 - self.frac) + delta_views[self.hi] * self.frac
        mu = fdk(views, self.geometry, like=self.grid).array
        if self.sigma > 0:
            mu = gaussian_filter(mu, self.sigma)
        return mu * (self.weight * self.hu_per_mu)

    def variance(self, sweeps: np.ndarray, tick: Callable[[], None] = lambda: None):
        """(per-voxel variance of the volumes of ``N`` coarse sweeps ``[N, A, H, W]``, share
        of the sweeps' variance it accounts for). With the centred sweeps ``D`` and the
        eigenvectors ``U`` of ``D D^T`` (orthonormal), ``sum_k (L d_k)^2 = sum_j (L c_j)^2``
        for the linear ``L`` and the rows ``c_j`` of ``U^T D``: exact with the ``N - 1``
        components centring leaves, one reconstruction each (``tick`` after each); beyond
        ``MAX_COMPONENTS`` only the largest are reconstructed (99.6% of the variance of 64
        passes on the real radiograph; the volume's std then within 0.2%)."""
        n = sweeps.shape[0]
        d = sweeps.reshape(n, -1).astype(np.float64)
        d -= d.mean(0)                   # in float64, so the rank is N - 1 to rounding
        w, u = np.linalg.eigh(d @ d.T)
        order = [j for j in np.argsort(w)[::-1] if w[j] > max(w.max(), 0.0) * 1e-12]
        order = order[:MAX_COMPONENTS]
        total = np.zeros(self.grid.shape, np.float64)
        for j in order:
            c = (u[:, j] @ d).reshape(sweeps.shape[1:]).astype(np.float32)
            total += self(c) ** 2
            tick()
        kept = min(1.0, float(w[order].sum() / w.sum())) if w.sum() > 0 else 1.0
        return total / (n - 1), kept




def second_routes(view_angles: Sequence[float]) -> Dict[int, object]:
    """For each view (by index) that the model reaches by a second route: ``"input"`` for 0
    and 180 deg (the decoded step 0, which the input itself checks), or the opposite angle
    for +-90 deg (the other lateral step, mirrored). Views at other angles have none."""
    routes = {}
    for k, a in enumerate(view_angles):
        step = _near_step(a)
        if abs(step) < 1e-9:
            routes[k] = "input"
        elif abs(abs(step) - 90.0) < 1e-9:
            routes[k] = (a + 180.0) % 360.0
    return routes


def _route_disagreement(means: np.ndarray, view_angles: Sequence[float], extra: Sequence[float],
                        routes: Dict[int, object], image: np.ndarray) -> np.ndarray:
    """Per view ``[V, H, W]``: |view - its second route| (zero where it has none); ``means``
    are the passes' mean views at ``view_angles + extra``."""
    angles = [float(a) for a in view_angles] + [float(a) for a in extra]
    d = np.zeros((len(view_angles),) + means.shape[1:], np.float64)
    for k, route in routes.items():
        if route == "input":
            other = image[:, ::-1] if _is_mirrored(view_angles[k]) else image
        else:
            other = means[next(i for i, a in enumerate(angles) if _same_angle(a, route))][:, ::-1]
        d[k] = np.abs(means[k] - other)
    return d


def _volume_std(variance: np.ndarray, volume: Volume) -> Volume:
    """The coarse standard deviation on ``volume``'s grid (the same extent, cell-centred),
    zero where the volume is the air outside the reconstructed cylinder."""
    t = torch.from_numpy(np.sqrt(variance).astype(np.float32))[None, None]
    std = F.interpolate(t, size=tuple(volume.shape), mode="trilinear",
                        align_corners=False)[0, 0].numpy()
    std[volume.array <= -1024.0] = 0.0
    meta = {"source": "xray2xray infer", "units": "HU", "quantity": "standard deviation"}
    return Volume(std, volume.affine.copy(), meta)


class _Ticker:
    """``progress(done, total)`` over the passes and the reconstructions of the volume's std."""

    def __init__(self, progress: Optional[Progress], total: int):
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        if self.progress is not None:
            self.progress(self.done, self.total)


def _run_passes(model, image: torch.Tensor, sampling: ViewSampling, pert: Perturbations,
                angles: Sequence[float], n_views: int, tick: _Ticker):
    """Every pass, ``CHUNK`` at a time: the moments of the first ``n_views`` outputs and
    the remaining ones (the coarse sweep), brought back to the unperturbed patient."""
    views_m, sweeps = _Moments(), []
    for lo in range(0, len(pert), CHUNK):
        part = pert.part(lo, min(len(pert), lo + CHUNK))
        with torch.no_grad():
            states = model.encode(perturbed_inputs(image, part, sampling),
                                  torch.zeros(len(part), device=image.device))
        out = undo_perturbations(imagine_batch(model, states, angles), angles, part, sampling)
        views_m.add(out[:, :n_views])
        if out.shape[1] > n_views:
            sweeps.append(out[:, n_views:])
        tick(len(part))
    return views_m, sweeps


def estimate_uncertainty(model, image: torch.Tensor, sampling: ViewSampling,
                         view_angles: Sequence[float], volume: Optional[Volume] = None,
                         prior: Optional[VolumePrior] = None, passes: int = DEFAULT_PASSES,
                         seed: int = 0, progress: Optional[Progress] = None) -> Uncertainty:
    """Standard deviations of the views at ``view_angles`` and (given the reconstructed
    ``volume`` and the ``prior`` it was made on) of the volume, from ``passes`` perturbed
    copies of the model input ``image [1, 1, H, W]``; ``progress(done, total)`` after each
    chunk of passes and each reconstruction of the volume's std. Deterministic for a given
    ``seed``."""
    passes = check_passes(passes)
    if passes == 0:
        raise InputError("estimate_uncertainty needs at least 2 passes")
    view_angles = [float(a) for a in view_angles]
    vol_op = None
    if volume is not None:
        vol_op = _VolumeDeviation(sampling, prior, min(volume.shape[0], sampling.image_size))
    routes = second_routes(view_angles)
    extra = sorted({r for r in routes.values()
                    if r != "input" and not any(_same_angle(r, a) for a in view_angles)})
    looked_at = view_angles + extra
    angles = looked_at + ([] if vol_op is None else [float(a) for a in vol_op.angles])
    if not angles:                    # nothing to predict: nothing to be unsure of
        empty = np.zeros((0, sampling.image_size, sampling.image_size), np.float32)
        return Uncertainty(empty, None, passes, {"seed": int(seed)})
    tick = _Ticker(progress, passes + (min(passes - 1, MAX_COMPONENTS) if vol_op else 0))
    views_m, sweeps = _run_passes(model, image, sampling, draw_perturbations(sampling, passes, seed),
                                  angles, len(looked_at), tick)
    var = views_m.variance()[: len(view_angles)]
    d = _route_disagreement(views_m.mean(), view_angles, extra, routes,
                            image[0, 0].detach().cpu().numpy().astype(np.float64)) \
        if len(view_angles) else np.zeros_like(var)
    if VIEW_POOL_PX > 0 and len(view_angles):
        var = gaussian_filter(var, (0, VIEW_POOL_PX, VIEW_POOL_PX))
        d = gaussian_filter(d, (0, VIEW_POOL_PX, VIEW_POOL_PX))
    var = var + d * d / 2.0
    settings = {"seed": int(seed), "augmentation": augmentation(sampling),
                "view_pool_px": VIEW_POOL_PX,
                "second_route_deg": [float(view_angles[k]) for k in sorted(routes)]}
    volume_std = None
    if vol_op is not None:
        var_v, kept = vol_op.variance(np.concatenate(sweeps), tick)
        volume_std = _volume_std(var_v, volume)
        settings.update(volume_sweep_step_deg=STD_SWEEP_STEP, volume_grid=vol_op.grid.shape[0],
                        volume_variance_kept=kept)
    if tick.done < tick.total:        # fewer components than allowed for (a degenerate spread)
        tick(tick.total - tick.done)
    return Uncertainty(np.sqrt(var).astype(np.float32), volume_std, passes, settings)


__all__ = ["DEFAULT_PASSES", "Perturbations", "Uncertainty", "augmentation", "check_passes",
           "draw_perturbations", "estimate_uncertainty", "imagine_batch", "perturbed_inputs",
           "second_routes", "shift_images", "undo_perturbations"]

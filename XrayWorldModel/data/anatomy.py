"""Anatomy augmentation: one chest CT becomes many plausible patients.

A seeded, deterministic draw (:func:`draw_augmentation`) of
- a smooth deformation: body habitus (left-right and antero-posterior scale), lung height or
  inspiration depth (superior-inferior scale of the thorax below the upper lungs, the
  abdomen following the diaphragm), heart size and position (a smooth bump around the heart,
  found in the CT itself), a random low-frequency elastic field, and the patient's rotation
  and position;
- HU scale and offset, noise, a reconstruction kernel (soft blur or sharpening) and a thicker
  slice (averaged along the superior axis, then back on the grid).

No folding by construction: the warp ``phi(x) = (id + u)(g(A^-1 x))`` is a composition of an
affine map with positive scales, a monotone map of the superior coordinate (``g' > 0``) and
``id + u`` where the spectral norm of ``grad u`` is bounded analytically below 1
(:meth:`Deformation.local_gradient_bound`), so every factor of the Jacobian has a positive
determinant; :func:`jacobian_determinant` measures it on a grid.

Meant for the preprocessed training cube (``data/cache.py``), where it takes a few hundred ms;
the parameters are in mm, so it works on a CT of any grid.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from typing import Dict, Optional, Tuple

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..volume import Volume

#: Bump when the same seed would give a different patient: it is part of the cache key.
ANATOMY_VERSION = 1
#: Mixed into every seed, so anatomy seeds never share a stream with other seeded draws.
_SALT = 0x41A7

BODY_HU = -500.0          # tissue vs air
LUNG_HU = -400.0          # aerated lung inside the body
BONE_HU = 200.0           # bone at the training grid (partial volume lowers thin ribs)
DENSE_HU = -200.0         # mediastinal soft tissue, blood (with or without contrast)


@dataclass(frozen=True)
class AnatomyRanges:
    """How far a draw may go (each uniform in +-, or in the range given)."""

    habitus: float = 0.06              # common log-scale of LR and AP (build)
    habitus_lr: float = 0.04           # extra LR log-scale
    habitus_ap: float = 0.05           # extra AP log-scale
    height: float = 0.03               # global SI log-scale
    lung_height: float = 0.12          # log-scale of the lungs' lower part (inspiration)
    heart_shift_mm: float = 8.0        # per axis
    heart_growth: float = 0.2          # relative size change at the heart centre (~0.6x at its edge)
    elastic_gradient: float = 0.08     # max spectral norm of the elastic field's gradient
    elastic_wavelength_mm: Tuple[float, float] = (120.0, 320.0)
    elastic_modes: int = 6
    rotation_deg: Tuple[float, float, float] = (2.0, 2.0, 4.0)  # about L, P, S axes
    shift_mm: Tuple[float, float, float] = (8.0, 8.0, 12.0)
    hu_scale: float = 0.04             # attenuation scale (HU + 1000) * (1 +- this)
    hu_offset: float = 15.0
    noise_hu: Tuple[float, float] = (0.0, 25.0)
    kernel: float = 0.5                # blur sigma / sharpen gain in voxels, +- this
    slice_mm: Tuple[float, float] = (0.0, 6.0)   # thicker slice, when above the grid's

    def __post_init__(self):
        if self.lung_height >= 0.5 or self.heart_growth >= 0.5 or self.elastic_gradient >= 0.5:
            raise InputError("anatomy ranges: lung_height, heart_growth and elastic_gradient "
                             "must stay below 0.5 (larger ones can fold the anatomy)")


DEFAULT_RANGES = AnatomyRanges()
#: Body build drawn with about the spread of adult chests in anthropometric surveys (SD of
#: log breadth ~8 %, of log depth ~10 %, sexes mixed); the default draws about half of it
#: (4-5 %), so a patient of unusual build lies outside every augmented training patient.
WIDE_HABITUS_RANGES = replace(DEFAULT_RANGES, habitus=0.14, habitus_ap=0.10)
#: The ranges a source may name (``anatomy:K:wide:SRC``, :mod:`.sources`).
NAMED_RANGES: Dict[str, AnatomyRanges] = {"default": DEFAULT_RANGES, "wide": WIDE_HABITUS_RANGES}


def named_ranges(name: str) -> AnatomyRanges:
    """The ranges called ``name``; :class:`InputError` naming the choices otherwise."""
    if name not in NAMED_RANGES:
        raise InputError(f"unknown anatomy ranges {name!r}; choose one of {sorted(NAMED_RANGES)}")
    return NAMED_RANGES[name]


def ranges_fingerprint(ranges: AnatomyRanges) -> str:
    """A short digest of the ranges' values: part of an augmented patient's cache key, so a
    changed range rebuilds it."""
    return hashlib.sha256(repr(sorted(asdict(ranges).items())).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- masks and landmarks

def si_axis(volume: Volume) -> int:
    """The array axis closest to the patient's superior axis (LPS z)."""
    return int(np.argmax(np.abs(volume.direction[2])))


def _largest_components(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    """Connected components at least ``min_fraction`` of the largest one."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(sizes >= min_fraction * sizes.max()) + 1
    return np.isin(labels, keep)


def _fill_slices(mask: np.ndarray, axis: int) -> np.ndarray:
    """Holes filled in each slice across ``axis`` (lungs are holes of an axial body slice,
    not of the 3D body, which the trachea opens to the top of the scan)."""
    m = np.moveaxis(mask, axis, 0)
    out = np.stack([ndimage.binary_fill_holes(s) for s in m])
    return np.moveaxis(out, 0, axis)


def body_mask(volume: Volume) -> np.ndarray:
    """The patient: tissue above -500 HU, largest component (no table), holes filled per
    axial slice (so the lungs are inside)."""
    tissue = _largest_components(volume.array > BODY_HU, 1.0)
    return _fill_slices(tissue, si_axis(volume))


def body_centre(volume: Volume, body: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
    """The centroid (LPS mm) of :func:`body_mask` (or of ``body``, already found): where the
    patient lies in the scan, whatever the field of view was centred on. None when nothing
    is above -500 HU."""
    body = body_mask(volume) if body is None else body
    if not body.any():
        return None
    return volume.index_to_lps(np.argwhere(body).mean(axis=0))


def lung_mask(volume: Volume, body: Optional[np.ndarray] = None) -> np.ndarray:
    """Aerated lung: air (< -400 HU) inside the body, large components only (no bowel gas
    bubbles)."""
    body = body_mask(volume) if body is None else body
    air = (volume.array < LUNG_HU) & body
    return _largest_components(air, 0.15)


def bone_mask(volume: Volume, body: Optional[np.ndarray] = None) -> np.ndarray:
    """Bone: above 200 HU inside the body."""
    return (volume.array > BONE_HU) & (body_mask(volume) if body is None else body)


def rib_hull_mask(volume: Volume, bone: Optional[np.ndarray] = None,
                  slab_mm: float = 15.0) -> np.ndarray:
    """The bony hull: per axial slice, the convex hull of the bone (default
    :func:`bone_mask`) within +-``slab_mm`` of it (ribs slope, so one thin slice cuts only
    a few; a slab closes the ring between them)."""
    from skimage.morphology import convex_hull_image
    bone = bone_mask(volume) if bone is None else bone
    axis = si_axis(volume)
    half = int(round(slab_mm / float(volume.spacing[axis])))
    slab = np.moveaxis(ndimage.maximum_filter1d(bone, 2 * half + 1, axis=axis), axis, 0)
    hull = np.stack([convex_hull_image(s) if s.sum() >= 3 else np.zeros_like(s) for s in slab])
    return np.moveaxis(hull, 0, axis)


@dataclass(frozen=True)
class ChestLandmarks:
    """Where the anatomy is (LPS mm), found by thresholds: no label map needed."""

    body_center: Tuple[float, float, float]
    lung_top: float                    # z of the lung apices
    lung_bottom: float                 # z of the lowest lung (costophrenic recesses)
    heart_center: Tuple[float, float, float]
    heart_radius: float                # its approximate radius (mm)


def _centroid_lps(volume: Volume, mask: np.ndarray) -> np.ndarray:
    return volume.index_to_lps(np.argwhere(mask).mean(axis=0))


def _heart(volume: Volume, lungs: np.ndarray, axis: int) -> Tuple[np.ndarray, float]:
    """(centre LPS, radius mm) of the heart: the thickest part of the dense tissue between
    the lungs (each row filled from the leftmost to the rightmost lung voxel, in slices
    where the lungs are large). Its centre is the centroid of the voxels at least half the
    greatest depth inside that tissue; its radius 1.25 times that depth (an inscribed ball
    of a heart-shaped blob)."""
    lr = int(np.argmax(np.abs(volume.direction[0])))
    between = (np.maximum.accumulate(lungs, axis=lr)
               & np.flip(np.maximum.accumulate(np.flip(lungs, lr), axis=lr), lr))
    area = np.moveaxis(lungs, axis, 0).reshape(lungs.shape[axis], -1).sum(1)
    shape = [1, 1, 1]
    shape[axis] = -1
    dense = between & ~lungs & (volume.array > DENSE_HU) & (area >= 0.25 * area.max()).reshape(shape)
    if not dense.any():
        return _centroid_lps(volume, lungs), 40.0
    depth = ndimage.distance_transform_edt(dense, sampling=volume.spacing)
    core = _largest_components(depth >= 0.5 * depth.max(), 1.0)
    return _centroid_lps(volume, core), 1.25 * float(depth.max())


def _lungs_found(body: np.ndarray, lungs: np.ndarray) -> bool:
    """Enough aerated lung (1 % of the body) to call the volume a chest."""
    return bool(body.any()) and lungs.sum() >= 0.01 * body.sum()


def _lung_top_bottom(volume: Volume, lungs: np.ndarray) -> Tuple[float, float]:
    """z (LPS mm) of the apices and of the lowest lung, as robust percentiles (a stray
    voxel of airway or bowel gas does not move them)."""
    zs = volume.index_to_lps(np.argwhere(lungs))[:, 2]
    return float(np.percentile(zs, 99.5)), float(np.percentile(zs, 0.5))


def lung_extent(volume: Volume, body: Optional[np.ndarray] = None) -> Optional[Tuple[float, float]]:
    """(top, bottom) z of the lungs (LPS mm), as :func:`find_landmarks` finds them; None
    when the volume holds no lungs (not a chest). ``body``: its :func:`body_mask`, if found."""
    body = body_mask(volume) if body is None else body
    lungs = lung_mask(volume, body)
    return _lung_top_bottom(volume, lungs) if _lungs_found(body, lungs) else None


def find_landmarks(volume: Volume) -> ChestLandmarks:
    """Body centre, lung extent along z and the heart (centre, size) of a chest CT; fails
    with :class:`InputError` when no lungs are found (not a chest CT)."""
    axis = si_axis(volume)
    body = body_mask(volume)
    lungs = lung_mask(volume, body)
    if not _lungs_found(body, lungs):
        raise InputError("anatomy augmentation needs a chest CT: no lungs found (air inside "
                         "the body below -400 HU)")
    heart_center, heart_radius = _heart(volume, lungs, axis)
    return ChestLandmarks(tuple(float(c) for c in _centroid_lps(volume, body)),
                          *_lung_top_bottom(volume, lungs),
                          tuple(float(c) for c in heart_center), heart_radius)


_LANDMARKS: "OrderedDict[str, ChestLandmarks]" = OrderedDict()


def landmarks_of(volume: Volume) -> ChestLandmarks:
    """:func:`find_landmarks`, remembered for the last few volumes by content: the K
    patients made from one CT all start from the same landmarks, found once."""
    h = hashlib.blake2b(np.ascontiguousarray(volume.array).tobytes(), digest_size=16)
    h.update(np.asarray(volume.affine, np.float64).tobytes())
    key = h.hexdigest()
    if key not in _LANDMARKS:
        _LANDMARKS[key] = find_landmarks(volume)
        while len(_LANDMARKS) > 8:
            _LANDMARKS.popitem(last=False)
    _LANDMARKS.move_to_end(key)
    return _LANDMARKS[key]


# ---------------------------------------------------------------- the deformation

def _rotation(deg_lps) -> np.ndarray:
    """Rotation by the given angles (degrees) about the L, P and S axes, in that order."""
    ax, ay, az = np.radians(deg_lps)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _softplus(t: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, t)


@dataclass(frozen=True)
class Deformation:
    """The pull-back ``phi(x) = (id + u)(g(A^-1 x))`` from output to source (LPS mm).

    ``A``: about ``center``, scale ``scales`` then rotation ``rotation`` then translation
    ``shift``. ``g``: the superior coordinate pulled down by ``lung_gain * H(z_ref - z)``
    with ``H' = sigmoid(t / tau) - sigmoid((t - lung_span) / tau)`` in [0, 1): the part
    between ``z_ref`` and ``z_ref - lung_span`` scaled by ``1 / (1 + lung_gain)``, the part
    below shifted. ``u``: the heart bump (shift and growth, Gaussian of width
    ``heart_sigma``) plus sinusoidal elastic modes."""

    center: Tuple[float, float, float]
    scales: Tuple[float, float, float]
    rotation: Tuple[Tuple[float, ...], ...]
    shift: Tuple[float, float, float]
    z_ref: float
    lung_span: float
    lung_gain: float
    heart_center: Tuple[float, float, float]
    heart_sigma: float
    heart_shift: Tuple[float, float, float]
    heart_growth: float
    wave_vectors: Tuple[Tuple[float, float, float], ...] = ()     # rad/mm
    wave_amplitudes: Tuple[Tuple[float, float, float], ...] = ()  # mm
    wave_phases: Tuple[float, ...] = ()
    tau: float = 10.0

    def local_gradient_bound(self) -> float:
        """An upper bound of the spectral norm of ``grad u`` anywhere: the heart shift bump
        ``|a| / sigma * e^-1/2``, the growth bump ``|s|``, the elastic modes
        ``sqrt(sum_i (sum_m |a_mi| |k_m|)^2)``. Below 1, ``id + u`` cannot fold."""
        bump = float(np.linalg.norm(self.heart_shift)) / self.heart_sigma * np.exp(-0.5)
        k = np.linalg.norm(np.asarray(self.wave_vectors).reshape(-1, 3), axis=1)
        amp = np.abs(np.asarray(self.wave_amplitudes).reshape(-1, 3))
        elastic = float(np.linalg.norm((amp * k[:, None]).sum(0)))
        return bump + abs(self.heart_growth) + elastic

    def source_points(self, points: np.ndarray) -> np.ndarray:
        """Source positions (LPS mm, ``[..., 3]``) of output positions ``points``."""
        c = np.asarray(self.center)
        lin = np.diag(1.0 / np.asarray(self.scales)) @ np.asarray(self.rotation).T
        y = (points - c - np.asarray(self.shift)) @ lin.T + c
        t = self.z_ref - y[..., 2]
        pull = self.tau * (_softplus(t / self.tau) - _softplus((t - self.lung_span) / self.tau))
        y[..., 2] -= self.lung_gain * pull
        return y + self._local(y)

    def _local(self, y: np.ndarray) -> np.ndarray:
        d = y - np.asarray(self.heart_center)
        bump = np.exp(-0.5 * np.sum(d * d, axis=-1) / self.heart_sigma ** 2)[..., None]
        u = -bump * (np.asarray(self.heart_shift) + self.heart_growth * d)
        for k, a, p in zip(self.wave_vectors, self.wave_amplitudes, self.wave_phases):
            u += np.sin(y @ np.asarray(k) + p)[..., None] * np.asarray(a)
        return u


def _draw_elastic(rng: np.random.Generator, r: AnatomyRanges):
    """Random low-frequency sinusoids scaled so their gradient bound is a random fraction of
    ``r.elastic_gradient``."""
    m = max(0, int(r.elastic_modes))
    dirs = rng.normal(size=(m, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True) + 1e-12
    k = dirs * (2 * np.pi / rng.uniform(*r.elastic_wavelength_mm, size=(m, 1)))
    amps = rng.normal(size=(m, 3))
    phases = rng.uniform(0, 2 * np.pi, size=m)
    bound = np.linalg.norm((np.abs(amps) * np.linalg.norm(k, axis=1)[:, None]).sum(0)) if m else 0.0
    target = r.elastic_gradient * rng.uniform(0.3, 1.0)
    amps = amps * (target / bound) if bound > 0 else amps
    return tuple(map(tuple, k)), tuple(map(tuple, amps)), tuple(float(p) for p in phases)


def draw_deformation(rng: np.random.Generator, lm: ChestLandmarks,
                     r: AnatomyRanges = DEFAULT_RANGES) -> Deformation:
    """One random, non-folding deformation around the landmarks ``lm``."""
    u = lambda h, size=None: rng.uniform(-h, h, size=size)     # noqa: E731
    build = u(r.habitus)
    scales = np.exp([build + u(r.habitus_lr), build + u(r.habitus_ap), u(r.height)])
    rotation = _rotation(u(1.0, 3) * np.asarray(r.rotation_deg))
    shift = u(1.0, 3) * np.asarray(r.shift_mm)
    span = max(lm.lung_top - lm.lung_bottom, 1.0)
    z_ref = lm.lung_top - 0.3 * span
    lung_gain = float(np.exp(-u(r.lung_height)) - 1.0)   # lower lungs scaled by 1/(1+gain)
    sigma = max(lm.heart_radius, 30.0)       # the heart's edge moves by ~e^-1/2 of the growth
    heart_shift = u(1.0, 3) * r.heart_shift_mm
    # the shift bump's gradient is |a|/sigma*e^-1/2: keep it under 0.25
    heart_shift *= min(1.0, 0.25 * sigma / (np.exp(-0.5) * np.linalg.norm(heart_shift) + 1e-12))
    growth = u(r.heart_growth)
    k, a, p = _draw_elastic(rng, r)
    deform = Deformation(tuple(lm.body_center), tuple(scales), tuple(map(tuple, rotation)),
                         tuple(shift), z_ref, 0.7 * span, lung_gain, tuple(lm.heart_center),
                         sigma, tuple(heart_shift), float(growth), k, a, p)
    if deform.local_gradient_bound() >= 0.95:
        raise InputError(f"anatomy ranges too large: local gradient bound "
                         f"{deform.local_gradient_bound():.2f} (must stay below 0.95)")
    return deform


def grid_points(volume: Volume, stride: int = 1) -> np.ndarray:
    """LPS positions (mm) of every ``stride``-th voxel centre along each axis, ``[X, Y, Z,
    3]``; with a stride > 1 the last point along an axis lies at or past the last voxel."""
    axes = [np.arange(0, n - 1 + stride, stride, dtype=np.float64) for n in volume.shape]
    idx = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    return volume.index_to_lps(idx)


def _default_stride(volume: Volume) -> int:
    """Evaluate the deformation every ~8 mm: it varies over tens of mm (heart bump width
    >= 30 mm, elastic wavelengths >= 120 mm), so trilinear interpolation in between is
    exact for the affine part and far below a voxel for the rest, at 1/8 of the cost."""
    return max(1, int(round(8.0 / float(np.min(volume.spacing)))))


def source_index_grid(volume: Volume, deformation: Deformation,
                      stride: Optional[int] = None) -> np.ndarray:
    """Where each voxel of the output samples ``volume``: source array indices,
    ``[3, X, Y, Z]``; computed every ``stride`` voxels and interpolated trilinearly."""
    stride = _default_stride(volume) if stride is None else max(1, int(stride))
    coarse = volume.lps_to_index(deformation.source_points(grid_points(volume, stride)))
    coarse = coarse.astype(np.float32)         # 1e-5 voxel is plenty; halves the traffic
    for axis, n in enumerate(volume.shape):
        if stride > 1:
            coarse = _lerp_along(coarse, axis, np.arange(n) / stride)
    return np.moveaxis(coarse, -1, 0)


def displacement_field(volume: Volume, deformation: Deformation,
                       stride: Optional[int] = None) -> np.ndarray:
    """``phi(x) - x`` (mm, LPS components) at every voxel, ``[3, X, Y, Z]``: the map
    :func:`warp` applies."""
    src = np.moveaxis(source_index_grid(volume, deformation, stride), 0, -1)
    return np.moveaxis(volume.index_to_lps(src) - grid_points(volume), -1, 0)


def jacobian_determinant(displacement: np.ndarray, spacing=1.0) -> np.ndarray:
    """``det(I + grad u)`` at every voxel of a displacement field ``u`` (``[3, X, Y, Z]``,
    mm, LPS components) on a grid of ``spacing`` (mm per axis, or the 3x3 / 4x4
    index-to-LPS matrix): > 0 everywhere means the map does not fold."""
    m = np.asarray(spacing, dtype=np.float64)
    if m.ndim == 2:
        m = m[:3, :3]
    else:
        m = np.diag(np.broadcast_to(m, (3,)).astype(np.float64))
    # d u_c / d index_a, then chain to d u_c / d x_b through the inverse grid matrix
    d_index = np.stack([np.stack(np.gradient(displacement[c]), axis=-1) for c in range(3)], axis=-2)
    jac = d_index @ np.linalg.inv(m) + np.eye(3)
    return np.linalg.det(jac)


# ---------------------------------------------------------------- intensities

@dataclass(frozen=True)
class IntensityChange:
    """HU scale/offset, noise (HU), kernel (< 0: blur sigma, > 0: sharpen gain, voxels),
    slice thickness (mm, 0 = unchanged) and the thick slices' phase."""

    hu_scale: float
    hu_offset: float
    noise_hu: float
    kernel: float
    slice_mm: float
    slice_phase: float


def draw_intensity(rng: np.random.Generator, r: AnatomyRanges = DEFAULT_RANGES) -> IntensityChange:
    thick = rng.uniform(*r.slice_mm)
    return IntensityChange(float(1.0 + rng.uniform(-r.hu_scale, r.hu_scale)),
                           float(rng.uniform(-r.hu_offset, r.hu_offset)),
                           float(rng.uniform(*r.noise_hu)), float(rng.uniform(-r.kernel, r.kernel)),
                           float(thick if rng.uniform() < 0.5 else 0.0), float(rng.uniform()))


def _lerp_along(arr: np.ndarray, axis: int, positions: np.ndarray) -> np.ndarray:
    """``arr`` linearly interpolated along ``axis`` at fractional ``positions`` (clamped)."""
    n = arr.shape[axis]
    if n == 1:
        return np.take(arr, np.zeros(len(positions), int), axis=axis)
    pos = np.clip(positions, 0.0, n - 1.0)
    lo = np.minimum(np.floor(pos).astype(int), n - 2)
    w = (pos - lo).astype(arr.dtype).reshape([-1 if a == axis else 1 for a in range(arr.ndim)])
    return np.take(arr, lo, axis=axis) + np.take(np.diff(arr, axis=axis), lo, axis=axis) * w


def _thicker_slices(arr: np.ndarray, axis: int, width: float, phase: float) -> np.ndarray:
    """Average ``arr`` over slabs ``width`` voxels thick along ``axis`` (a box profile),
    keep one slab every ``width`` voxels (starting at ``phase`` of a slab), and interpolate
    back linearly onto the grid: what a thick-slice reconstruction looks like resampled."""
    n = arr.shape[axis]
    half = width / 2.0
    taps = np.arange(-int(np.ceil(half)), int(np.ceil(half)) + 1)
    weights = np.clip(half + 0.5 - np.abs(taps), 0.0, 1.0)      # box of fractional width
    box = ndimage.convolve1d(arr, weights / weights.sum(), axis=axis, mode="nearest")
    centers = np.arange((phase - 1.0) * width, n + width, width)
    slabs = _lerp_along(box, axis, centers)
    back = _lerp_along(slabs, axis, (np.arange(n) - centers[0]) / width)
    return back.astype(arr.dtype)


def apply_intensity(arr: np.ndarray, change: IntensityChange, rng: np.random.Generator,
                    si: int, si_spacing: float, air: float) -> np.ndarray:
    """Scale attenuation about air, add noise, apply the kernel (the noise gets its
    texture), then the slice thickness."""
    out = (arr + 1000.0) * change.hu_scale - 1000.0 + change.hu_offset
    if change.noise_hu > 0:
        out = out + change.noise_hu * rng.standard_normal(arr.shape, dtype=np.float32)
    if change.kernel < -0.05:
        out = ndimage.gaussian_filter(out, -change.kernel, mode="nearest")
    elif change.kernel > 0.05:
        out = out + change.kernel * (out - ndimage.gaussian_filter(out, 1.0, mode="nearest"))
    width = change.slice_mm / si_spacing
    if width > 1.05:
        out = _thicker_slices(out, si, width, change.slice_phase)
    return np.maximum(out, air).astype(np.float32)


# ---------------------------------------------------------------- the augmentation

@dataclass(frozen=True)
class AnatomyAugmentation:
    """Everything one seed draws: the deformation and the intensity change."""

    seed: int
    deformation: Deformation
    intensity: IntensityChange
    landmarks: ChestLandmarks

    def summary(self) -> Dict[str, object]:
        """The drawn parameters, as plain JSON-able values (for volume metadata)."""
        d = self.deformation
        return {"version": ANATOMY_VERSION, "seed": self.seed, "scales": list(d.scales),
                "shift_mm": list(d.shift), "lung_gain": d.lung_gain,
                "heart_shift_mm": list(d.heart_shift), "heart_growth": d.heart_growth,
                "local_gradient_bound": d.local_gradient_bound(),
                "intensity": asdict(self.intensity)}


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([_SALT, int(seed), stream])


def draw_augmentation(volume: Volume, seed: int, ranges: AnatomyRanges = DEFAULT_RANGES,
                      landmarks: Optional[ChestLandmarks] = None) -> AnatomyAugmentation:
    """The augmentation of ``seed`` for ``volume`` (landmarks found in it unless given)."""
    lm = landmarks_of(volume) if landmarks is None else landmarks
    return AnatomyAugmentation(int(seed), draw_deformation(_rng(seed, 0), lm, ranges),
                               draw_intensity(_rng(seed, 1), ranges), lm)


def warp(volume: Volume, deformation: Deformation, order: int = 1,
         fill: Optional[float] = None) -> np.ndarray:
    """``volume`` resampled at the deformation's source points (trilinear by default),
    ``fill`` (default: the volume's minimum, air) outside."""
    idx = source_index_grid(volume, deformation)
    fill = float(volume.array.min()) if fill is None else fill
    return ndimage.map_coordinates(volume.array.astype(np.float32, copy=False), idx, order=order,
                                   mode="constant", cval=fill, prefilter=False)


def apply_augmentation(volume: Volume, aug: AnatomyAugmentation) -> Volume:
    """``volume`` (HU) warped and changed as ``aug`` says, on the same grid."""
    air = float(volume.array.min())
    warped = warp(volume, aug.deformation, fill=air)
    si = si_axis(volume)
    out = apply_intensity(warped, aug.intensity, _rng(aug.seed, 2), si, float(volume.spacing[si]), air)
    out = np.minimum(out, float(volume.array.max()))
    meta = dict(volume.metadata, anatomy_augmentation=aug.summary())
    return Volume(out, volume.affine.copy(), meta)


def augment_anatomy(volume: Volume, seed: int, ranges: AnatomyRanges = DEFAULT_RANGES,
                    landmarks: Optional[ChestLandmarks] = None) -> Volume:
    """A new plausible patient made from ``volume`` (HU), the same for the same seed, on
    the same grid."""
    return apply_augmentation(volume, draw_augmentation(volume, seed, ranges, landmarks))


def _outside(mask: np.ndarray, region: np.ndarray) -> float:
    return float((mask & ~region).sum()) / max(int(mask.sum()), 1)


def _carry(mask: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """A mask moved by the map (nearest voxel: thin ribs stay whole)."""
    return ndimage.map_coordinates(mask.astype(np.uint8), idx, order=0, mode="constant",
                                   cval=0, prefilter=False).astype(bool)


def plausibility(volume: Volume, seed: int, ranges: AnatomyRanges = DEFAULT_RANGES) -> Dict[str, float]:
    """How plausible patient ``seed`` of ``volume`` is. The least and greatest Jacobian
    determinant of its map; the fraction of the lungs (thresholded on ``volume``, carried
    by the map) outside the augmented CT's body (thresholded on it), outside the bony hull
    of ``volume``'s bone carried by the map (the geometry alone), and outside the bony hull
    thresholded on the augmented CT (intensity changes included: blur, thick slices and HU
    scale can take thin ribs below the bone threshold); and the hull fraction on ``volume``
    itself, the measurement's floor."""
    aug = draw_augmentation(volume, seed, ranges)
    out = apply_augmentation(volume, aug)
    idx = source_index_grid(volume, aug.deformation)
    jac = jacobian_determinant(displacement_field(volume, aug.deformation), volume.affine)
    body = body_mask(volume)
    lungs = lung_mask(volume, body)
    moved = _carry(lungs, idx)
    out_body = body_mask(out)
    return {"jacobian_min": float(jac.min()), "jacobian_max": float(jac.max()),
            "lung_outside_body": _outside(moved, out_body),
            "lung_outside_hull": _outside(moved, rib_hull_mask(out, _carry(bone_mask(volume, body), idx))),
            "lung_outside_hull_thresholded": _outside(moved, rib_hull_mask(out, bone_mask(out, out_body))),
            "baseline_outside_body": _outside(lungs, body),
            "baseline_outside_hull": _outside(lungs, rib_hull_mask(volume, bone_mask(volume, body)))}

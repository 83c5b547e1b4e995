"""Training views rendered on the fly: for each sample a context view at a random angle
and K target views at that angle plus rotation deltas (the world model's actions), drawn
and augmented as the configuration says, rendered on the training device.

Also the contract of a data mode (:class:`ViewSource`): what training (batches) and
evaluation (true views at given angles, the mean-view baseline) ask of the data, met by CTs
rendered on the fly (:class:`RenderedViewSet`) and by stored DRR stacks
(:class:`~.stacks.DRRStackSet`)."""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np
import torch

from ..conventions import MU_WATER
from ..drr import DRRRenderer
from ..errors import InputError
from ..geometry import DEFAULT_SDD, DEFAULT_SOD, ProjectionGeometry
from ..volume import Volume
from .radiograph_style import CONTEXT_AUGMENTATIONS, augment_context

CONTEXT_MODES = ("frontal", "uniform")


@dataclass(frozen=True)
class ViewSampling:
    """How views are drawn. Real CXRs are frontal, so by default the context angle is
    normal around 0 deg (PA) with ``context_sigma_deg``, truncated at ``context_max_deg``;
    ``uniform`` draws it over the full circle. Deltas come from ``deltas_deg``."""

    image_size: int = 64
    field_of_view_mm: float = 400.0      # detector coverage, measured at the isocentre
    sdd: float = DEFAULT_SDD
    sod: float = DEFAULT_SOD
    context: str = "frontal"
    context_sigma_deg: float = 15.0
    context_max_deg: float = 45.0
    deltas_deg: Tuple[float, ...] = tuple(float(d) for d in range(-90, 91, 15) if d != 0)
    targets_per_context: int = 4
    tilt_max_deg: float = 0.0            # augmentation: cranio-caudal tilt, uniform +-
    shift_max_mm: float = 0.0            # augmentation: isocentre shift, uniform +- per axis
    intensity_jitter: float = 0.0        # augmentation: mu_water scaled by 1 +- this
    noise_std: float = 0.0               # augmentation: Gaussian noise, line-integral units
    mu_water: float = MU_WATER
    #: augmentation of the context view only: the probability of each radiograph effect
    #: (scatter, noise, blur, LUT, unsharp masking, equalisation, collimation, markers, 8-bit
    #: export; :mod:`.radiograph_style`); 0 = off
    radiograph_style: float = 0.0
    #: augmentation of the context view only: the probability that it covers only part of
    #: the field, air outside, as a radiograph framed tighter than the body reaches the
    #: model (:func:`.radiograph_style.narrow_field`); 0 = off
    field_narrowing: float = 0.0
    #: augmentation of the context view only: the probability of fine-scale detail
    #: enhancement (:func:`.radiograph_style.enhance_fine_detail`), drawn apart from
    #: ``radiograph_style``'s effects; 0 = off
    fine_detail: float = 0.0

    def __post_init__(self):
        if self.context not in CONTEXT_MODES:
            raise InputError(f"context must be one of {CONTEXT_MODES}, got {self.context!r}")
        if self.image_size < 8 or self.targets_per_context < 1 or not self.deltas_deg:
            raise InputError("image_size >= 8, targets_per_context >= 1 and some deltas_deg are needed")
        for name in CONTEXT_AUGMENTATIONS:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"{name} is a probability in [0, 1], got "
                                 f"{getattr(self, name)}")

    @property
    def pixel_spacing(self) -> float:
        """Detector pixel (mm at the detector) so the image covers the field of view."""
        return self.field_of_view_mm * self.sdd / self.sod / self.image_size

    def geometry(self, angles, tilt: float = 0.0, isocenter=None) -> ProjectionGeometry:
        return ProjectionGeometry(angles=tuple(float(a) for a in angles),
                                  detector_shape=(self.image_size, self.image_size),
                                  pixel_spacing=(self.pixel_spacing, self.pixel_spacing),
                                  sdd=self.sdd, sod=self.sod, tilt=tilt,
                                  isocenter=None if isocenter is None else tuple(isocenter))


@dataclass
class ViewBatch:
    context: torch.Tensor          # [B, 1, H, W] line integrals
    targets: torch.Tensor          # [B, K, 1, H, W]
    context_angle: torch.Tensor    # [B] degrees
    deltas: torch.Tensor           # [B, K] degrees
    tilt: torch.Tensor             # [B] degrees
    ids: List[str] = field(default_factory=list)

    def to(self, device) -> "ViewBatch":
        return ViewBatch(*(t.to(device) for t in (self.context, self.targets, self.context_angle,
                                                   self.deltas, self.tilt)), list(self.ids))


@dataclass
class TrueViews:
    """Clean views of the evaluated cases: view 0 of each case is the context, then one view
    per target angle; ``angles`` are the views' actual angles (a stack's nearest stored
    angle), which is what the model is given."""

    views: np.ndarray              # [N, 1+T, H, W] float32 line integrals
    angles: np.ndarray             # [N, 1+T] degrees

    def __len__(self) -> int:
        return int(self.views.shape[0])


class ViewSource(Protocol):
    """A data mode, as training and evaluation use it (the trainer never asks which)."""

    def __len__(self) -> int: ...

    def get(self, index: int, replace: bool = True):
        """Case ``index`` (the next readable one with ``replace``); fails when none is."""

    def batch(self, indices: Sequence[int], rngs, ids: Optional[Sequence[str]] = None) -> ViewBatch:
        """Training samples: sample ``b`` from case ``indices[b]`` and ``rngs[b]`` alone."""

    def require_angles(self, angles: Sequence[float], limit: Optional[int] = None) -> None:
        """:class:`InputError` when (one of the first ``limit``) cases has no view at one of
        ``angles``."""

    def true_views(self, context_angle: float, target_angles: Sequence[float]) -> TrueViews:
        """Clean views of every readable case at ``context_angle`` and ``target_angles``."""

    def mean_views(self, angles: Sequence[float], limit: int = 16) -> Dict[float, np.ndarray]:
        """The mean clean view at each angle over the first ``limit`` readable cases (the
        'mean training view' baseline)."""


def sample_angles(s: ViewSampling, rng: np.random.Generator, batch: int):
    """Context angles [B], deltas [B, K] and tilts [B] (degrees) for one batch."""
    if s.context == "frontal":
        ctx = rng.normal(0.0, s.context_sigma_deg, size=batch)
        ctx = np.clip(ctx, -s.context_max_deg, s.context_max_deg)
    else:
        ctx = rng.uniform(0.0, 360.0, size=batch)
    choices = np.asarray(s.deltas_deg, dtype=np.float64)
    k = s.targets_per_context
    deltas = np.stack([rng.choice(choices, size=k, replace=k > choices.size) for _ in range(batch)])
    tilt = rng.uniform(-s.tilt_max_deg, s.tilt_max_deg, size=batch) if s.tilt_max_deg else np.zeros(batch)
    return ctx, deltas, tilt


class ViewRenderer:
    """Renders :class:`ViewBatch` es from preprocessed CT volumes (HU), keeping one prepared
    :class:`DRRRenderer` per volume (and per intensity jitter) on ``device``."""

    def __init__(self, sampling: ViewSampling, device=None):
        self.sampling = sampling
        self.device = device
        self._renderers: Dict[int, Tuple[weakref.ref, DRRRenderer]] = {}

    def _renderer(self, volume: Volume) -> DRRRenderer:
        """The prepared renderer of ``volume``. Entries hold only a weak reference to their
        volume: when the data loader's cache drops a volume its renderer goes too, and a
        new volume that reuses the old ``id`` never gets a stale renderer."""
        entry = self._renderers.get(id(volume))
        if entry is not None and entry[0]() is volume:
            return entry[1]
        self._renderers = {k: v for k, v in self._renderers.items() if v[0]() is not None}
        renderer = DRRRenderer(volume, "fast", self.device, self.sampling.mu_water)
        self._renderers[id(volume)] = (weakref.ref(volume), renderer)
        return renderer

    def render(self, volumes: Sequence[Volume], rngs, ids: Optional[Sequence[str]] = None) -> ViewBatch:
        """One batch: sample ``b`` is drawn from ``rngs[b]`` alone (angles, tilt, shift,
        intensity, noise, the context's radiograph style), so a batch split across ranks
        renders exactly the samples of the undivided batch. ``rngs`` may also be one
        generator (then split per sample)."""
        s = self.sampling
        B = len(volumes)
        if isinstance(rngs, np.random.Generator):
            rngs = rngs.spawn(B)
        ctx, deltas, tilt, views = [], [], [], []
        for vol, rng in zip(volumes, rngs):
            c, d, t = sample_angles(s, rng, 1)
            iso = vol.center
            if s.shift_max_mm:
                iso = iso + rng.uniform(-s.shift_max_mm, s.shift_max_mm, size=3)
            g = s.geometry(np.concatenate([c, c[0] + d[0]]), float(t[0]), iso)
            img = self._renderer(vol).render_tensor(g)
            if s.intensity_jitter:     # line integrals scale with mu_water
                img = img * float(1.0 + rng.uniform(-s.intensity_jitter, s.intensity_jitter))
            if s.noise_std:
                noise = torch.from_numpy(rng.normal(0.0, s.noise_std, size=tuple(img.shape)).astype(np.float32))
                img = img + noise.to(img.device)
            img = augment_context(img, s, rng)     # the input view only
            ctx.append(c[0])
            deltas.append(d[0])
            tilt.append(t[0])
            views.append(img)
        stack = torch.stack(views)[:, :, None]                      # [B, 1+K, 1, H, W]
        return ViewBatch(stack[:, 0], stack[:, 1:], torch.as_tensor(np.asarray(ctx), dtype=torch.float32),
                         torch.as_tensor(np.asarray(deltas), dtype=torch.float32),
                         torch.as_tensor(np.asarray(tilt), dtype=torch.float32), list(ids or []))


def clean_sampling(s: ViewSampling) -> ViewSampling:
    """The same views without augmentation, for evaluation."""
    return replace(s, tilt_max_deg=0.0, shift_max_mm=0.0, intensity_jitter=0.0, noise_std=0.0,
                   **{name: 0.0 for name in CONTEXT_AUGMENTATIONS})


def render_views(volumes: Sequence[Volume], sampling: ViewSampling, angles, device=None) -> np.ndarray:
    """True DRRs [N, A, H, W] of each volume at ``angles`` (no augmentation)."""
    s = clean_sampling(sampling)
    out = [DRRRenderer(v, "fast", device, s.mu_water).render(s.geometry(angles, 0.0, v.center))
           for v in volumes]
    return np.stack(out)


class _VolumeList:
    """Volumes already in memory, with the (volume, item) interface of ``VolumeProvider``."""

    def __init__(self, volumes: Sequence[Volume]):
        self.volumes = list(volumes)

    def __len__(self) -> int:
        return len(self.volumes)

    def get(self, index: int, replace: bool = True):
        return self.volumes[index], None


class RenderedViewSet:
    """The :class:`ViewSource` of CTs: views rendered on the fly on ``device``.

    ``volumes`` is a :class:`~.cache.VolumeProvider` (CTs loaded lazily; an unreadable one
    is reported once and skipped) or a list of preprocessed volumes."""

    def __init__(self, volumes, sampling: ViewSampling, device=None):
        self.volumes = volumes if hasattr(volumes, "get") else _VolumeList(volumes)
        self.sampling = sampling
        self.device = device
        self.renderer = ViewRenderer(sampling, device)

    def __len__(self) -> int:
        return len(self.volumes)

    def get(self, index: int, replace: bool = True):
        return self.volumes.get(index, replace)

    def batch(self, indices: Sequence[int], rngs, ids: Optional[Sequence[str]] = None) -> ViewBatch:
        vols, found = [], []
        for i in indices:
            vol, item = self.volumes.get(int(i))
            vols.append(vol)
            found.append(item.id if item is not None else str(int(i)))
        return self.renderer.render(vols, rngs, found if ids is None else ids)

    def require_angles(self, angles: Sequence[float], limit: Optional[int] = None) -> None:
        """Nothing to check: a CT is rendered at any angle."""

    def readable(self, limit: Optional[int] = None) -> List[Volume]:
        """The first ``limit`` (default all) readable volumes, in order."""
        out = []
        for i in range(len(self.volumes)):
            if limit is not None and len(out) >= limit:
                break
            got = self.volumes.get(i, replace=False)
            if got is not None:
                out.append(got[0])
        if not out:
            first = next(iter(getattr(self.volumes, "bad", {}).values()), "n/a")
            raise InputError(f"none of the {len(self.volumes)} CTs could be read (first "
                             f"error: {first})")
        return out

    def true_views(self, context_angle: float, target_angles: Sequence[float]) -> TrueViews:
        angles = [float(context_angle)] + [float(a) for a in target_angles]
        views = render_views(self.readable(), self.sampling, angles, self.device)
        return TrueViews(views, np.tile(np.asarray(angles), (views.shape[0], 1)))

    def mean_views(self, angles: Sequence[float], limit: int = 16) -> Dict[float, np.ndarray]:
        angles = [float(a) for a in angles]
        views = render_views(self.readable(limit), self.sampling, angles, self.device)
        return {a: views[:, k].mean(0) for k, a in enumerate(angles)}

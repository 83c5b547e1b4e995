"""Frontal views of CTs as inference receives radiographs: random acquisitions.

A probe fitted on perfectly centred DRRs rendered at the model's own detector learns
features no real radiograph reproduces: with the demo model, moving the patient 2 mm
sideways moves the pooled latents three times as far as the whole fitting cohort spreads,
and the heads' logits saturate. So the heads, their calibration and the out-of-distribution
reference are fitted on *acquisitions*: each CT is rendered as a frontal radiograph

* with the model's own training augmentation (the card's ``views``: isocentre shift,
  cranio-caudal tilt, attenuation jitter, detector noise), the variation the model was
  trained to absorb;
* on a detector of random pitch (1.0-2.5 mm) and field (380-480 mm at the detector);
* given to :func:`~XrayWorldModel.infer.domain.to_model_input` either as line integrals
  (a DRR) or as display values under a random gamma (0.7-1.4, a radiograph's look-up
  table), so it goes through the same resampling, placement by its lung fields and
  intensity mapping as a file given to ``xray2xray infer``.

Each acquisition is drawn from ``SeedSequence([seed, ct_index, view_index])``: the same
CTs, count and seed give the same images. ``n_views=0`` means the old behaviour: the one
clean, centred view at the model's detector (:func:`.features.render_frontal_views`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..data import ViewSampling
from ..data.views import clean_sampling
from ..drr import DRRRenderer
from ..geometry import ProjectionGeometry
from ..infer.domain import LINE_INTEGRAL, to_model_input
from ..radiograph import Radiograph
from .features import _views_config, preprocessed_volumes

PITCH_MM = (1.0, 2.5)
FIELD_MM = (380.0, 480.0)
GAMMA = (0.7, 1.4)
#: Probability that an acquisition is given as display values rather than line integrals.
DISPLAY_FRACTION = 0.5
DEFAULT_VIEWS = 4


@dataclass(frozen=True)
class Acquisition:
    """One simulated frontal radiograph of a CT: where and how it was taken and shown."""

    shift_mm: Tuple[float, float, float]
    tilt_deg: float
    mu_scale: float
    pitch_mm: float
    n_pixels: int
    display_gamma: Optional[float]      # None: given as line integrals (a DRR)
    noise_seed: int

    @classmethod
    def draw(cls, rng: np.random.Generator, sampling: ViewSampling) -> "Acquisition":
        shift = tuple(float(v) for v in rng.uniform(-1, 1, 3) * sampling.shift_max_mm)
        tilt = float(rng.uniform(-1, 1) * sampling.tilt_max_deg)
        mu_scale = float(1.0 + rng.uniform(-1, 1) * sampling.intensity_jitter)
        pitch = float(rng.uniform(*PITCH_MM))
        n = int(round(rng.uniform(*FIELD_MM) / pitch))
        gamma = float(rng.uniform(*GAMMA)) if rng.random() < DISPLAY_FRACTION else None
        return cls(shift, tilt, mu_scale, pitch, n, gamma, int(rng.integers(2 ** 31)))


def acquired_view(volume, sampling: ViewSampling, acq: Acquisition,
                  domain: Optional[Mapping[str, Any]], device=None) -> np.ndarray:
    """The model input [H, W] (DRR units) of ``volume`` taken as ``acq``."""
    g = ProjectionGeometry(angles=(0.0,), detector_shape=(acq.n_pixels, acq.n_pixels),
                           pixel_spacing=(acq.pitch_mm, acq.pitch_mm), sdd=sampling.sdd,
                           sod=sampling.sod, tilt=acq.tilt_deg,
                           isocenter=tuple(np.asarray(volume.center) + acq.shift_mm))
    drr = DRRRenderer(volume, "fast", device, sampling.mu_water * acq.mu_scale).render(g)[0]
    spacing = (acq.pitch_mm, acq.pitch_mm)
    if acq.display_gamma is None:
        rad = Radiograph(drr, spacing, "PA", {"units": LINE_INTEGRAL})
    else:
        top = float(np.percentile(drr, 99.5)) or 1.0
        rad = Radiograph(np.clip(drr / top, 0.0, 1.0) ** acq.display_gamma, spacing, "PA",
                         {"magnification": g.magnification})   # as its DICOM would say
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # a laterality note on a phantom is not news
        image = to_model_input(rad, sampling, domain, check_spacing=False).image
    noise = np.random.default_rng(acq.noise_seed).normal(0.0, sampling.noise_std, image.shape)
    return (image + (image > 0) * noise).astype(np.float32)


def render_acquired_views(items, card_or_config, n_views: int = DEFAULT_VIEWS, seed: int = 0,
                          cache_dir=None, device=None, progress: bool = False
                          ) -> Tuple[np.ndarray, List[str], np.ndarray]:
    """``n_views`` acquisitions of each CT in ``items``: (images [N * n_views, 1, H, W], ids
    of the CTs rendered, group [N * n_views] = the index into ids of each image's CT). The
    CTs are preprocessed as in training (cached on disk); a CT that cannot be read is
    skipped with a :class:`~.features.CTSkippedWarning`."""
    cfg = _views_config(card_or_config)
    domain = card_or_config.get("domain") if isinstance(card_or_config, Mapping) else None
    sampling = cfg.views
    images, ids, groups = [], [], []
    for i, item, vol in preprocessed_volumes(items, cfg, cache_dir, progress):
        for v in range(int(n_views)):
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), i, v]))
            images.append(acquired_view(vol, sampling, Acquisition.draw(rng, sampling),
                                        domain, device))
            groups.append(len(ids))
        ids.append(item.id)
    size = sampling.image_size
    arr = np.stack(images)[:, None] if images else np.zeros((0, 1, size, size), np.float32)
    return arr.astype(np.float32), ids, np.asarray(groups, dtype=np.int64)


def display_view(volume, sampling: ViewSampling, domain: Optional[Mapping[str, Any]],
                 device=None) -> np.ndarray:
    """The clean frontal view of ``volume`` at the model's own detector, given to the
    inference preprocessing as a display image: its line integrals windowed from 0 to their
    99.5th percentile, as ``xray2xray drr --png / --dicom`` write a DRR, with no
    augmentation or noise. What ``probe`` sees on the files ``drr`` writes of the same CT at
    that detector, so the CT and radiograph paths can be compared image for image."""
    clean = clean_sampling(sampling)
    acq = Acquisition((0.0, 0.0, 0.0), 0.0, 1.0, clean.pixel_spacing, clean.image_size, 1.0, 0)
    return acquired_view(volume, clean, acq, domain, device)


def render_display_views(items, card_or_config, cache_dir=None, device=None,
                         progress: bool = False) -> Tuple[np.ndarray, List[str]]:
    """:func:`display_view` of each CT in ``items``: (images [N, 1, H, W], ids of the CTs
    rendered); preprocessed and skipped as :func:`render_acquired_views` does."""
    cfg = _views_config(card_or_config)
    domain = card_or_config.get("domain") if isinstance(card_or_config, Mapping) else None
    images, ids = [], []
    for _, item, vol in preprocessed_volumes(items, cfg, cache_dir, progress):
        images.append(display_view(vol, cfg.views, domain, device))
        ids.append(item.id)
    size = cfg.views.image_size
    arr = np.stack(images)[:, None] if images else np.zeros((0, 1, size, size), np.float32)
    return arr.astype(np.float32), ids


def acquisition_summary(n_views: int, seed: int, presentation: str = "line-integrals"
                        ) -> Dict[str, Any]:
    """How the views were made, recorded with heads and references fitted on them."""
    if n_views <= 0 and presentation == "display":
        return {"kind": "clean-display", "views_per_ct": 1,
                "description": "one centred view at the model's detector, no augmentation, "
                               "windowed 0..99.5th percentile as drr --png/--dicom write it, "
                               "through the inference preprocessing"}
    if n_views <= 0:
        return {"kind": "clean", "views_per_ct": 1,
                "description": "one centred view at the model's detector, no augmentation"}
    return {"kind": "acquisitions", "views_per_ct": int(n_views), "seed": int(seed),
            "pitch_mm": list(PITCH_MM), "field_mm": list(FIELD_MM), "gamma": list(GAMMA),
            "display_fraction": DISPLAY_FRACTION,
            "description": "random acquisitions through the inference preprocessing: the "
                           "model's training augmentation, random detector pitch and field, "
                           "line integrals or display values under a random gamma"}


def expand(values: Optional[np.ndarray], groups: Sequence[int]) -> Optional[np.ndarray]:
    """Per-CT rows repeated for each of its images (``groups`` from
    :func:`render_acquired_views`)."""
    return None if values is None else np.asarray(values)[np.asarray(groups, dtype=np.int64)]

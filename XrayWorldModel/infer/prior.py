"""The volume prior: the mean training CT, in the model's isocentric frame, that the
reconstruction from one radiograph starts from.

Why: the views the world model decodes around the chest carry what is particular to the
patient (body outline, heart size, fluid), but each is smooth and a little wrong, and FDK of a
sweep of them leaves streaks, so the plain FDK volume correlates with the truth no better than
the average chest does. Reconstructing only the *residual* (imagined views minus the prior's
own projections) on top of the prior keeps the population mean wherever the views do not
say otherwise. The residual is shrunk (``residual_weight`` < 1) and smoothed
(``smoothing_voxels``), a Wiener-like damping of the decoder's errors; both were chosen on
validation phantoms (seeds 7000-7015) that no reported figure uses.

Whether a model reconstructs on its prior at all is decided when its file is built, on those
validation phantoms (:func:`~XrayWorldModel.infer.evaluate.prior_validation`), and recorded in
the card (``used`` and the two validation correlations). Why: the damping pays while the
imagined views are poor (demo 1.x, phantoms only). Once a model has learnt real anatomy its
views are good enough that FDK of them alone correlates better with the truth than the prior
plus their residual, on validation phantoms and on held-out real patients alike (README,
leave-one-patient-out), so such a model carries its prior unused.

The prior travels inside the model file (tensor ``prior.hu``, float16, and ``volume_prior``
in the card) on the reconstruction grid: ``grid``^3 voxels over the square that every view of
the sweep sees (:func:`fov_grid`).
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from ..conventions import preprocessed_cache_dir
from ..data.cache import _to_sitk
from ..drr.render import project, projector_fingerprint
from ..io.card_tensor import read_card_tensor
from ..errors import InputError
from ..fileutil import atomic_path
from ..geometry import ProjectionGeometry
from ..recon import default_grid, fdk
from ..volume import Volume

TENSOR_KEY = "prior.hu"
CARD_KEY = "volume_prior"
#: Chosen on validation phantoms 7000-7015 with the demo model (see the module docstring).
DEFAULT_RESIDUAL_WEIGHT = 0.6
DEFAULT_SMOOTHING_VOXELS = 1.0
#: Folder (in the user cache, ``$XRAY2XRAY_CACHE``) of the priors' projections.
PROJECTIONS_FOLDER = "prior-projections"
#: Projections kept in this process, most recent last (a few priors' sweeps, ~0.4 MB each).
_PROJECTIONS: "OrderedDict[str, np.ndarray]" = OrderedDict()
_PROJECTIONS_KEPT = 8


def fov_extent(geometry: ProjectionGeometry) -> np.ndarray:
    """Extent (mm, x y z) of the square around the circle every view of an orbit sees, so
    the whole chest fits; its corners are outside every view's field and stay air."""
    return default_grid(geometry, (1, 1, 1)).spacing * np.array([math.sqrt(2), math.sqrt(2), 1.0])


def fov_grid(geometry: ProjectionGeometry, n: int) -> Volume:
    """An empty ``n``^3 reconstruction grid over :func:`fov_extent`, centred on the isocentre."""
    extent = fov_extent(geometry)
    g = default_grid(geometry, (n,) * 3, extent / n)
    return Volume(np.zeros((n,) * 3, np.float32), g.affine)


def resample_like(volume: Volume, like: Volume, fill: float = -1024.0) -> np.ndarray:
    """``volume`` (HU) resampled trilinearly onto ``like``'s grid (both LPS)."""
    src = _to_sitk(volume)
    ref = _to_sitk(Volume(np.zeros(like.shape, np.float32), like.affine))
    out = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, float(fill))
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0).astype(np.float32)


def centred(volume: Volume) -> Volume:
    """``volume`` moved so its centre is the isocentre, as the trainer renders it."""
    c = Volume(volume.array, volume.affine.copy(), dict(volume.metadata))
    c.affine[:3, 3] -= volume.center
    return c


def mean_volume(volumes: Sequence[Volume], like: Volume) -> np.ndarray:
    """The voxel-wise mean of ``volumes`` (HU), each centred on the isocentre, on ``like``'s
    grid: the mean-CT baseline and the volume prior are this."""
    total = np.zeros(like.shape, np.float64)
    for v in volumes:
        total += resample_like(centred(v), like)
    return (total / len(volumes)).astype(np.float32)


def _resize(array: np.ndarray, n: int) -> np.ndarray:
    """A cube resampled to ``n``^3 over the same extent (cell-centred grids)."""
    if array.shape[0] == n:
        return array
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(n,) * 3, mode="trilinear", align_corners=False)[0, 0].numpy()


@dataclass
class VolumePrior:
    """Mean CT (HU) on an ``n``^3 :func:`fov_grid` and how the residual is laid on it."""

    hu: np.ndarray
    n_volumes: int
    residual_weight: float = DEFAULT_RESIDUAL_WEIGHT
    smoothing_voxels: float = DEFAULT_SMOOTHING_VOXELS
    source: str = ""
    #: False when validation found the views alone better (the card keeps the prior, unused).
    used: bool = True
    #: What decided ``used``: :func:`~XrayWorldModel.infer.evaluate.prior_validation`'s record.
    validation: Optional[Dict] = None

    @classmethod
    def from_volumes(cls, volumes: Sequence[Volume], geometry: ProjectionGeometry, n: int,
                     source: str = "", **kwargs) -> "VolumePrior":
        """The mean of ``volumes`` (HU, any grid), each centred on the isocentre."""
        if not volumes:
            raise InputError("a volume prior needs at least one readable training CT, got none")
        return cls(mean_volume(volumes, fov_grid(geometry, n)), len(volumes), source=source,
                   **kwargs)

    def hu_on(self, n: int) -> np.ndarray:
        return _resize(self.hu, n)

    def volume(self, sampling) -> Volume:
        """The prior as a volume on its :func:`fov_grid` for the model's views (``sampling``:
        its :class:`~XrayWorldModel.config.ViewSampling`)."""
        grid = fov_grid(sampling.geometry([0.0], 0.0, (0.0, 0.0, 0.0)), self.hu.shape[0])
        return Volume(np.asarray(self.hu, np.float32), grid.affine)

    # ------------------------------------------------------------------ model-file storage
    def tensors(self) -> Dict[str, torch.Tensor]:
        return {TENSOR_KEY: torch.from_numpy(np.ascontiguousarray(self.hu)).half()}

    def card_entry(self) -> Dict:
        return {"grid": int(self.hu.shape[0]), "units": "HU", "n_volumes": int(self.n_volumes),
                "residual_weight": float(self.residual_weight),
                "smoothing_voxels": float(self.smoothing_voxels), "source": self.source,
                "used": bool(self.used),
                **({"validation": self.validation} if self.validation is not None else {})}

    @classmethod
    def from_model_file(cls, path, card: Mapping,
                        include_unused: bool = False) -> Optional["VolumePrior"]:
        """The prior a model file reconstructs on: None when its card has none, or when the
        card marks it unused (unless ``include_unused``, for evaluation against it)."""
        hu = read_card_tensor(path, card, CARD_KEY, TENSOR_KEY)
        if hu is None:
            return None
        entry = card[CARD_KEY]
        used = bool(entry.get("used", True))       # files before 2.0 always used theirs
        if not used and not include_unused:
            return None
        return cls(hu, int(entry.get("n_volumes", 0)),
                   float(entry.get("residual_weight", DEFAULT_RESIDUAL_WEIGHT)),
                   float(entry.get("smoothing_voxels", DEFAULT_SMOOTHING_VOXELS)),
                   str(entry.get("source", "")), used, entry.get("validation"))

    # ------------------------------------------------------------------ reconstruction
    def reconstruct(self, views: np.ndarray, geometry: ProjectionGeometry, grid: Volume,
                    mu_water: float) -> np.ndarray:
        """Attenuation on ``grid`` (a :func:`fov_grid`): the prior plus the damped,
        smoothed FDK of ``views`` minus the prior's projections at the same angles."""
        mu0 = np.clip((self.hu_on(grid.shape[0]) / 1000.0 + 1.0) * mu_water, 0.0, None)
        mu0 = mu0.astype(np.float32)
        own = prior_projections(mu0, grid, geometry)
        residual = fdk(np.asarray(views, np.float32) - own, geometry, like=grid).array
        if self.smoothing_voxels > 0:
            residual = gaussian_filter(residual, self.smoothing_voxels)
        return np.clip(mu0 + self.residual_weight * residual, 0.0, None).astype(np.float32)


def _projections_key(mu0: np.ndarray, grid: Volume, geometry: ProjectionGeometry) -> str:
    h = hashlib.sha256(np.ascontiguousarray(mu0, np.float32).tobytes())
    h.update(np.ascontiguousarray(grid.affine, np.float64).tobytes())
    h.update(json.dumps([list(mu0.shape), geometry.to_dict()], sort_keys=True).encode())
    h.update(projector_fingerprint().encode())
    return h.hexdigest()


def _read_projections(path: Path, shape) -> Optional[np.ndarray]:
    try:
        own = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    ok = own.shape == tuple(shape) and own.dtype == np.float32 and np.isfinite(own).all()
    return own if ok else None


def prior_projections(mu0: np.ndarray, grid: Volume, geometry: ProjectionGeometry) -> np.ndarray:
    """The line integrals [A, H, W] of the prior's attenuation ``mu0`` on ``grid`` at the
    views of ``geometry``, as :func:`~XrayWorldModel.drr.render.project` renders them.

    They depend on the model file and the sweep alone, not on the radiograph, so they are
    rendered once and kept: in this process, and as ``.npy`` in the user cache
    (``PROJECTIONS_FOLDER``, keyed by a digest of the prior, the grid, the geometry and the
    projector's code). A later ``infer`` then reads 0.4 MB instead of starting numba
    (~0.3 s) to render them again. An unwritable cache only costs that time."""
    key = _projections_key(mu0, grid, geometry)
    if key in _PROJECTIONS:
        _PROJECTIONS.move_to_end(key)
        return _PROJECTIONS[key]
    shape = (geometry.n_angles,) + tuple(geometry.detector_shape)
    path = preprocessed_cache_dir() / PROJECTIONS_FOLDER / f"{key}.npy"
    own = _read_projections(path, shape) if path.is_file() else None
    if own is None:
        with torch.no_grad():
            own = project(torch.from_numpy(mu0), grid.affine, geometry).numpy()
        try:
            with atomic_path(path, fsync=False) as tmp, open(tmp, "wb") as f:
                np.save(f, own, allow_pickle=False)
        except OSError:
            pass
    own.setflags(write=False)      # shared by every later call
    _PROJECTIONS[key] = own
    while len(_PROJECTIONS) > _PROJECTIONS_KEPT:
        _PROJECTIONS.popitem(last=False)
    return own


__all__ = ["VolumePrior", "prior_projections", "fov_grid", "fov_extent", "resample_like", "centred", "TENSOR_KEY",
           "CARD_KEY", "DEFAULT_RESIDUAL_WEIGHT", "DEFAULT_SMOOTHING_VOXELS"]

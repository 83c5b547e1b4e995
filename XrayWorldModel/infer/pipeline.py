"""From one frontal radiograph to predicted views, a volume, scores and a consistency check.

Stages (each timed): load the model, bring the radiograph into the DRR domain
(:mod:`.domain`), encode it, sweep the transition model over the trained rotations, decode the
views, reconstruct a volume (FDK of the views' residual over the mean-CT prior the model
file carries, :mod:`.prior`; FDK of the views alone without one), apply the probe heads
stored in the model card, and re-project the volume at the input angle to score how
consistent the imagined 3D is with what was seen.

The sweep uses the rotations the model was trained on (``-90..90``). The far half of the
circle comes from the symmetry of transmission imaging: the view from ``a + 180`` sees the
same line integrals as the view from ``a``, mirrored left-right (exactly for a parallel beam;
up to the cone's magnification here), so no rotation is extrapolated beyond training.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config import TrainConfig
from ..data import ViewSampling
from ..drr import DRRRenderer, resolve_device
from ..errors import InputError
from ..fileutil import sha256_file
from ..geometry import ProjectionGeometry
from ..probe.features import extract_for_heads
from ..probe.heads import apply_heads, logistic_logits
from ..radiograph import Radiograph, check_radiograph
from ..recon import fdk, mu_to_hu, refine
from ..volume import Volume
from ..weights.loading import load_world_model
from ..weights.registry import resolve_model
from .domain import ModelInput, radiograph_input
from .prior import VolumePrior, fov_extent, fov_grid
from .trust import assess_trust
from .uncertainty import (DEFAULT_PASSES, Progress, Uncertainty, check_passes,
                          estimate_uncertainty, imagine_batch)


@dataclass
class InferenceResult:
    """Everything ``infer`` produces; :mod:`.outputs` writes it to disk."""

    views: np.ndarray                    # [V, H, W] predicted views (DRR units)
    view_angles: List[float]
    view_geometry: ProjectionGeometry    # resolved geometry of ``views``
    volume: Volume                       # reconstructed HU volume (LPS)
    model_input: ModelInput
    consistency: float                   # NCC of the re-projected volume with the input
    scores: Dict                         # {"risk": float|None, "pathologies": {name: p}}
    model: Dict                          # name, version, sha256 of the weights file
    timings: Dict[str, float] = field(default_factory=dict)
    uncertainty: Optional[Uncertainty] = None   # std maps of views and volume (:mod:`.uncertainty`)
    trust: Optional[Dict] = None         # the verdict (:mod:`.trust`); gates the scores' output
    force_scores: bool = False           # show the scores even when out of distribution


def wrap_delta(target, source=0.0):
    """Signed shortest rotation (degrees) from ``source`` to ``target``, in [-180, 180)."""
    return (np.asarray(target, dtype=np.float64) - source + 180.0) % 360.0 - 180.0


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation of two equal-length arrays (0 when one is constant)."""
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


@torch.no_grad()
def imagine_views(model, state: torch.Tensor, angles: Sequence[float]) -> np.ndarray:
    """Decoded views [A, H, W] at ``angles`` (degrees) from the state of the 0-deg view.

    Rotations within +-90 deg are model steps; beyond, the mirrored view from the opposite
    side is used (see the module docstring); each distinct step is decoded once."""
    return imagine_batch(model, state, angles)[0]


def isocentric_geometry(sampling: ViewSampling, angles) -> ProjectionGeometry:
    """The geometry of views at ``angles`` (degrees, no tilt) around the isocentre, with the
    model's detector and distances: how the model saw views in training."""
    return sampling.geometry([float(a) for a in angles], 0.0, (0.0, 0.0, 0.0))


def check_sweep_step(sweep_step: float) -> None:
    if not 0 < sweep_step <= 45 or (360.0 / sweep_step) % 1:
        raise InputError(f"sweep step must divide 360 and be at most 45 deg, got {sweep_step}")


def reconstruct(model, state: torch.Tensor, sampling: ViewSampling, volume_size: int,
                sweep_step: float = 15.0, mu_water: Optional[float] = None,
                refine_iterations: int = 0, prior: Optional[VolumePrior] = None) -> Volume:
    """A volume (HU, LPS) from a full sweep of imagined views, on a ``volume_size``^3 grid
    centred on the isocentre, so it lies behind the detector plane of the 0-deg (PA) view.

    With a ``prior`` (:class:`~XrayWorldModel.infer.prior.VolumePrior`, the mean training
    CT the model file carries) the views' residual over the prior's projections is
    reconstructed on top of it; without one, FDK of the views alone. The views have
    ``image_size`` pixels across, so this runs on a grid of at most that many voxels per
    side (finer would add no detail, only time) and is resampled trilinearly to
    ``volume_size`` over the same extent. ``refine_iterations`` > 0 adds that many SIRT
    steps through the differentiable projector against the same views (about 0.4 s per step
    at 64^3 on 2 cores)."""
    check_sweep_step(sweep_step)
    mu_water = mu_water if mu_water is not None else sampling.mu_water
    angles = np.arange(0.0, 360.0, sweep_step)
    views = imagine_views(model, state, angles)
    geometry = isocentric_geometry(sampling, angles)
    n_fdk = min(volume_size, sampling.image_size)
    grid = fov_grid(geometry, n_fdk)
    if prior is not None:
        mu = Volume(prior.reconstruct(views, geometry, grid, mu_water), grid.affine)
    else:
        mu = fdk(views, geometry, like=grid)
    if refine_iterations > 0:
        with torch.enable_grad():   # SIRT uses the projector's autograd adjoint
            mu = refine(Volume(np.clip(mu.array, 0.0, None), mu.affine), views, geometry,
                        iterations=int(refine_iterations))
    hu = mu_to_hu(mu.array, mu_water)
    affine = mu.affine
    if n_fdk != volume_size:
        t = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))[None, None]
        hu = F.interpolate(t, size=(volume_size,) * 3, mode="trilinear",
                           align_corners=False)[0, 0].numpy()
        affine = fov_grid(geometry, volume_size).affine
    extent = fov_extent(geometry)
    c = (np.arange(volume_size) - (volume_size - 1) / 2) / volume_size * extent[0]
    outside = (c[:, None] ** 2 + c[None, :] ** 2) > (extent[0] / 2) ** 2
    hu[outside] = -1024.0
    meta = {"sweep_angles": angles.tolist(), "fdk_grid": n_fdk, "source": "xray2xray infer",
            "prior": "mean training CT + residual" if prior is not None else "none"}
    return Volume(np.clip(hu, -1024.0, 3071.0).astype(np.float32), affine, meta)


def consistency_score(volume: Volume, model_input: ModelInput, sampling: ViewSampling) -> float:
    """NCC between the volume re-projected at 0 deg and the model's input, over the pixels the
    radiograph covered that show the patient (bright collimator bands left out,
    :attr:`~.domain.ModelInput.anatomy`): near 1 when the imagined 3D agrees with what was
    seen. One small view: the PyTorch renderer (same sums to float rounding) spares a fresh
    process numba's start-up."""
    drr = DRRRenderer(volume, "fast", "cpu", sampling.mu_water, engine="torch").render(
        isocentric_geometry(sampling, [0.0]))[0]
    m = model_input.anatomy
    return ncc(drr[m], model_input.image[m])


def apply_card_heads(model, card: Dict, image: torch.Tensor) -> Dict:
    """Risk and pathology scores from the probe heads in the card (None when absent).

    ``risk`` is the risk head's event probability; the Cox outputs (log hazard ratio,
    hazard ratio) go to ``risk_details``. Probabilities are calibrated when the heads carry
    a calibration (``calibrated``), unclipped; ``risk_logit`` and ``pathology_logits`` are
    their log-odds (what :func:`.trust.output_scores` keeps beside the clipped values)."""
    heads = card.get("heads") or {}
    out = {"risk": None, "pathologies": None, "risk_details": None, "risk_logit": None,
           "pathology_logits": None, "calibrated": False}
    if not heads:
        return out
    feats = extract_for_heads(model, image, heads)
    pred, logits = apply_heads(heads, feats), logistic_logits(heads, feats)
    first = lambda v: float(np.asarray(v).reshape(-1)[0])
    if "pathology" in pred:
        out["pathologies"] = {k: first(v) for k, v in pred["pathology"].items()}
        out["pathology_logits"] = logits.get("pathology")
    if "risk" in pred:
        risk = {k: first(v) for k, v in pred["risk"].items()}
        out["risk"] = risk.pop("event", None)
        out["risk_logit"] = logits.get("risk", {}).get("event")
        out["risk_details"] = risk or None
    out["calibrated"] = all("calibration" in h for e in heads.values() if isinstance(e, dict)
                            for h in e.get("heads", []) if h.get("kind") == "logistic")
    return out


def run_inference(radiograph: Radiograph, model=None, views: Sequence[float] = (90.0, 180.0, 270.0),
                  volume_size: int = 128, device="cpu", sweep_step: float = 15.0,
                  refine_iterations: int = 0,
                  prior: Optional[VolumePrior] = None, uncertainty: int = DEFAULT_PASSES,
                  progress: Optional[Progress] = None,
                  force_scores: bool = False) -> InferenceResult:
    """Predicted ``views`` (degrees), the reconstructed volume, the card's scores and the
    consistency score for one frontal radiograph. ``model``: anything
    :func:`load_inference_model` takes; ``prior``: the volume prior to reconstruct on
    (default: the model file's own, if it has one); ``uncertainty``: passes of the
    standard-deviation maps (0: none), ``progress(done, total)`` after each chunk of them;
    ``force_scores``: output the scores even when the trust verdict (:mod:`.trust`) says the
    input is out of distribution (they are then marked so)."""
    if volume_size < 16 or volume_size > 512:
        raise InputError(f"volume size must be between 16 and 512, got {volume_size}")
    check_sweep_step(sweep_step)        # bad arguments fail before any work
    uncertainty = check_passes(uncertainty)
    check_radiograph(radiograph)        # noise, blank, tiny: refused before the model loads
    t = {}
    t0 = time.perf_counter()
    model, card, path = load_inference_model(model, device)
    dev = next(model.parameters()).device
    t["load"] = time.perf_counter() - t0

    sampling = TrainConfig.from_dict(card["config"]).views
    t0 = time.perf_counter()
    mi = radiograph_input(radiograph, card)
    t["preprocess"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with torch.no_grad():
        x = torch.from_numpy(mi.image)[None, None].to(dev)
        state = model.encode(x, torch.zeros(1, device=dev))
    t["encode"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    view_angles = [float(a) for a in views]
    predicted = imagine_views(model, state, view_angles) if view_angles else \
        np.zeros((0, sampling.image_size, sampling.image_size), np.float32)
    t["views"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if prior is None:
        prior = VolumePrior.from_model_file(path, card)
    volume = reconstruct(model, state, sampling, volume_size, sweep_step,
                         refine_iterations=refine_iterations, prior=prior)
    t["reconstruct"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    scores = apply_card_heads(model, card, x)
    t["heads"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    consistency = consistency_score(volume, mi, sampling)
    t["consistency"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    trust = assess_trust(model, card, x, consistency, mi)
    t["trust"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    std = estimate_uncertainty(model, x, sampling, view_angles, volume, prior, uncertainty,
                               progress=progress) if uncertainty else None
    t["uncertainty"] = time.perf_counter() - t0
    t["total"] = sum(t.values())
    info = {"name": card.get("name", "unnamed"), "version": card.get("version"),
            "path": str(path) if path else None, "sha256": card.get("file_sha256"),
            "intended_use": (card.get("card") or {}).get("intended_use") or card.get("intended_use"),
            "disclaimer": card.get("disclaimer")}
    geometry = isocentric_geometry(sampling, view_angles) if view_angles else None
    return InferenceResult(predicted.astype(np.float32), view_angles, geometry, volume, mi,
                           consistency, scores, info, t, uncertainty=std, trust=trust,
                           force_scores=bool(force_scores))


def load_inference_model(spec, device="cpu"):
    """(model in eval mode, card with the file's SHA256, path) from a registry name, a model
    file, a checkpoint, ``None`` (the default model), or an already loaded
    ``(model, card[, path])``."""
    if isinstance(spec, tuple):
        model, card, *path = spec
        return model.eval(), card, (path[0] if path else None)
    path = resolve_model(spec)
    model, card = load_world_model(path, resolve_device(device))
    if path.is_file():
        card = dict(card, file_sha256=sha256_file(path))
    return model, card, path

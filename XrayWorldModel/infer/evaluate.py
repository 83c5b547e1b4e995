"""Scoring a trained model (any ``--model``: name, model file, checkpoint or run folder) on
held-out CTs: its predicted views (:func:`evaluate_model_views`, the scoring loop itself is
:mod:`XrayWorldModel.train.evaluate`), and its volume.

How much 3D does one frontal view give? The reconstructed volume against the true CT, next
to two baselines a volume from one view must beat: the mean training CT, and FDK of the one
frontal view copied to every angle of the sweep (mirrored on the far side, as the model's own
sweep is), which is what backprojection alone makes of one view.

The mean-CT baseline: the voxel-wise mean (HU) of the baseline CTs, each centred on the
isocentre as at training time and resampled trilinearly into the evaluation grid (the
reconstruction's ``volume_size``^3 grid over the field of view every view sees); scored, like
every volume, inside the cylinder inscribed in that grid. The baseline CTs are the
``--baseline-source`` when given, else up to 16 spread over the model's training source
(:func:`baseline_volumes`)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from skimage.metrics import structural_similarity

from ..config import TrainConfig
from ..data import PreprocessedCache, VolumeProvider, resolve_source
from ..drr import DRRRenderer
from ..errors import FileNotFoundInputError, InputError
from ..recon import fdk, mu_to_hu
from ..train.evaluate import evaluate_views, run_cache
from ..train.mean_views import MEAN_VIEW_CASES, MeanViews, spread, training_sample
from ..volume import Volume
from ..weights.loading import ModelRef, load_world_model
from .pipeline import isocentric_geometry, load_inference_model, reconstruct
from .prior import VolumePrior, centred, fov_grid, mean_volume, resample_like


#: Why a model file scores no mean view (the remedy named).
NO_MEAN_VIEWS = ("the model file carries no mean training views (export it again, or give "
                 "--baseline-source SOURCE to render them from those CTs)")


def view_baseline(ref: ModelRef, cfg: TrainConfig, angles: Sequence[float],
                  baseline_source: Optional[str] = None,
                  cache: Optional[PreprocessedCache] = None) -> Optional[MeanViews]:
    """The mean-view baseline of ``ref``: rendered from ``baseline_source`` when given; else
    the mean views a model file carries (None without them), or those of a checkpoint's
    training data."""
    if baseline_source:
        return MeanViews.from_source(baseline_source, cfg, angles, cache=cache)
    if ref.kind == "model file":
        return MeanViews.from_model_file(ref.path, ref.card)
    return MeanViews.from_training(cfg, angles, cache=cache)


def evaluate_model_views(ref: ModelRef, data: str, angles: Optional[Sequence[float]] = None,
                         context_angle: float = 0.0, limit: Optional[int] = None,
                         baseline_source: Optional[str] = None, cache_dir: Optional[str] = None,
                         device="cpu") -> Dict:
    """``eval-views``: PSNR/SSIM at each target angle of the views ``ref``'s model predicts
    from each CT's ``context_angle`` view, of the copied input view, and of the mean
    training view (:func:`view_baseline`; reported unavailable, with the reason, when there
    is none), with the model's identity."""
    model, card = load_world_model(ref.path, device)
    cfg = TrainConfig.from_dict(card["config"])
    angles = [float(a) for a in (angles or cfg.run.val_angles)]
    cache = run_cache(cfg, cache_dir) if ref.kind == "checkpoint" else \
        PreprocessedCache(Path(cache_dir) if cache_dir else None)
    mean = view_baseline(ref, cfg, angles, baseline_source, cache)
    result = evaluate_views(model, cfg, data, angles, mean, context_angle, limit, cache,
                            unavailable=NO_MEAN_VIEWS)
    return {**ref.identity(), **result}


def baseline_volumes(cfg: TrainConfig, source: Optional[str], cache: PreprocessedCache,
                     limit: int = MEAN_VIEW_CASES) -> List[Volume]:
    """The CTs of the mean-CT baseline, preprocessed as in training: up to ``limit`` spread
    over ``source`` when given, else over the training source of ``cfg``."""
    items = spread(resolve_source(source), limit) if source else training_sample(cfg, limit)[0]
    return read_volumes(items, cfg, cache)


def read_volumes(items, cfg: TrainConfig, cache: PreprocessedCache) -> List[Volume]:
    """The readable CTs of ``items``, preprocessed as ``cfg`` trains (unreadable: skipped)."""
    data = VolumeProvider(items, cache, cfg.data.preprocessing(), max(1, len(items)))
    got = [data.get(i, replace=False) for i in range(len(items))]
    return [g[0] for g in got if g is not None]


def evaluation_cylinder(shape) -> np.ndarray:
    n = shape[0]
    c = (np.arange(n) - (n - 1) / 2) / n
    inside = (c[:, None] ** 2 + c[None, :] ** 2) <= 0.25
    return np.broadcast_to(inside[:, :, None], shape)


def volume_scores(pred: np.ndarray, true: np.ndarray, mask: np.ndarray) -> Dict[str, float]:
    """Pearson r inside ``mask`` and SSIM (3D, HU clipped to -1000..1000) of two volumes."""
    p, t = pred[mask].astype(np.float64), true[mask].astype(np.float64)
    r = float(np.corrcoef(p, t)[0, 1]) if p.std() > 0 and t.std() > 0 else 0.0
    a = np.clip(np.where(mask, pred, -1000.0), -1000, 1000)
    b = np.clip(np.where(mask, true, -1000.0), -1000, 1000)
    s = float(structural_similarity(b, a, data_range=2000.0))
    return {"pearson_r": r, "ssim": s}


def paired_difference(a: Sequence[float], b: Sequence[float], n_boot: int = 2000,
                      seed: int = 0) -> Dict[str, float]:
    """Mean of ``a - b`` over paired cases with a bootstrap 95% CI and the number of wins."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), (n_boot, len(d)))].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"mean": float(d.mean()), "ci95": [float(lo), float(hi)], "wins": int((d > 0).sum()),
            "n": int(len(d))}


#: Phantoms (seeds 7000-7015) on which a model's use of its volume prior is decided; no
#: reported figure uses them (:mod:`.prior`).
PRIOR_VALIDATION_SOURCE = "phantom:16:7000"


def encoded_frontal(model, vol: Volume, sampling, dev):
    """``vol`` centred on the isocentre, its frontal DRR, and the model's state from it."""
    c = centred(vol)            # the CT centred on the isocentre, as at training time
    frontal = DRRRenderer(c, "fast", "cpu", sampling.mu_water).render(
        isocentric_geometry(sampling, [0.0]))[0]
    state = model.encode(torch.from_numpy(frontal)[None, None].to(dev), torch.zeros(1, device=dev))
    return c, frontal, state


@torch.no_grad()
def prior_validation(model, sampling, prior: VolumePrior, volumes: Sequence[Volume],
                     source: str, volume_size: int = 64, sweep_step: float = 15.0) -> Dict:
    """Does reconstructing on ``prior`` beat FDK of the imagined views alone on ``volumes``
    (validation CTs, never the ones reported)? Mean Pearson r of both, and ``used``: True
    only when the prior's is higher."""
    dev = next(model.parameters()).device
    on_prior, alone = [], []
    for vol in volumes:
        c, _, state = encoded_frontal(model, vol, sampling, dev)
        plain = reconstruct(model, state, sampling, volume_size, sweep_step)
        with_prior = reconstruct(model, state, sampling, volume_size, sweep_step, prior=prior)
        true, mask = resample_like(c, plain), evaluation_cylinder(plain.shape)
        alone.append(volume_scores(plain.array, true, mask)["pearson_r"])
        on_prior.append(volume_scores(with_prior.array, true, mask)["pearson_r"])
    r_prior, r_alone = float(np.mean(on_prior)), float(np.mean(alone))
    return {"source": source, "n_ct": len(volumes), "r_on_prior": r_prior,
            "r_views_only": r_alone, "used": r_prior > r_alone}


@torch.no_grad()
def evaluate_volumes(model, card: Dict, volumes: Sequence[Volume], train_volumes: Sequence[Volume],
                     volume_size: int = 64, sweep_step: float = 15.0,
                     refine_iterations: int = 0, prior: Optional[VolumePrior] = None,
                     use_prior: bool = True, mean_from_prior: bool = False) -> Dict:
    """Mean Pearson r and SSIM over ``volumes`` (HU, held out) of

    * ``world_model``: the volume :func:`reconstruct` makes from the frontal DRR on top of
      ``prior`` (default: the mean of ``train_volumes``, as the model file's prior is made),
      or, with ``use_prior`` False (a model whose validation found its prior no help), of
      the imagined views alone, as ``infer`` then makes it;
    * ``world_model_on_prior``: the volume on ``prior``, whether the model uses it or not;
    * ``world_model_fdk_only``: FDK of the same imagined views with no prior;
    * ``mean_ct``: the mean of ``train_volumes``, or ``prior`` itself with
      ``mean_from_prior`` (a model file whose training CTs are not at hand: its prior is the
      mean of its training CTs, centred the same way);
    * ``copied_frontal_fdk``: FDK of the frontal view copied to every angle;

    and the per-CT difference in r of ``world_model`` against ``mean_ct`` with a bootstrap
    CI (the claim to test: does the imagined sweep add anything to the average chest?)."""
    sampling = TrainConfig.from_dict(card["config"]).views
    dev = next(model.parameters()).device
    n_fdk = min(volume_size, sampling.image_size)
    if prior is None:
        prior = VolumePrior.from_volumes(train_volumes, isocentric_geometry(sampling, [0.0]),
                                         n_fdk, source=f"mean of {len(train_volumes)} training CTs")
    rows = {"world_model": [], "world_model_on_prior": [], "world_model_fdk_only": [],
            "mean_ct": [], "copied_frontal_fdk": []}
    mean_ct = None
    angles = np.arange(0.0, 360.0, sweep_step)
    g = isocentric_geometry(sampling, angles)
    for vol in volumes:
        c, frontal, state = encoded_frontal(model, vol, sampling, dev)
        on_prior = reconstruct(model, state, sampling, volume_size, sweep_step,
                               refine_iterations=refine_iterations, prior=prior)
        plain = reconstruct(model, state, sampling, volume_size, sweep_step,
                            refine_iterations=refine_iterations)
        pred = on_prior if use_prior else plain
        true = resample_like(c, pred)
        mask = evaluation_cylinder(pred.shape)
        if mean_ct is None:
            mean_ct = (resample_like(prior.volume(sampling), pred) if mean_from_prior
                       else mean_volume(train_volumes, pred))
        copied = np.repeat(frontal[None], len(angles), axis=0)
        copied[np.abs((angles + 180) % 360 - 180) > 90] = frontal[:, ::-1]
        mu = fdk(copied, g, like=fov_grid(g, n_fdk))
        naive = resample_like(Volume(mu_to_hu(mu.array, sampling.mu_water).astype(np.float32),
                                     mu.affine), pred)
        rows["world_model"].append(volume_scores(pred.array, true, mask))
        rows["world_model_on_prior"].append(volume_scores(on_prior.array, true, mask))
        rows["world_model_fdk_only"].append(volume_scores(plain.array, true, mask))
        rows["mean_ct"].append(volume_scores(mean_ct, true, mask))
        rows["copied_frontal_fdk"].append(volume_scores(naive, true, mask))
    out = {name: {k: float(np.mean([r[k] for r in vals])) for k in ("pearson_r", "ssim")}
           for name, vals in rows.items()}
    out["world_model_vs_mean_ct"] = {
        k: paired_difference([r[k] for r in rows["world_model"]], [r[k] for r in rows["mean_ct"]])
        for k in ("pearson_r", "ssim")}
    return out | {"n_ct": len(volumes), "volume_size": volume_size, "sweep_step": sweep_step,
                  "refine_iterations": refine_iterations,
                  "prior": {**prior.card_entry(), "used": bool(use_prior)}}


def evaluate_model_volume(ref: ModelRef, data: str, limit: Optional[int] = None,
                          volume_size: int = 64, sweep_step: float = 15.0, refine: int = 0,
                          baseline_source: Optional[str] = None,
                          cache_dir: Optional[str] = None, device="cpu") -> Dict:
    """``eval-volume``: :func:`evaluate_volumes` of ``ref``'s model on the CTs of ``data``,
    reconstructed as ``infer`` would: on the model file's own volume prior when its card
    marks it used. A checkpoint has none: its prior is the mean of the baseline CTs, used or
    not as :func:`prior_validation` on :data:`PRIOR_VALIDATION_SOURCE` decides, which is how a
    model file built from it would decide. Scored against the mean of the baseline CTs
    (:func:`baseline_volumes`)."""
    model, card, path = load_inference_model(ref.path, device)
    cfg = TrainConfig.from_dict(card["config"])
    cache = PreprocessedCache(Path(cache_dir) if cache_dir else None)
    held_out = read_volumes(resolve_source(data)[: limit or None], cfg, cache)
    if not held_out:
        raise InputError(f"none of the CTs of {data!r} could be read")
    prior = VolumePrior.from_model_file(path, card, include_unused=True)
    mean_from_prior = baseline_source is None and prior is not None and not training_data_at_hand(cfg)
    if mean_from_prior:     # a shipped model away from its training CTs: its prior is their mean
        train, what = [], f"the model file's volume prior ({prior.source})"
    else:
        train = baseline_volumes(cfg, baseline_source, cache)
        what = baseline_source or f"training data {cfg.data.source}"
    if prior is None:
        prior = VolumePrior.from_volumes(train, isocentric_geometry(cfg.views, [0.0]),
                                         min(volume_size, cfg.views.image_size),
                                         source=f"mean of {len(train)} CTs of {what}")
        validation = read_volumes(resolve_source(PRIOR_VALIDATION_SOURCE), cfg, cache)
        prior.validation = prior_validation(model, cfg.views, prior, validation,
                                            PRIOR_VALIDATION_SOURCE, volume_size, sweep_step)
        prior.used = prior.validation["used"]
    result = evaluate_volumes(model, card, held_out, train, volume_size, sweep_step, refine,
                              prior=prior, use_prior=prior.used, mean_from_prior=mean_from_prior)
    n_ct = prior.n_volumes if mean_from_prior else len(train)
    return {**ref.identity(), "data": data, **result,
            "mean_ct_source": {"source": what, "n_ct": n_ct}}


def training_data_at_hand(cfg: TrainConfig) -> bool:
    """Whether the training source of ``cfg`` names files that exist here (generated
    phantoms always do; a model file's CT manifests usually do not away from where it was
    trained)."""
    try:
        resolve_source(cfg.data.source)
    except FileNotFoundInputError:
        return False
    return True

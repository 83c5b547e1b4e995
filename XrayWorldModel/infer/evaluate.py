"""How much 3D does one frontal view give? The reconstructed volume against the true CT, next
to two baselines a volume from one view must beat: the mean training CT, and FDK of the one
frontal view copied to every angle of the sweep (mirrored on the far side, as the model's own
sweep is), which is what backprojection alone makes of one view."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch
from skimage.metrics import structural_similarity

from ..config import TrainConfig
from ..drr import DRRRenderer
from ..recon import fdk, mu_to_hu
from ..volume import Volume
from .pipeline import isocentric_geometry, reconstruct
from .prior import VolumePrior, centred, fov_grid, resample_like


def _cylinder(shape) -> np.ndarray:
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


@torch.no_grad()
def evaluate_volumes(model, card: Dict, volumes: Sequence[Volume], train_volumes: Sequence[Volume],
                     volume_size: int = 64, sweep_step: float = 15.0,
                     refine_iterations: int = 0, prior: Optional[VolumePrior] = None) -> Dict:
    """Mean Pearson r and SSIM over ``volumes`` (HU, held out) of

    * ``world_model``: the volume :func:`reconstruct` makes from the frontal DRR on top of
      ``prior`` (default: the mean of ``train_volumes``, as the model file's prior is made);
    * ``world_model_fdk_only``: FDK of the same imagined views with no prior;
    * ``mean_ct``: the mean of ``train_volumes``;
    * ``copied_frontal_fdk``: FDK of the frontal view copied to every angle;

    and the per-CT difference in r of ``world_model`` against ``mean_ct`` with a bootstrap
    CI (the claim to test: does the imagined sweep add anything to the average chest?)."""
    sampling = TrainConfig.from_dict(card["config"]).views
    dev = next(model.parameters()).device
    n_fdk = min(volume_size, sampling.image_size)
    if prior is None:
        prior = VolumePrior.from_volumes(train_volumes, isocentric_geometry(sampling, [0.0]),
                                         n_fdk, source=f"mean of {len(train_volumes)} training CTs")
    rows = {"world_model": [], "world_model_fdk_only": [], "mean_ct": [],
            "copied_frontal_fdk": []}
    mean_ct = None
    angles = np.arange(0.0, 360.0, sweep_step)
    g = isocentric_geometry(sampling, angles)
    for vol in volumes:
        c = centred(vol)            # the CT centred on the isocentre, as at training time
        frontal = DRRRenderer(c, "fast", "cpu", sampling.mu_water).render(
            isocentric_geometry(sampling, [0.0]))[0]
        x = torch.from_numpy(frontal)[None, None].to(dev)
        state = model.encode(x, torch.zeros(1, device=dev))
        pred = reconstruct(model, state, sampling, volume_size, sweep_step,
                           refine_iterations=refine_iterations, prior=prior)
        plain = reconstruct(model, state, sampling, volume_size, sweep_step,
                            refine_iterations=refine_iterations)
        true = resample_like(c, pred)
        mask = _cylinder(pred.shape)
        if mean_ct is None:
            total = np.zeros(pred.shape, np.float64)
            for tv in train_volumes:
                total += resample_like(centred(tv), pred)
            mean_ct = (total / len(train_volumes)).astype(np.float32)
        copied = np.repeat(frontal[None], len(angles), axis=0)
        copied[np.abs((angles + 180) % 360 - 180) > 90] = frontal[:, ::-1]
        mu = fdk(copied, g, like=fov_grid(g, n_fdk))
        naive = resample_like(Volume(mu_to_hu(mu.array, sampling.mu_water).astype(np.float32),
                                     mu.affine), pred)
        rows["world_model"].append(volume_scores(pred.array, true, mask))
        rows["world_model_fdk_only"].append(volume_scores(plain.array, true, mask))
        rows["mean_ct"].append(volume_scores(mean_ct, true, mask))
        rows["copied_frontal_fdk"].append(volume_scores(naive, true, mask))
    out = {name: {k: float(np.mean([r[k] for r in vals])) for k in ("pearson_r", "ssim")}
           for name, vals in rows.items()}
    out["world_model_vs_mean_ct"] = {
        k: paired_difference([r[k] for r in rows["world_model"]], [r[k] for r in rows["mean_ct"]])
        for k in ("pearson_r", "ssim")}
    return out | {"n_ct": len(volumes), "volume_size": volume_size, "sweep_step": sweep_step,
                  "refine_iterations": refine_iterations, "prior": prior.card_entry()}

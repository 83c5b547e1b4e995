"""Novel-view quality: PSNR and SSIM of a predicted DRR against the true one, and the two
baselines a world model must beat (copy the input view; the mean training view)."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch
from skimage.metrics import structural_similarity

from ..data import ViewSampling
from ..drr import DRRRenderer
from ..volume import Volume


def psnr(pred: np.ndarray, true: np.ndarray) -> float:
    """PSNR (dB) with the true image's value range as the peak."""
    rng = float(true.max() - true.min()) or 1.0
    mse = float(np.mean((pred.astype(np.float64) - true) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(rng ** 2 / mse)


def ssim(pred: np.ndarray, true: np.ndarray) -> float:
    rng = float(true.max() - true.min()) or 1.0
    return float(structural_similarity(true.astype(np.float64), pred.astype(np.float64),
                                       data_range=rng))


def clean_sampling(s: ViewSampling) -> ViewSampling:
    """The same views without augmentation, for evaluation."""
    from dataclasses import replace
    return replace(s, tilt_max_deg=0.0, shift_max_mm=0.0, intensity_jitter=0.0, noise_std=0.0)


def render_views(volumes: Sequence[Volume], sampling: ViewSampling, angles, device=None) -> np.ndarray:
    """True DRRs [N, A, H, W] of each volume at ``angles`` (no augmentation)."""
    s = clean_sampling(sampling)
    out = [DRRRenderer(v, "fast", device, s.mu_water).render(s.geometry(angles, 0.0, v.center))
           for v in volumes]
    return np.stack(out)


@torch.no_grad()
def evaluate_views(model, volumes: Sequence[Volume], sampling: ViewSampling,
                   target_angles: Sequence[float], mean_views: Dict[float, np.ndarray],
                   context_angle: float = 0.0, device=None) -> Dict[str, Dict[str, float]]:
    """For each target angle: mean PSNR/SSIM over ``volumes`` of the world model's view
    predicted from the ``context_angle`` view, of the copied input view, and of the mean
    training view at that angle."""
    angles = [context_angle] + [float(a) for a in target_angles]
    true = render_views(volumes, sampling, angles, device)          # [N, 1+T, H, W]
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    ctx = torch.from_numpy(true[:, :1]).to(dev)                      # [N, 1, H, W]
    result = {}
    for t, angle in enumerate(angles[1:], start=1):
        pred = model.predict_view(ctx, torch.full((len(volumes),), context_angle, device=dev),
                                  torch.full((len(volumes),), angle, device=dev)).float().cpu().numpy()[:, 0]
        rows = {"world_model": [], "copy_input": [], "mean_view": []}
        for n in range(len(volumes)):
            truth = true[n, t]
            for name, img in (("world_model", pred[n]), ("copy_input", true[n, 0]),
                              ("mean_view", mean_views[angle])):
                rows[name].append((psnr(img, truth), ssim(img, truth)))
        result[f"{angle:g}"] = {f"{name}_{m}": float(np.mean([r[i] for r in vals]))
                                for name, vals in rows.items() for i, m in enumerate(("psnr", "ssim"))}
    model.train(was_training)
    return result

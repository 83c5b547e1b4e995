"""Novel-view quality: PSNR and SSIM of a predicted DRR against the true one, and the two
baselines a world model must beat (copy the input view; the mean training view)."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch

from ..data import ViewSampling
from ..data.views import clean_sampling, render_views  # noqa: F401  (re-exported)
from ..metrics import psnr, ssim  # noqa: F401  (re-exported)
from ..volume import Volume


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

"""How much 3D does one frontal view give? The reconstructed volume against the true CT, next
to two baselines a volume from one view must beat: the mean training CT, and FDK of the one
frontal view copied to every angle of the sweep (mirrored on the far side, as the model's own
sweep is), which is what backprojection alone makes of one view."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from skimage.metrics import structural_similarity

from ..volume import Volume
from .pipeline import _geometry, reconstruct


def resample_like(volume: Volume, like: Volume, fill: float = -1024.0) -> np.ndarray:
    """``volume`` (HU) resampled trilinearly onto ``like``'s grid (both LPS)."""
    from ..data.cache import _to_sitk
    src = _to_sitk(volume)
    ref = _to_sitk(Volume(np.zeros(like.shape, np.float32), like.affine))
    out = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, float(fill))
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0).astype(np.float32)


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


@torch.no_grad()
def evaluate_volumes(model, card: Dict, volumes: Sequence[Volume], train_volumes: Sequence[Volume],
                     volume_size: int = 64, sweep_step: float = 15.0,
                     refine_iterations: int = 0) -> Dict:
    """Mean Pearson r and SSIM over ``volumes`` (HU, held out) of the world model's volume from
    the frontal DRR, of the mean of ``train_volumes``, and of the copied-frontal FDK."""
    from ..drr import DRRRenderer
    from ..recon import fdk, mu_to_hu
    from ..train.config import TrainConfig
    sampling = TrainConfig.from_dict(card["config"]).views
    dev = next(model.parameters()).device
    rows = {"world_model": [], "mean_ct": [], "copied_frontal_fdk": []}
    mean_ct = None
    for vol in volumes:
        # the phantom centred on the isocentre, as at training time
        centred = Volume(vol.array, vol.affine.copy())
        centred.affine[:3, 3] -= vol.center
        frontal = DRRRenderer(centred, "fast", "cpu", sampling.mu_water).render(
            _geometry(sampling, [0.0]))[0]
        x = torch.from_numpy(frontal)[None, None].to(dev)
        state = model.encode(x, torch.zeros(1, device=dev))
        pred = reconstruct(model, state, sampling, volume_size, sweep_step,
                           refine_iterations=refine_iterations)
        true = resample_like(centred, pred)
        mask = _cylinder(pred.shape)
        if mean_ct is None:
            stack = []
            for tv in train_volumes:
                c = Volume(tv.array, tv.affine.copy())
                c.affine[:3, 3] -= tv.center
                stack.append(resample_like(c, pred))
            mean_ct = np.mean(stack, axis=0)
        angles = np.arange(0.0, 360.0, sweep_step)
        g = _geometry(sampling, angles)
        n = min(volume_size, sampling.image_size)
        copied = np.repeat(frontal[None], len(angles), axis=0)
        copied[np.abs((angles + 180) % 360 - 180) > 90] = frontal[:, ::-1]
        extent = np.asarray(pred.spacing) * volume_size
        mu = fdk(copied, g, shape=(n,) * 3, spacing=extent / n)
        naive = resample_like(Volume(mu_to_hu(mu.array, sampling.mu_water).astype(np.float32),
                                     mu.affine), pred)
        rows["world_model"].append(volume_scores(pred.array, true, mask))
        rows["mean_ct"].append(volume_scores(mean_ct, true, mask))
        rows["copied_frontal_fdk"].append(volume_scores(naive, true, mask))
    return {name: {k: float(np.mean([r[k] for r in vals])) for k in ("pearson_r", "ssim")}
            for name, vals in rows.items()} | {"n_ct": len(volumes), "volume_size": volume_size,
                                               "sweep_step": sweep_step,
                                               "refine_iterations": refine_iterations}

"""Novel-view evaluation: the one scoring loop (PSNR/SSIM of the world model's predicted view
against the true one, next to the two baselines a world model must beat: copy the input
view, and the mean training view), over any :class:`~XrayWorldModel.data.ViewSource` - CTs
rendered on the fly or stored DRR stacks - and its use on a trained checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from ..config import TrainConfig
from ..data import (DRRStackSet, PreprocessedCache, RenderedViewSet, TrueViews, ViewSource,
                    VolumeProvider, is_stack_source, resolve_source)
from ..metrics import psnr, ssim
from ..models import WorldModel
from .checkpoint import load_checkpoint, load_model_tensors

#: The methods scored at each target angle, in the order of the result keys.
SCORED = ("world_model", "copy_input", "mean_view")


def load_world_model(spec, device="cpu"):
    """(model in eval mode, its TrainConfig, card) from a checkpoint file or run folder."""
    tensors, card, _ = load_checkpoint(spec)
    cfg = TrainConfig.from_dict(card["config"])
    model = WorldModel(cfg.model)
    load_model_tensors(model, None, tensors, spec)
    return model.to(device).eval(), cfg, card


@torch.no_grad()
def score_true_views(model, true: TrueViews, target_angles: Sequence[float],
                     mean_views: Dict[float, np.ndarray]) -> Dict[str, Dict[str, float]]:
    """For each target angle (``true`` holds the context view, then one view per angle):
    mean PSNR/SSIM over the cases of the world model's view predicted from the context view,
    of the copied context view and of ``mean_views[angle]``. The model is given the views'
    actual angles."""
    targets = [float(a) for a in target_angles]
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    ctx = torch.from_numpy(true.views[:, :1]).to(dev)                # [N, 1, H, W]
    a0 = torch.as_tensor(true.angles[:, 0], dtype=torch.float32, device=dev)
    result = {}
    try:
        for t, angle in enumerate(targets, start=1):
            at = torch.as_tensor(true.angles[:, t], dtype=torch.float32, device=dev)
            pred = model.predict_view(ctx, a0, at).float().cpu().numpy()[:, 0]
            rows = {name: [] for name in SCORED}
            for n in range(len(true)):
                truth = true.views[n, t]
                for name, img in zip(SCORED, (pred[n], true.views[n, 0], mean_views[angle])):
                    rows[name].append((psnr(img, truth), ssim(img, truth)))
            result[f"{angle:g}"] = {f"{name}_{m}": float(np.mean([r[i] for r in vals]))
                                    for name, vals in rows.items()
                                    for i, m in enumerate(("psnr", "ssim"))}
    finally:
        model.train(was_training)
    return result


def score_views(model, source: ViewSource, target_angles: Sequence[float],
                mean_views: Dict[float, np.ndarray],
                context_angle: float = 0.0) -> Dict[str, Dict[str, float]]:
    """:func:`score_true_views` on ``source``'s views at ``context_angle`` and
    ``target_angles``: ``{"90": {"world_model_psnr": ..., "copy_input_ssim": ...}}``."""
    targets = [float(a) for a in target_angles]
    return score_true_views(model, source.true_views(context_angle, targets), targets,
                            mean_views)


def open_views(items, stacks: bool, sampling, memory: int, cache=None, prep=None,
               device=None) -> ViewSource:
    """The :class:`~XrayWorldModel.data.ViewSource` of ``items``: DRR stacks (a source or
    stack items) or CTs (``CTItem`` s, preprocessed through ``cache``) rendered on ``device``."""
    if stacks:
        return DRRStackSet(items, sampling, memory)
    return RenderedViewSet(VolumeProvider(items, cache, prep, memory), sampling, device)


def evaluate_checkpoint(spec, source: str, angles: Optional[Sequence[float]] = None,
                        context_angle: float = 0.0, limit: Optional[int] = None,
                        cache_dir: Optional[str] = None, device="cpu") -> Dict:
    """JSON-ready results: per target angle the model's and the baselines' PSNR/SSIM."""
    model, cfg, card = load_world_model(spec, device)
    angles = [float(a) for a in (angles or cfg.run.val_angles)]
    cache = PreprocessedCache(Path(cache_dir) if cache_dir else
                              (Path(cfg.data.cache_dir) if cfg.data.cache_dir else None))
    prep = cfg.data.preprocessing()
    # the mean-view baseline comes from the training data, stacks or CTs
    train_stacks = is_stack_source(cfg.data.source)
    train_items = cfg.data.source if train_stacks else resolve_source(cfg.data.source)[:16]
    train = open_views(train_items, train_stacks, cfg.views, 64 if train_stacks else 16,
                       cache, prep)
    mean = train.mean_views(angles, 16)
    stacks = is_stack_source(source)
    items = source if stacks else resolve_source(source)[: limit or None]
    true = open_views(items, stacks, cfg.views, 64 if stacks else len(items), cache,
                      prep).true_views(context_angle, angles)
    results = score_true_views(model, true, angles, mean)
    return {"checkpoint": str(spec), "sha256": card["sha256"], "step": card["step"],
            "data": source, "n_ct": len(true), "context_angle": context_angle,
            "angles": results}


__all__ = ["SCORED", "evaluate_checkpoint", "load_world_model", "open_views", "score_true_views",
           "score_views"]

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
from .mean_views import MeanViews

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
    of the copied context view and of ``mean_views[angle]`` (``None`` where ``mean_views``
    has no view at that angle). The model is given the views' actual angles."""
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
            names = SCORED if angle in mean_views else SCORED[:2]
            rows = {name: [] for name in SCORED}
            for n in range(len(true)):
                truth = true.views[n, t]
                for name, img in zip(names, (pred[n], true.views[n, 0], mean_views.get(angle))):
                    rows[name].append((psnr(img, truth), ssim(img, truth)))
            result[f"{angle:g}"] = {f"{name}_{m}": float(np.mean([r[i] for r in vals]))
                                    if vals else None
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


def mean_view_note(mean: Optional[MeanViews], angles: Sequence[float],
                   unavailable: str = "") -> Dict:
    """What the mean-view baseline of a result is: its source and case count, or why it is
    unavailable (``unavailable``; or the angles ``mean`` lacks)."""
    if mean is None:
        return {"available": False, "reason": unavailable or "no mean training views"}
    note = {"available": True, "source": mean.source, "n_cases": mean.n_cases}
    missing = mean.missing(angles)
    if missing:
        note["missing_angles"] = missing
    return note


def evaluate_views(model, cfg: TrainConfig, source: str, angles: Sequence[float],
                   mean: Optional[MeanViews], context_angle: float = 0.0,
                   limit: Optional[int] = None, cache: Optional[PreprocessedCache] = None,
                   device=None, unavailable: str = "") -> Dict:
    """JSON-ready results of ``model`` (trained as ``cfg`` says) on the CTs or DRR stacks of
    ``source``: per target angle its PSNR/SSIM and the baselines', the mean-view baseline
    from ``mean`` (None: reported unavailable, for the reason ``unavailable``)."""
    angles = [float(a) for a in angles]
    stacks = is_stack_source(source)
    items = source if stacks else resolve_source(source)[: limit or None]
    true = open_views(items, stacks, cfg.views, 64 if stacks else len(items),
                      cache or PreprocessedCache(), cfg.data.preprocessing(),
                      device).true_views(context_angle, angles)
    means = mean.at(angles) if mean is not None else {}
    results = score_true_views(model, true, angles, means)
    return {"data": source, "n_ct": len(true), "context_angle": context_angle,
            "mean_view": mean_view_note(mean, angles, unavailable), "angles": results}


def run_cache(cfg: TrainConfig, cache_dir: Optional[str] = None) -> PreprocessedCache:
    """The preprocessed-CT cache: ``cache_dir``, else the run's own when it exists on this
    machine, else the user cache."""
    if cache_dir:
        return PreprocessedCache(Path(cache_dir))
    own = Path(cfg.data.cache_dir) if cfg.data.cache_dir else None
    return PreprocessedCache(own if own is not None and own.is_dir() else None)


def evaluate_checkpoint(spec, source: str, angles: Optional[Sequence[float]] = None,
                        context_angle: float = 0.0, limit: Optional[int] = None,
                        cache_dir: Optional[str] = None, device="cpu") -> Dict:
    """JSON-ready results of a checkpoint: per target angle the model's and the baselines'
    PSNR/SSIM, the mean view from the run's training data."""
    model, cfg, card = load_world_model(spec, device)
    angles = [float(a) for a in (angles or cfg.run.val_angles)]
    cache = run_cache(cfg, cache_dir)
    mean = MeanViews.from_training(cfg, angles, cache=cache)
    result = evaluate_views(model, cfg, source, angles, mean, context_angle, limit, cache)
    return {"checkpoint": str(spec), "sha256": card["sha256"], "step": card["step"], **result}


__all__ = ["SCORED", "evaluate_checkpoint", "evaluate_views", "load_world_model", "mean_view_note",
           "open_views", "run_cache", "score_true_views", "score_views"]

"""Evaluate a trained checkpoint on held-out CTs: novel-view PSNR/SSIM from the frontal
view against the true DRR, next to the copy-input and mean-training-view baselines."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence


from ..data import PreprocessedCache, resolve_source
from ..models import WorldModel
from .checkpoint import load_checkpoint
from ..config import TrainConfig
from ..data.views import render_views
from .metrics import evaluate_views
from ..data.cache import VolumeProvider
from .trainer import load_model_tensors


def load_world_model(spec, device="cpu"):
    """(model in eval mode, its TrainConfig, card) from a checkpoint file or run folder."""
    tensors, card, _ = load_checkpoint(spec)
    cfg = TrainConfig.from_dict(card["config"])
    model = WorldModel(cfg.model)
    load_model_tensors(model, None, tensors, spec)
    return model.to(device).eval(), cfg, card


def evaluate_checkpoint(spec, source: str, angles: Optional[Sequence[float]] = None,
                        context_angle: float = 0.0, limit: Optional[int] = None,
                        cache_dir: Optional[str] = None, device="cpu") -> Dict:
    """JSON-ready results: per target angle the model's and the baselines' PSNR/SSIM."""
    model, cfg, card = load_world_model(spec, device)
    angles = [float(a) for a in (angles or cfg.run.val_angles)]
    from ..data.stacks import DRRStackSet, evaluate_stacks, is_stack_source, mean_stack_views
    cache = PreprocessedCache(Path(cache_dir) if cache_dir else
                              (Path(cfg.data.cache_dir) if cfg.data.cache_dir else None))
    prep = cfg.data.preprocessing()
    # the mean-view baseline comes from the training data, stacks or CTs
    if is_stack_source(cfg.data.source):
        mean = mean_stack_views(DRRStackSet(cfg.data.source, cfg.views), angles, 16)
    else:
        train_items = resolve_source(cfg.data.source)[:16]
        train = VolumeProvider(train_items, cache, prep, len(train_items))
        train_vols = [train.get(i)[0] for i in range(len(train_items))]
        views = render_views(train_vols, cfg.views, angles).mean(0)
        mean = {a: views[k] for k, a in enumerate(angles)}
    if is_stack_source(source):
        stacks = DRRStackSet(source, cfg.views)
        n = len(stacks)
        results = evaluate_stacks(model, stacks, angles, mean, context_angle)
    else:
        items = resolve_source(source)[: limit or None]
        data = VolumeProvider(items, cache, prep, len(items))
        vols = [data.get(i)[0] for i in range(len(items)) if i not in data.bad]
        n = len(vols)
        results = evaluate_views(model, vols, cfg.views, angles, mean, context_angle)
    return {"checkpoint": str(spec), "sha256": card["sha256"], "step": card["step"],
            "data": source, "n_ct": n, "context_angle": context_angle,
            "angles": results}

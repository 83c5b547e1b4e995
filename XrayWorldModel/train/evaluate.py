"""Evaluate a trained checkpoint on held-out CTs: novel-view PSNR/SSIM from the frontal
view against the true DRR, next to the copy-input and mean-training-view baselines."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from ..data import PreprocessedCache, resolve_source
from ..models import WorldModel, WorldModelConfig
from .checkpoint import load_checkpoint
from .config import TrainConfig
from .metrics import evaluate_views, render_views
from .trainer import VolumeProvider, load_model_tensors


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
    cache = PreprocessedCache(Path(cache_dir) if cache_dir else
                              (Path(cfg.data.cache_dir) if cfg.data.cache_dir else None))
    prep = cfg.data.preprocessing()
    items = resolve_source(source)[: limit or None]
    data = VolumeProvider(items, cache, prep, len(items))
    vols = [data.get(i)[0] for i in range(len(items)) if i not in data.bad]
    train_items = resolve_source(cfg.data.source)[:16]
    train = VolumeProvider(train_items, cache, prep, len(train_items))
    train_vols = [train.get(i)[0] for i in range(len(train_items))]
    mean = render_views(train_vols, cfg.views, angles).mean(0)
    results = evaluate_views(model, vols, cfg.views, angles,
                             {a: mean[k] for k, a in enumerate(angles)}, context_angle)
    return {"checkpoint": str(spec), "sha256": card["sha256"], "step": card["step"],
            "data": source, "n_ct": len(vols), "context_angle": context_angle,
            "angles": results}

"""Frozen world-model features for probes.

The feature vector of a radiograph is the mean over tokens of its encoded state (the
observed view) followed, for each *imagined* angle, by the mean over tokens of the state
after one ``model.step`` from the observed angle to that angle (the shortest rotation, as
:meth:`WorldModel.predict_view` takes it): ``[mean(z_obs), mean(z_90), ...]``, length
``embed_dim * (1 + len(imagined))``. Imagined views are where the volumetric context
enters: the transition model must know what the projection hides to rotate it.

Images come in as DRR line integrals at the model's image size. :func:`extract_features`
works on any such images (real radiographs once preprocessed into the model's domain);
:func:`render_frontal_views` makes them from CTs with the model's own view settings, so
``xray2xray probe --data SOURCE`` works from CTs.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch

from ..config import TrainConfig
from ..console import progress_bar
from ..data import PreprocessedCache
from ..data.views import render_views
from ..errors import InputError, XrayWorldModelError
from ..models.encoder import as_batch
from .heads import apply_heads

DEFAULT_IMAGINED = (90.0,)


class CTSkippedWarning(UserWarning):
    """A CT that could not be read or rendered; it is left out of the probe."""


def feature_spec(model, angle: float = 0.0, imagined: Sequence[float] = DEFAULT_IMAGINED
                 ) -> Dict[str, Any]:
    """How features were made, stored with the heads so inference makes the same ones."""
    imagined = [float(a) for a in imagined]
    dim = int(model.config.embed_dim)
    return {"angle": float(angle), "imagined": imagined, "pooling": "mean",
            "embed_dim": dim, "n_features": dim * (1 + len(imagined))}


def extract_features(model, images, angle=0.0, imagined: Sequence[float] = DEFAULT_IMAGINED,
                     batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """Features [B, F] of ``images`` ([B, 1, H, W] or [B, H, W], DRR units, at the model's
    image size) seen at ``angle`` degrees (a scalar or one per image): the token-mean of the
    encoded state, then the token-mean of the state stepped to each ``imagined`` angle
    (absolute degrees; 90 = left lateral). Batched, without gradients, in eval mode."""
    x = images.detach().float().cpu() if isinstance(images, torch.Tensor) else \
        torch.as_tensor(np.asarray(images, dtype=np.float32))
    if x.ndim == 3:
        x = x[:, None]
    size = int(model.config.image_size)
    if x.ndim != 4 or x.shape[1] != 1 or tuple(x.shape[2:]) != (size, size):
        raise InputError(f"images must be [B, 1, {size}, {size}] for this model, got "
                         f"{tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise InputError("images hold NaN or infinite values")
    n = x.shape[0]
    angles = torch.as_tensor(np.broadcast_to(np.asarray(angle, dtype=np.float32), (n,)).copy())
    imagined = [float(a) for a in imagined]
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            starts = range(0, n, max(1, int(batch_size)))
            for s in progress_bar(starts, progress if len(starts) > 1 else False,
                                  desc="features", unit="batch"):
                img = x[s:s + batch_size].to(dev)
                a = angles[s:s + batch_size].to(dev)
                out.append(pooled_features(model, model.encode(img, a), imagined, a))
    finally:
        model.train(was_training)
    return np.concatenate(out).astype(np.float64) if out else \
        np.zeros((0, int(model.config.embed_dim) * (1 + len(imagined))))


def pooled_features(model, state, imagined: Sequence[float] = DEFAULT_IMAGINED,
                    angle=0.0) -> np.ndarray:
    """Features [B, F] from an already encoded ``state`` [B, N, D] of views at ``angle``
    (degrees, scalar or [B]): what :func:`extract_features` computes after encoding, for
    callers that hold the state anyway (inference)."""
    with torch.no_grad():
        a = as_batch(angle, state.shape[0], state.device)
        parts = [state.mean(dim=1)]
        for target in imagined:
            delta = torch.remainder(float(target) - a + 180.0, 360.0) - 180.0
            parts.append(model.step(state, delta, a).mean(dim=1))
        return torch.cat(parts, dim=1).float().cpu().numpy().astype(np.float64)


def extract_for_heads(model, images, heads: Mapping[str, Any], angle=None,
                      batch_size: int = 32) -> Dict[str, np.ndarray]:
    """Features for each task of a card's ``heads`` (tasks with the same feature spec share
    one pass). ``angle`` overrides the spec's observed angle (e.g. a real radiograph's)."""
    feats, done = {}, {}
    for task, entry in heads.items():
        spec = entry.get("features", {}) if isinstance(entry, Mapping) else {}
        a = float(spec.get("angle", 0.0)) if angle is None else angle
        imagined = tuple(float(v) for v in spec.get("imagined", DEFAULT_IMAGINED))
        key = (repr(a), imagined)
        if key not in done:
            done[key] = extract_features(model, images, a, imagined, batch_size)
        feats[task] = done[key]
    return feats


def predict_heads(model, images, heads: Mapping[str, Any], angle=None) -> Dict[str, Any]:
    """``{task: {output: values}}`` of a card's ``heads`` on ``images`` (see
    :func:`.heads.apply_heads`); what inference reports."""
    return apply_heads(heads, extract_for_heads(model, images, heads, angle))


def _views_config(card_or_config):
    """The TrainConfig of a model card (or a TrainConfig / its dict)."""
    if isinstance(card_or_config, TrainConfig):
        return card_or_config
    data = card_or_config.get("config", card_or_config) if isinstance(card_or_config, Mapping) \
        else None
    if not isinstance(data, Mapping):
        raise InputError("the model card has no training config (cannot tell how to render "
                         "views for it)")
    return TrainConfig.from_dict(data)


def preprocessed_volumes(items, cfg: TrainConfig, cache_dir=None, progress: bool = False):
    """``(index, item, volume)`` of each CT in ``items`` preprocessed as in training (the
    config's preprocessing, cached on disk: ``cache_dir``, else the config's); a CT that
    cannot be read is skipped with a :class:`CTSkippedWarning`."""
    root = cache_dir if cache_dir is not None else cfg.data.cache_dir
    cache = PreprocessedCache(Path(root) if root else None)
    prep = cfg.data.preprocessing()
    for i, item in enumerate(progress_bar(items, progress if len(items) > 1 else False,
                                          desc="CTs", unit="CT")):
        try:
            vol = cache.get(item, prep)
        except XrayWorldModelError as exc:
            warnings.warn(f"skipping CT {item.id} ({item.spec}): {exc}", CTSkippedWarning,
                          stacklevel=3)
            continue
        yield i, item, vol


def render_frontal_views(items, card_or_config, angle: float = 0.0, cache_dir=None,
                         device=None, progress: bool = False
                         ) -> Tuple[np.ndarray, List[str]]:
    """DRRs [N, 1, H, W] at ``angle`` of the CT ``items`` (:class:`~XrayWorldModel.data.CTItem`)
    as the model saw views in training: the card's preprocessing (cached on disk) and view
    settings without augmentation. Returns (images, ids of the CTs rendered); a CT that
    cannot be read is skipped with a :class:`CTSkippedWarning`."""
    cfg = _views_config(card_or_config)
    images, ids = [], []
    for _, item, vol in preprocessed_volumes(items, cfg, cache_dir, progress):
        images.append(render_views([vol], cfg.views, [float(angle)], device)[0])
        ids.append(item.id)
    size = cfg.views.image_size
    arr = np.stack(images).astype(np.float32) if images else np.zeros((0, 1, size, size), np.float32)
    return arr, ids

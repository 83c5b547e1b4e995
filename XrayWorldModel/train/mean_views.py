"""The mean-view baseline: the mean training DRR at each angle, which a world model's predicted
view must beat (next to copying the input view).

Why it is stored: a model file leaves its training data behind, so without these views a
shipped model could be scored only against the copy baseline. A model file therefore carries
the mean training views at :data:`STORED_ANGLES` (every 15 deg, the model's image size,
float16: 24 x 64 x 64 x 2 bytes = 192 KiB for ``cpu-small``) as tensor :data:`TENSOR_KEY`,
described by card entry :data:`CARD_KEY`. A checkpoint still has its run's data source, so
its mean views are rendered from that.

Which training cases: up to :data:`MEAN_VIEW_CASES` spread evenly over the training items
(the validation tail held out as the trainer holds it out), so a source that mixes kinds,
``phantom:512+anatomy:64:train.csv``, contributes each kind in proportion to how often the
trainer sees it, rather than only the first kind listed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..config import TrainConfig
from ..data import (DRRStackSet, PreprocessedCache, RenderedViewSet, VolumeProvider,
                    is_stack_source, list_stacks, render_views, resolve_source)
from ..io.card_tensor import read_card_tensor
from ..errors import InputError, UnreadableFileError

TENSOR_KEY = "baseline.mean_views"
CARD_KEY = "mean_views"
#: The angles a model file stores (degrees): every 15 deg, which covers the evaluation
#: targets 30..150 and the training deltas of every shipped config.
STORED_ANGLES: Tuple[float, ...] = tuple(float(a) for a in range(0, 360, 15))
#: How many training cases the baseline averages (as the trainer's validation does).
MEAN_VIEW_CASES = 16
_ANGLE_MATCH_DEG = 1e-3


def _key(angle: float) -> float:
    return float(angle) % 360.0


def spread(items: Sequence, limit: int) -> List:
    """At most ``limit`` of ``items``, evenly spaced from the first to the last."""
    if len(items) <= limit:
        return list(items)
    picks = np.unique(np.linspace(0, len(items) - 1, limit).round().astype(int))
    return [items[int(i)] for i in picks]


def list_source(source: str) -> Tuple[List, bool]:
    """(items, are DRR stacks) of a data source string, listed only (no CT read)."""
    if is_stack_source(source):
        return list_stacks(source), True
    return resolve_source(source), False


def training_sample(cfg: TrainConfig, limit: int = MEAN_VIEW_CASES) -> Tuple[List, bool]:
    """(up to ``limit`` training items spread over the source, are stacks). Without a
    ``data.val_source`` the last ``val_count`` items are validation cases, as in
    :func:`XrayWorldModel.train.trainer.list_sources`, and are left out."""
    items, stacks = list_source(cfg.data.source)
    if not cfg.data.val_source:
        n_val = min(cfg.data.val_count, max(0, len(items) - 1))
        items = items[: len(items) - n_val]
    return spread(items, limit), stacks


@dataclass
class MeanViews:
    """Mean DRRs ``views`` [A, H, W] (float32) at ``angles`` (degrees) over ``n_cases`` CTs or
    stacks of ``source``."""

    angles: Tuple[float, ...]
    views: np.ndarray
    n_cases: int
    source: str

    def at(self, angles: Sequence[float]) -> Dict[float, np.ndarray]:
        """``{angle: view}`` for each of ``angles`` held here (others are left out)."""
        have = np.asarray([_key(a) for a in self.angles])
        out = {}
        for a in angles:
            d = np.abs((have - _key(a) + 180.0) % 360.0 - 180.0)
            if d.size and d.min() <= _ANGLE_MATCH_DEG:
                out[float(a)] = self.views[int(d.argmin())]
        return out

    def missing(self, angles: Sequence[float]) -> List[float]:
        held = self.at(angles)
        return [float(a) for a in angles if float(a) not in held]

    # ------------------------------------------------------------------ building
    @classmethod
    def from_items(cls, items: Sequence, stacks: bool, cfg: TrainConfig,
                   angles: Sequence[float], source: str, cache: Optional[PreprocessedCache] = None,
                   device=None) -> "MeanViews":
        """The mean clean view at each of ``angles`` over ``items`` (CTs preprocessed as
        ``cfg`` trains on them, or DRR stacks: an angle a stack lacks is left out)."""
        angles = [float(a) for a in angles]
        if not items:
            raise InputError(f"the mean-view baseline needs at least one CT, {source!r} has none")
        if stacks:
            return cls._from_stacks(items, cfg, angles, source)
        data = RenderedViewSet(VolumeProvider(items, cache or PreprocessedCache(),
                                              cfg.data.preprocessing(), len(items)),
                               cfg.views, device)
        volumes = data.readable(len(items))
        views = render_views(volumes, cfg.views, angles, device)
        return cls(tuple(angles), views.mean(axis=0).astype(np.float32), len(volumes), source)

    @classmethod
    def _from_stacks(cls, items, cfg: TrainConfig, angles: List[float], source: str):
        data = DRRStackSet(items, cfg.views, len(items))
        kept, views = [], []
        for a in angles:
            try:
                views.append(data.mean_views([a], len(items))[a])
                kept.append(a)
            except InputError:          # a stack without a view near this angle
                continue
        if not kept:
            raise InputError(f"no DRR stack of {source!r} has a view at the angles wanted")
        return cls(tuple(kept), np.stack(views).astype(np.float32), len(items), source)

    @classmethod
    def from_source(cls, source: str, cfg: TrainConfig, angles: Sequence[float],
                    limit: int = MEAN_VIEW_CASES, cache: Optional[PreprocessedCache] = None,
                    device=None) -> "MeanViews":
        """Mean views over up to ``limit`` cases spread over any data source."""
        items, stacks = list_source(source)
        return cls.from_items(spread(items, limit), stacks, cfg, angles, source, cache, device)

    @classmethod
    def from_training(cls, cfg: TrainConfig, angles: Sequence[float] = STORED_ANGLES,
                      limit: int = MEAN_VIEW_CASES, cache: Optional[PreprocessedCache] = None,
                      device=None) -> "MeanViews":
        """Mean views over the training data ``cfg`` names (:func:`training_sample`)."""
        items, stacks = training_sample(cfg, limit)
        what = f"training data {cfg.data.source}, {len(items)} cases spread over it"
        return cls.from_items(items, stacks, cfg, angles, what, cache, device)

    # ------------------------------------------------------------------ model-file storage
    def tensors(self) -> Dict[str, torch.Tensor]:
        return {TENSOR_KEY: torch.from_numpy(np.ascontiguousarray(self.views)).half()}

    def card_entry(self) -> Dict:
        return {"angles": [float(a) for a in self.angles], "n_cases": int(self.n_cases),
                "image_size": int(self.views.shape[-1]), "dtype": "float16",
                "units": "DRR line integral", "source": self.source}

    @classmethod
    def from_model_file(cls, path, card: Mapping) -> Optional["MeanViews"]:
        """The mean views a model file carries, or None when its card has none."""
        views = read_card_tensor(path, card, CARD_KEY, TENSOR_KEY)
        if views is None:
            return None
        entry = card[CARD_KEY]
        angles = tuple(float(a) for a in entry.get("angles", ()))
        if views.ndim != 3 or views.shape[0] != len(angles):
            raise UnreadableFileError(f"the model's mean views ({tuple(views.shape)}) do not "
                                      f"match the {len(angles)} angles of its card", path)
        return cls(angles, views, int(entry.get("n_cases", 0)), str(entry.get("source", "")))


__all__ = ["CARD_KEY", "MEAN_VIEW_CASES", "MeanViews", "STORED_ANGLES", "TENSOR_KEY",
           "list_source", "spread", "training_sample"]

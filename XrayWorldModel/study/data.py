"""The study's data: the labelled cohort on disk, its train/test split and labelled subsets,
and the DRRs every method sees.

* The cohort is written once (:func:`~XrayWorldModel.phantom.cohort.write_cohort`; complete
  cases with the same settings are reused) and read back as a manifest, so the world model
  trains from it exactly as ``xray2xray train data.source=labels.csv`` would.
* The split and the labelled subsets are drawn from the study seed. Labels are known before
  any voxel exists, so the draw retries seeded permutations until every binary task has both
  classes on each side (and the Cox head at least two events), where the cohort allows it.
  Labelled subsets are nested: the 10 % cases are among the 100 % ones.
* Evaluation images are clean DRRs (no augmentation) at 0 deg (the input of every method)
  and at the novel-view angles; the 2D baselines train on a bank of augmented frontal views
  drawn as the world model draws its context views.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from tqdm.auto import tqdm

from ..data import PreprocessedCache, Preprocessing, ViewRenderer, render_views, resolve_source
from ..errors import InputError
from ..fileutil import atomic_path
from ..phantom.cohort import CohortConfig, write_cohort
from ..phantom.findings import FINDINGS, HIDEABLE
from ..probe import PATHOLOGIES

#: Binary targets of the probes (the event within the horizon is the risk label).
BINARY_TASKS = (*PATHOLOGIES, "event")
#: Tries at a split or labelled subset that has both classes everywhere.
SPLIT_TRIES = 2000


@dataclass
class Cohort:
    """The cohort as the study uses it: case ids, CT items (lazy loaders), and every
    numeric label column as an array over the cases (CSV order)."""

    csv: Path
    ids: List[str]
    items: list
    labels: Dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)

    def column(self, name: str, rows=None) -> np.ndarray:
        if name not in self.labels:
            raise InputError(f"the cohort labels have no column {name!r}", self.csv)
        v = self.labels[name]
        return v if rows is None else v[np.asarray(rows)]


def cohort_config(cfg):
    """The :class:`~XrayWorldModel.phantom.cohort.CohortConfig` the study config describes."""
    kw = {}
    if cfg.cohort.prevalence is not None:
        kw["prevalence"] = {f: cfg.cohort.prevalence for f in FINDINGS}
    if cfg.cohort.hidden is not None:
        kw["hidden"] = {f: cfg.cohort.hidden for f in HIDEABLE}
    return CohortConfig(noise_hu=cfg.cohort.noise_hu, **kw)


def prepare_cohort(cfg, folder: Path, progress: bool = False) -> Cohort:
    """Write (or reuse) the cohort in ``folder`` and read it back."""
    c = cfg.cohort
    spacing = c.spacing if len(c.spacing) == 3 else tuple(c.spacing) * 3
    res = write_cohort(c.n_cases, folder, first_seed=cfg.first_seed(), shape=tuple(c.shape),
                       spacing=spacing, config=cohort_config(cfg), progress=progress)
    items = resolve_source(str(res["csv"]))
    keys = sorted({k for it in items for k in it.labels})
    labels = {k: np.array([it.labels.get(k, np.nan) for it in items], dtype=np.float64)
              for k in keys}
    return Cohort(Path(res["csv"]), [it.id for it in items], items, labels)


# ----------------------------------------------------------------------------- split
def _class_margin(cohort: Cohort, rows: np.ndarray) -> int:
    """The smallest class count over the binary tasks among ``rows`` (events count for the
    Cox head too)."""
    counts = []
    for t in BINARY_TASKS:
        y = cohort.column(t, rows)
        counts += [int((y == 1).sum()), int((y == 0).sum())]
    return min(counts)


def split_cases(cohort: Cohort, test_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Seeded (train, test) row indices, sorted. The first permutation whose two sides
    both hold at least 2 cases of every class is taken (else the best one seen)."""
    n = len(cohort)
    n_test = int(round(n * test_fraction))
    rng = np.random.default_rng([seed, 0x5B1])
    best, best_score = None, -1
    for _ in range(SPLIT_TRIES):
        perm = rng.permutation(n)
        test, train = perm[:n_test], perm[n_test:]
        score = min(_class_margin(cohort, test), _class_margin(cohort, train))
        if score > best_score:
            best, best_score = (train, test), score
        if score >= 2:
            break
    train, test = best
    return np.sort(train), np.sort(test)


def labelled_subsets(cohort: Cohort, train: np.ndarray, fractions: Sequence[float],
                     min_labelled: int, seed: int) -> Dict[float, np.ndarray]:
    """Nested labelled subsets of ``train`` per fraction (sorted row indices): the first
    ``max(ceil(f * n), min_labelled)`` cases of one seeded ordering, chosen among tries so
    that the smallest subset has both classes of every task (and 2+ events) if it can."""
    n = len(train)
    sizes = {f: min(n, max(int(math.ceil(f * n)), min_labelled)) for f in fractions}
    smallest = min(sizes.values())
    rng = np.random.default_rng([seed, 0x1AB])
    best, best_score = None, -1
    for _ in range(SPLIT_TRIES):
        order = train[rng.permutation(n)]
        score = _class_margin(cohort, order[:smallest])
        if score > best_score:
            best, best_score = order, score
        if score >= 2:
            break
    return {f: np.sort(best[:sizes[f]]) for f in fractions}


def write_manifest(cohort: Cohort, rows: np.ndarray, path: Path) -> Path:
    """A CSV manifest (id, absolute path) of ``rows``, for the world model's training."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["id", "path"])
        for r in rows:
            w.writerow([cohort.ids[r], str(Path(cohort.items[r].spec).resolve())])
    return path


# ----------------------------------------------------------------------------- views
class VolumeStore:
    """Preprocessed volumes (the training cube, HU) of the cohort, from the on-disk cache."""

    def __init__(self, cohort: Cohort, cfg, cache_dir: Path):
        self.cohort = cohort
        self.cache = PreprocessedCache(cache_dir)
        self.prep = Preprocessing(cfg.data.grid_size, cfg.data.grid_spacing,
                                  centre_on=cfg.data.centre_on)

    def get(self, row: int):
        return self.cache.get(self.cohort.items[int(row)], self.prep)


def render_clean(store: VolumeStore, rows: Sequence[int], sampling, angles: Sequence[float],
                 device=None, progress: bool = False) -> np.ndarray:
    """Clean DRRs [N, A, H, W] (float32) of the cases ``rows`` at ``angles``."""
    out = []
    for r in tqdm(list(rows), desc="views", unit="CT", disable=not progress):
        out.append(render_views([store.get(r)], sampling, list(angles), device)[0])
    return np.stack(out).astype(np.float32)


def render_frontal_bank(store: VolumeStore, rows: Sequence[int], sampling, per_case: int,
                        seed: int, device=None, progress: bool = False
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """Augmented frontal views of each case in ``rows``: images [N, V, H, W] and their
    angles [N, V], drawn like the world model's context views (angle around 0 deg, tilt,
    shift, intensity and noise as ``sampling`` says). Case ``r``'s views come from a
    generator seeded by ``(seed, r)`` alone."""
    import torch
    # one target at delta 0: the renderer's own augmentation code, context view kept
    s = replace(sampling, deltas_deg=(0.0,), targets_per_context=1)
    renderer = ViewRenderer(s, device)
    images, angles = [], []
    for r in tqdm(list(rows), desc="frontal views", unit="CT", disable=not progress):
        vol = store.get(r)
        rngs = np.random.default_rng([seed, 0xBA4C, int(r)]).spawn(per_case)
        batch = renderer.render([vol] * per_case, rngs)
        images.append(batch.context[:, 0].to("cpu", torch.float32).numpy())
        angles.append(batch.context_angle.numpy())
    return np.stack(images), np.stack(angles).astype(np.float32)


__all__ = ["Cohort", "BINARY_TASKS", "cohort_config", "prepare_cohort", "split_cases",
           "labelled_subsets", "write_manifest", "VolumeStore", "render_clean",
           "render_frontal_bank"]

"""Features of a radiograph dataset: streamed, batched, cached on disk, resumable, sharded.

**The same path as inference.** Each file is read by :func:`~XrayWorldModel.io.read_cxr`
(with ``check=True``, as ``xray2xray infer`` reads it), brought into the model's domain by
:func:`~XrayWorldModel.infer.domain.radiograph_input` (what ``infer`` encodes) and turned
into the pooled latents of the observed and imagined views by
:func:`~XrayWorldModel.probe.features.extract_features` (what the heads read at inference).
A PNG or JPEG has no pixel spacing of its own; the label file's (NIH's original spacing
and width, a manifest's ``pixel_spacing``) or ``--pixel-spacing`` is used, else the
reader's default.

**Streamed.** A :class:`torch.utils.data.DataLoader` reads and decodes the files
(``workers`` processes; 0 decodes in this one) in batches of ``batch_size``; each batch is
encoded and its features written before the next is read, so memory holds a few batches
of images whatever the dataset's size (plus the features, ``4 * F`` bytes per image).

**Cached and resumable.** One ``.npy`` per image under
``<cache>/probe-features/<model digest>-<settings digest>/``, named by the SHA256 of the
image file's bytes (and of the pixel spacing or width the label file gives for it, when it
gives one). The model digest covers the weights, view settings and domain statistics (not
the heads: a model file that only gained heads reuses the cache); the settings digest
covers the observed and imagined angles, the projection, the input path's version (it
changes when the same file would reach the model differently) and the package version. An image whose file is in the
cache is not decoded or encoded again: an interrupted run resumes where it stopped, and a
second probe task on the same images (other labels, another split) costs no encoding.

**Sharded.** Shard ``I`` of ``N`` takes images ``I, I + N, ...``: run the shards as
separate processes or nodes (or under torchrun, whose ``RANK`` / ``WORLD_SIZE`` are the
default), then once more without a shard: every image comes from the cache, and the heads
are fitted. Shards on machines without a shared cache folder merge by copying their cache
folders into one; the files are named by content and never collide.

Unreadable files (missing, corrupt, not a radiograph) are listed and skipped, never fatal.
"""
from __future__ import annotations

import hashlib
import json
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..console import progress_bar
from ..conventions import preprocessed_cache_dir
from ..errors import Interrupted, XrayWorldModelError
from ..fileutil import atomic_path
from ..infer.domain import INPUT_PATH_VERSION, radiograph_input
from ..io import read_cxr
from ..version import __version__
from .datasets import RadiographRecord, view_class
from .features import extract_features

FEATURES_FOLDER = "probe-features"
CACHE_FORMAT = 1
#: Unreadable files listed by name in the output (all of them are counted).
MAX_LISTED = 50


def model_digest(model, card: Mapping[str, Any]) -> str:
    """SHA256 of what a radiograph's features depend on in the model: its weights, its view
    settings and model config, and its domain statistics (not its heads)."""
    config = card.get("config") or {}
    h = hashlib.sha256(json.dumps({"model": config.get("model"), "views": config.get("views"),
                                   "domain": card.get("domain")}, sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def image_key(path: Path, spacing: Optional[float] = None,
              width_mm: Optional[float] = None) -> str:
    """SHA256 of the file's bytes, and of the pixel spacing (or image width in mm) the label
    file gives for it when it gives one: features of a PNG depend on it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if spacing is not None:
        h.update(f"|spacing={spacing:.9g}".encode())
    elif width_mm is not None:
        h.update(f"|width_mm={width_mm:.9g}".encode())
    return h.hexdigest()


class FeatureCache:
    """Per-image feature files of one model and one feature setting."""

    def __init__(self, root: Optional[Path], digest: str, settings: Mapping[str, Any]):
        root = Path(root).expanduser() if root else preprocessed_cache_dir() / FEATURES_FOLDER
        text = json.dumps({"format": CACHE_FORMAT, **settings}, sort_keys=True)
        self.folder = root / f"{digest[:16]}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
        self.folder.mkdir(parents=True, exist_ok=True)
        info = self.folder / "settings.json"
        if not info.is_file():
            with atomic_path(info) as tmp:
                Path(tmp).write_text(json.dumps({"model_digest": digest, "format": CACHE_FORMAT,
                                                 **settings}, indent=1))

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npy"

    def get(self, key: str) -> Optional[np.ndarray]:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError):       # cut short by a crash: encode it again
            return None

    def put(self, key: str, features: np.ndarray) -> None:
        with atomic_path(self.path(key), fsync=False) as tmp:
            np.save(tmp, np.asarray(features, dtype=np.float32), allow_pickle=False)

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("??/*.npy"))


class _Skip(Exception):
    """An image of the other projection, found only when its header was read."""


def _given_spacing(rec: RadiographRecord, pixel_spacing: Optional[float]) -> Optional[float]:
    return rec.spacing_mm if rec.spacing_mm else pixel_spacing


def model_input_of(rec: RadiographRecord, card: Mapping[str, Any],
                   pixel_spacing: Optional[float] = None,
                   projection: str = "frontal") -> np.ndarray:
    """The model input [H, W] of one image: read as ``infer`` reads a file, its spacing from
    the label file when the file has none, through :func:`radiograph_input`."""
    rad = read_cxr(rec.path, check=True)
    if rad.spacing_is_default:
        s = _given_spacing(rec, pixel_spacing)
        if s is None and rec.width_mm:
            s = rec.width_mm / rad.image.shape[1]
        if s is not None:
            rad.spacing, rad.spacing_is_default = (float(s), float(s)), False
    view = view_class(rad.view_position)
    if projection == "frontal" and view == "lateral":
        raise _Skip("lateral")
    if projection == "lateral":
        if view == "frontal":
            raise _Skip("frontal")
        rad.view_position = None          # asked for: seen at the lateral angle
    return radiograph_input(rad, dict(card)).image


class _Reader(torch.utils.data.Dataset):
    """Item ``i``: the cached features of image ``i``, or its model input, or why neither."""

    def __init__(self, records, card, cache: FeatureCache, pixel_spacing, projection):
        self.records, self.card, self.cache = records, card, cache
        self.pixel_spacing, self.projection = pixel_spacing, projection

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        rec = self.records[i]
        out: Dict[str, Any] = {"i": i}
        try:
            out["key"] = key = image_key(rec.path, _given_spacing(rec, self.pixel_spacing),
                                         rec.width_mm)
        except OSError as exc:
            return dict(out, status="unreadable", reason=f"{rec.path}: {exc.strerror or exc}")
        cached = self.cache.get(key)
        if cached is not None:
            return dict(out, status="cached", features=cached)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                image = model_input_of(rec, self.card, self.pixel_spacing, self.projection)
            except _Skip as exc:
                return dict(out, status="skipped", view=str(exc))
            except XrayWorldModelError as exc:
                return dict(out, status="unreadable", reason=str(exc))
        names = {type(w.message).__name__ for w in caught}
        if _given_spacing(rec, self.pixel_spacing) or rec.width_mm:
            names.discard("DefaultSpacingWarning")      # the label file's spacing was used
        return dict(out, status="decoded", image=image, warnings=sorted(names))


@dataclass
class Extraction:
    """Features of the images that could be read, and what happened to the others."""

    features: np.ndarray                  # [n_ok, F] float32
    rows: np.ndarray                      # index into the records of each feature row
    encoded: int = 0
    from_cache: int = 0
    unreadable: List[Tuple[str, str]] = field(default_factory=list)   # (id, reason)
    skipped_views: Dict[str, int] = field(default_factory=dict)
    warnings: Dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    cache: str = ""

    def counter(self) -> str:
        return (f"encoded {self.encoded}, from cache {self.from_cache}, skipped "
                f"{len(self.unreadable)} unreadable")

    def summary(self) -> Dict[str, Any]:
        n = self.encoded + self.from_cache
        return {"counter": self.counter(), "encoded": self.encoded,
                "from_cache": self.from_cache, "unreadable": len(self.unreadable),
                "unreadable_files": [{"id": i, "reason": r}
                                     for i, r in self.unreadable[:MAX_LISTED]],
                "skipped_views_in_files": dict(self.skipped_views),
                "reader_warnings": dict(self.warnings), "seconds": round(self.seconds, 3),
                "images_per_s": round(n / self.seconds, 2) if self.seconds > 0 else None,
                "cache": self.cache}


class _Batches:
    """Encodes the decoded images of each batch, caches them, and keeps the counts."""

    def __init__(self, model, spec, cache: FeatureCache, n: int, records):
        self.model, self.spec, self.cache, self.records = model, spec, cache, records
        width = int(spec["n_features"])
        self.features = np.zeros((n, width), dtype=np.float32)
        self.ok = np.zeros(n, dtype=bool)
        self.result = Extraction(np.zeros((0, width), np.float32), np.zeros(0, np.int64),
                                 cache=str(cache.folder))

    def add(self, batch: Sequence[Dict[str, Any]]) -> None:
        r = self.result
        decoded = [b for b in batch if b["status"] == "decoded"]
        if decoded:
            images = np.stack([b["image"] for b in decoded])[:, None]
            feats = extract_features(self.model, images, self.spec["angle"],
                                     self.spec["imagined"], batch_size=len(decoded))
            for b, f in zip(decoded, feats):
                self.cache.put(b["key"], f)
                self.features[b["i"]], self.ok[b["i"]] = f, True
                for w in b["warnings"]:
                    r.warnings[w] = r.warnings.get(w, 0) + 1
            r.encoded += len(decoded)
        for b in batch:
            if b["status"] == "cached":
                self.features[b["i"]], self.ok[b["i"]] = b["features"], True
                r.from_cache += 1
            elif b["status"] == "unreadable":
                r.unreadable.append((self.records[b["i"]].id, b["reason"]))
            elif b["status"] == "skipped":
                r.skipped_views[b["view"]] = r.skipped_views.get(b["view"], 0) + 1


def extract_dataset_features(records: Sequence[RadiographRecord], model, card, spec,
                             cache_root=None, batch_size: int = 32, workers: int = 0,
                             pixel_spacing: Optional[float] = None, projection: str = "frontal",
                             progress=False) -> Extraction:
    """Features (``spec``: :func:`.features.feature_spec`) of every image of ``records`` that
    can be read, through the on-disk cache (see the module docstring)."""
    settings = {"angle": float(spec["angle"]), "imagined": [float(a) for a in spec["imagined"]],
                "pooling": spec.get("pooling", "mean"), "projection": projection,
                "input_path": INPUT_PATH_VERSION, "package": __version__}
    cache = FeatureCache(cache_root, model_digest(model, card), settings)
    reader = _Reader(list(records), card, cache, pixel_spacing, projection)
    loader = torch.utils.data.DataLoader(reader, batch_size=max(1, int(batch_size)),
                                         num_workers=max(0, int(workers)), shuffle=False,
                                         collate_fn=list)
    state = _Batches(model, spec, cache, len(records), records)
    t0 = time.perf_counter()
    bar = progress_bar(None, progress, total=len(records), desc="radiographs", unit="img")
    try:
        for batch in loader:
            state.add(batch)
            bar.update(len(batch))
            bar.set_postfix_str(state.result.counter())
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: {state.result.counter()} so far, each cached in "
                          f"{cache.folder}; the same command resumes", signal.SIGINT) from None
    finally:
        bar.close()
    r = state.result
    r.seconds = time.perf_counter() - t0
    r.rows = np.flatnonzero(state.ok)
    r.features = state.features[r.rows]
    return r

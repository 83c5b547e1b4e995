"""Preprocess a CT once for training (clip HU, resample to a fixed isotropic cube) and
keep the result on disk, keyed by a checksum of the source and the parameters, so that a
later run, another rank or another experiment with the same settings reuses it."""
from __future__ import annotations

import hashlib
import json
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from ..conventions import CACHE_ENV, preprocessed_cache_dir  # noqa: F401  (CACHE_ENV re-exported)
from ..errors import InputError, UnreadableFileError, XrayWorldModelError
from ..fileutil import atomic_path, sha256_of
from ..version import __version__
from ..volume import Volume
from .anatomy import (ANATOMY_VERSION, body_centre, body_mask, lung_extent, named_ranges,
                      ranges_fingerprint)
from .sources import is_anatomy_source, parse_anatomy_source

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$XRAY2XRAY_CACHE``, else the platform's user cache dir for xray2xray."""
    return preprocessed_cache_dir()


#: where the training cube is centred: on the patient's body, on the body with the lung
#: apices at a fixed height ("chest"), or on the scan's own grid
CENTRE_ON = ("body", "chest", "scan")

#: what becomes of everything outside the patient's body (the CT table, cables, blankets,
#: noise in the air): kept as scanned, or set to air
OUTSIDE_BODY = ("keep", "air")


@dataclass(frozen=True)
class Preprocessing:
    """How a CT becomes a training volume: an axis-aligned LPS cube of ``size``^3 voxels of
    ``spacing`` mm, HU clipped to ``hu_clip``. ``centre_on="body"`` (default) centres it
    left-right and front-back on the body's centroid, so every patient turns about their own
    middle: a frontal view says nothing about depth, and a patient lying far from the scan's
    centre would otherwise ask the model for a lateral shifted by an amount it cannot see.
    ``"chest"`` also moves it cranio-caudally so the lung apices lie ``lung_top_mm`` above
    its centre, where the procedural phantoms' apices lie (124-138 mm) and where a radiograph
    is placed by its apices (infer/domain.py): patients whose scans start at the neck or at
    the shoulders then meet the model at one height. ``"scan"`` keeps the CT grid's centre
    (studies pinned to it). ``outside_body="air"`` clears all but the patient
    (:func:`.anatomy.body_mask`): a radiograph has no CT table under the patient, and where
    the table lies behind a patient is not something a frontal view shows."""

    size: int = 128
    spacing: float = 2.5
    hu_clip: Tuple[float, float] = (-1024.0, 3071.0)
    centre_on: str = "body"
    lung_top_mm: float = 130.0
    outside_body: str = "keep"

    def __post_init__(self):
        if self.centre_on not in CENTRE_ON:
            raise InputError(f"centre_on must be one of {', '.join(CENTRE_ON)}, "
                             f"not {self.centre_on!r}")
        if self.outside_body not in OUTSIDE_BODY:
            raise InputError(f"outside_body must be one of {', '.join(OUTSIDE_BODY)}, "
                             f"not {self.outside_body!r}")

    def key(self, source_digest: str) -> str:
        fields = asdict(self)
        if self.centre_on != "chest":       # only chest placement reads it: keys stay as they were
            del fields["lung_top_mm"]
        if self.outside_body == "keep":     # as before the option: keys stay as they were
            del fields["outside_body"]
        params = json.dumps({"format": CACHE_FORMAT, **fields}, sort_keys=True)
        return hashlib.sha256(f"{source_digest}|{params}".encode()).hexdigest()[:32]


def source_digest(spec: str) -> str:
    """SHA256 of the source file(s), or of the spec string for generated phantoms; for an
    augmented patient (``anatomy:1:SEED:BASE``) of the augmentation version, the seed and
    the base's digest, so each patient has its own entry and a changed base rebuilds it."""
    if is_anatomy_source(spec):
        a = parse_anatomy_source(spec)
        # default ranges keep the key they had before ranges could be named
        ranges = "" if a.ranges == "default" else f"{ranges_fingerprint(named_ranges(a.ranges))}|"
        return hashlib.sha256(f"anatomy|{ANATOMY_VERSION}|{ranges}{a.count}|{a.first_seed}|"
                              f"{source_digest(a.source)}".encode()).hexdigest()
    if spec.startswith("phantom:"):
        return hashlib.sha256(f"{spec}|{__version__}".encode()).hexdigest()
    return sha256_of(spec)


def _to_sitk(volume: Volume) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(volume.array.transpose(2, 1, 0), np.float32))
    img.SetSpacing(tuple(float(s) for s in volume.spacing))
    img.SetOrigin(tuple(float(o) for o in volume.origin))
    img.SetDirection(tuple(float(d) for d in volume.direction.reshape(-1)))
    return img


def preprocess(volume: Volume, prep: Preprocessing) -> Volume:
    """Clip, low-pass (Gaussian, sigma half the new spacing where the grid gets coarser, so
    thin bone is not aliased away) and resample trilinearly onto the training cube, centred
    as ``prep.centre_on`` says (body and lungs are found on a first cube about the scan's
    centre)."""
    img = _to_sitk(Volume(np.clip(volume.array, *prep.hu_clip).astype(np.float32), volume.affine))
    sigma = [0.5 * np.sqrt(max(prep.spacing ** 2 - s ** 2, 0.0)) for s in volume.spacing]
    if max(sigma) > 0:
        img = sitk.SmoothingRecursiveGaussian(img, [max(s, 1e-3) for s in sigma])
    cube = _resample(img, volume.center, prep, volume.metadata)
    if prep.centre_on != "scan":
        offset = _placement_offset(cube, prep)
        if np.abs(offset).max() > 0.25 * prep.spacing:
            cube = _resample(img, volume.center + offset, prep, volume.metadata)
    if prep.outside_body == "air":
        cube.array[~body_mask(cube)] = prep.hu_clip[0]
    return cube


def _placement_offset(cube: Volume, prep: Preprocessing) -> np.ndarray:
    """How far (LPS mm) the cube's centre moves: across and front to back onto the body's
    centroid; for ``"chest"`` also up or down to put the apices ``prep.lung_top_mm`` above
    it (a volume without lungs keeps its height, with a warning)."""
    offset = np.zeros(3)
    body = body_mask(cube)                  # found once, for the centroid and the lungs
    centroid = body_centre(cube, body)
    if centroid is not None:
        offset[:2] = np.asarray(centroid[:2]) - cube.center[:2]
    if prep.centre_on == "chest":
        extent = lung_extent(cube, body)
        if extent is None:
            warnings.warn("no lungs found: the cube keeps the scan's height (centre_on=chest)",
                          stacklevel=3)
        else:
            offset[2] = extent[0] - prep.lung_top_mm - cube.center[2]
    return offset


def _resample(img: sitk.Image, centre: np.ndarray, prep: Preprocessing, metadata) -> Volume:
    """``img`` on the ``prep`` cube whose centre is ``centre`` (LPS mm)."""
    n = prep.size
    origin = np.asarray(centre, np.float64) - (n - 1) / 2 * prep.spacing
    ref = sitk.Image([n, n, n], sitk.sitkFloat32)
    ref.SetSpacing([prep.spacing] * 3)
    ref.SetOrigin(tuple(float(o) for o in origin))
    out = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, float(prep.hu_clip[0]))
    arr = np.clip(sitk.GetArrayFromImage(out).transpose(2, 1, 0), *prep.hu_clip)  # filter overshoot
    meta = dict(metadata, preprocessing=asdict(prep))
    return Volume.from_spacing(np.ascontiguousarray(arr, np.float32), [prep.spacing] * 3, origin,
                               metadata=meta)


class PreprocessedCache:
    """On-disk store of preprocessed CTs: ``KEY.npy`` (float16 HU) + ``KEY.json``."""

    def __init__(self, root: Optional[Path] = None):
        self.root = Path(root) if root is not None else default_cache_dir() / "ct"
        self.root.mkdir(parents=True, exist_ok=True)

    def get(self, item, prep: Preprocessing) -> Volume:
        """The preprocessed volume of ``item`` (a :class:`.sources.CTItem`), built and
        stored on first use."""
        key = prep.key(source_digest(item.spec))
        arr_path, meta_path = self.root / f"{key}.npy", self.root / f"{key}.json"
        if arr_path.exists() and meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text())
                arr = np.load(arr_path).astype(np.float32)
                return Volume(arr, np.asarray(meta["affine"]), {"source": item.spec, "cache_key": key})
            except (OSError, ValueError, KeyError) as exc:
                raise UnreadableFileError(f"corrupt cache entry ({exc}); delete it to rebuild",
                                          arr_path) from None
        if getattr(item, "base", None) is not None:      # made from the preprocessed base
            vol = item.derive(self.get(item.base, prep))
        else:
            vol = preprocess(item.load(), prep)
        stored = vol.array.astype(np.float16)
        # hand out exactly what a later read of the cache gives, so results never depend
        # on whether this run built the entry or found it
        vol.array = stored.astype(np.float32)
        self._atomic(arr_path, lambda f: np.save(f, stored))
        self._atomic(meta_path, lambda f: f.write(json.dumps(
            {"source": item.spec, "affine": vol.affine.tolist(), "preprocessing": asdict(prep)}).encode()))
        vol.metadata.update(source=item.spec, cache_key=key)
        return vol

    def _atomic(self, path: Path, write) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            write(f)


class CTLoadWarning(UserWarning):
    """A CT could not be read during training; it is skipped and training goes on."""


class VolumeProvider:
    """Preprocessed training volumes by index, from the on-disk cache, with a bounded
    in-memory LRU. A CT that fails to load is reported once and replaced by the next
    readable one, so one bad file does not stop a long run."""

    def __init__(self, items, cache: PreprocessedCache, prep, max_in_memory: int):
        self.items, self.cache, self.prep = items, cache, prep
        self.max_in_memory = max(1, max_in_memory)
        self._memory: "OrderedDict[int, object]" = OrderedDict()
        self.bad: Dict[int, str] = {}

    def __len__(self):
        return len(self.items)

    def get(self, index: int, replace: bool = True):
        """(volume, item) of CT ``index``; a CT that fails to load is reported once and,
        with ``replace``, the next readable one is used (``None`` without)."""
        n = len(self.items)
        for k in range(n if replace else 1):
            i = (index + k) % n
            if i in self.bad:
                continue
            if i in self._memory:
                self._memory.move_to_end(i)
                return self._memory[i], self.items[i]
            try:
                vol = self.cache.get(self.items[i], self.prep)
            except XrayWorldModelError as exc:
                self.bad[i] = str(exc)
                warnings.warn(f"skipping CT {self.items[i].spec}: {exc}", CTLoadWarning, stacklevel=2)
                continue
            self._memory[i] = vol
            if len(self._memory) > self.max_in_memory:
                self._memory.popitem(last=False)
            return vol, self.items[i]
        if not replace:
            return None
        raise InputError(f"none of the {n} CTs could be read (first error: "
                         f"{next(iter(self.bad.values()), 'n/a')})")

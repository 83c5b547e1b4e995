"""Training from DRR stacks written by ``xray2xray drr`` (``data.source = "stacks:DIR"``).

The second data mode of the trainer: instead of rendering views from CTs on the fly, the
views of each sample are picked from a stack rendered once, ahead of time (on a GPU farm, or
by a collaborator who may not share the CTs). A :class:`DRRStackSet` is the stacks of a
folder (every complete ``*.nii.gz`` / ``*.nii`` stack with its JSON sidecar), of a list file
(one stack path per line, relative to the list, ``#`` comments; ``.csv``: first column), or
one stack file. Only the sidecars are read up front; images load lazily into a bounded
in-memory LRU, resampled once to the model's ``views.image_size``.

What differs from on-the-fly rendering:

* Angles are those of each stack (its geometry). The context angle follows the configured
  distribution (:class:`~.views.ViewSampling`): by default the frontal-centred truncated
  normal, snapped to the stack's nearest angle (each available angle is drawn with the
  probability mass of the arc closest to it); ``uniform``: every angle of the stack equally
  often. The K targets are drawn among the stack's *other* angles whose delta (wrapped to
  [-180, 180)) lies within :data:`ANGLE_TOLERANCE_DEG` of one of ``deltas_deg``; when no
  other angle does, among those whose delta is nearest to one. Batches report the actual
  angles and deltas.
* The field of view is the stack's own: a stack whose detector differs from
  ``views.image_size`` is resampled to it (bilinear with antialiasing, i.e. area-like
  averaging when shrinking), not cropped; a field of view at the isocentre more than 10 %
  away from ``views.field_of_view_mm`` is reported once (:class:`StackFieldOfViewWarning`).
  A stack with a non-square field of view is stretched to a square image.
* Intensity jitter and noise are applied as by :class:`~.views.ViewRenderer`; tilt and
  isocentre shifts cannot be applied to stored views and are ignored (the batch's tilt is
  the stack's own).
* A stack with fewer than two distinct angles, an interrupted (incomplete) stack, or one
  whose files cannot be read is skipped with a :class:`StackLoadWarning`, once, and training
  goes on (a sample drawn from it uses the next readable stack); when none is readable an
  :class:`~XrayWorldModel.errors.InputError` names the folder.

Each sample depends only on its stack and its generator, so the trainer's global batch
planning (seed, step, sample) stays exact across resumes and ranks.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import (EmptyFolderError, FileNotFoundInputError, InputError, UnreadableFileError,
                      XrayWorldModelError)
from ..io.drr_stack import (STACK_FORMAT, NotAStackError, read_drr_stack, read_stack_metadata,
                            stack_stem)
from .radiograph_style import augment_context
from .views import TrueViews, ViewBatch, ViewSampling

#: ``data.source`` / ``data.val_source`` prefix that selects training from DRR stacks.
STACK_SOURCE_PREFIX = "stacks:"
#: List files of stacks (one path per line; CSV: first column).
LIST_SUFFIXES = (".txt", ".csv", ".lst")
#: How far (degrees) a stack's angle may be from a wanted one (deltas, validation angles).
ANGLE_TOLERANCE_DEG = 1.0
#: Relative field-of-view mismatch that is reported.
FOV_TOLERANCE = 0.10


#: Field-of-view mismatches already reported, (wanted, rows, columns) in mm.
_FOV_WARNED: set = set()


class StackLoadWarning(UserWarning):
    """A DRR stack cannot be used (unreadable, incomplete, too few angles); it is skipped
    and training goes on (the DRR-stack twin of the trainer's ``CTLoadWarning``)."""


class StackFieldOfViewWarning(UserWarning):
    """Stacks whose field of view differs from ``views.field_of_view_mm``."""


# ----------------------------------------------------------------------------- helpers
def wrap_deg(x):
    """Angles or deltas wrapped to [-180, 180) degrees."""
    return (np.asarray(x, dtype=np.float64) + 180.0) % 360.0 - 180.0


def is_stack_source(source) -> bool:
    """True for a ``stacks:PATH`` data source."""
    return isinstance(source, str) and source.lower().startswith(STACK_SOURCE_PREFIX)


def stack_source_path(source: Union[str, Path]) -> Path:
    """The path of a ``stacks:PATH`` source (a plain path is returned as is)."""
    text = str(source)
    if is_stack_source(text):
        text = text[len(STACK_SOURCE_PREFIX):]
    if not text.strip():
        raise InputError("a DRR stack source needs a path: stacks:/path/to/folder")
    return Path(text.strip()).expanduser()


@dataclass(frozen=True)
class StackItem:
    """One DRR stack as its sidecar describes it (the image is not read yet)."""

    id: str                                  # the stack's file stem
    path: Path                               # the NIfTI image
    angles: Tuple[float, ...]                # degrees, in stack order
    detector_shape: Tuple[int, int]          # (rows, columns)
    field_of_view_mm: Tuple[float, float]    # (rows, columns), at the isocentre
    tilt: float
    mu_water: Optional[float] = None


@dataclass
class StackSample:
    """One training sample taken from a stack."""

    context: torch.Tensor          # [1, H, W]
    targets: torch.Tensor          # [K, 1, H, W]
    context_angle: float           # degrees, the stack's angle
    deltas: np.ndarray             # [K] degrees, wrapped to [-180, 180)
    tilt: float
    id: str
    context_index: int             # index of the context view in the stack
    target_indices: np.ndarray     # [K]


def _distinct_angles(angles) -> int:
    return len(np.unique(np.round(np.asarray(angles, dtype=np.float64) % 360.0, 6) % 360.0))


def probe_stack(path: Union[str, Path]) -> Optional[StackItem]:
    """The :class:`StackItem` of the stack at ``path`` (its NIfTI or its ``.json``) from the
    sidecar alone (:func:`~XrayWorldModel.io.drr_stack.read_stack_metadata`); ``None`` when
    ``path`` is no DRR stack at all (no sidecar, or a JSON of another kind, e.g. a BIDS
    sidecar beside a CT); :class:`InputError` when it is a stack that cannot be used (bad
    JSON, interrupted, image missing, fewer than 2 angles)."""
    try:
        meta = read_stack_metadata(path)
    except NotAStackError:
        return None
    g = meta.geometry
    n = _distinct_angles(g.angles)
    if n < 2:
        raise InputError(f"has {n} distinct angle{'s' if n != 1 else ''}; training needs at "
                         "least 2 (a context and a target)", meta.sidecar)
    (H, W), (dv, du) = g.detector_shape, g.pixel_spacing
    mag = g.magnification
    mu = meta.data.get("mu_water")
    return StackItem(stack_stem(meta.image), meta.image, tuple(g.angles), (H, W),
                     (H * dv / mag, W * du / mag), float(g.tilt),
                     float(mu) if isinstance(mu, (int, float)) else None)


def _skip(reason: str) -> None:
    warnings.warn(f"skipping DRR stack {reason}", StackLoadWarning, stacklevel=3)


def _list_file_entries(path: Path) -> List[Path]:
    """Stack paths named by a list file (relative to it), comments and a CSV header skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UnreadableFileError(f"cannot read the list of DRR stacks: {exc}", path) from None
    csv = path.suffix.lower() == ".csv"
    out: List[Path] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        entry = line.split(",")[0].strip().strip('"') if csv else line
        if not entry or (csv and not out and entry.lower() in ("path", "file", "stack", "image")):
            continue
        p = Path(entry).expanduser()
        out.append(p if p.is_absolute() else path.parent / p)
    return out


def list_stacks(source: Union[str, Path]) -> List[StackItem]:
    """The usable stacks of ``source`` (``stacks:PATH`` or ``PATH``): a folder, a list file
    or one stack. Unusable stacks are skipped with a :class:`StackLoadWarning`; none usable
    is an :class:`InputError` naming the folder or file."""
    path = stack_source_path(source)
    if not path.exists():
        raise FileNotFoundInputError("no such folder, list file or DRR stack", path)
    items: List[StackItem] = []
    skipped: List[str] = []
    if path.is_dir():
        candidates = sorted([*path.glob("*.nii.gz"), *path.glob("*.nii")], key=lambda q: q.name)
        explicit = False
    elif path.suffix.lower() in LIST_SUFFIXES:
        candidates, explicit = _list_file_entries(path), True
    else:
        candidates, explicit = [path], True
    for cand in candidates:
        if explicit and not cand.exists():
            skipped.append(f"{cand}: no such file")
            _skip(skipped[-1])
            continue
        try:
            item = probe_stack(cand)
        except (XrayWorldModelError, OSError) as exc:
            skipped.append(str(exc))
            _skip(skipped[-1])
            continue
        if item is None:
            if explicit:
                skipped.append(f"{cand}: is not a DRR stack (no {STACK_FORMAT} sidecar beside it)")
                _skip(skipped[-1])
            continue
        items.append(item)
    if not items:
        what = "folder" if path.is_dir() else "list" if path.suffix.lower() in LIST_SUFFIXES else "file"
        note = f"; {len(skipped)} skipped, the first: {skipped[0]}" if skipped else ""
        cls = EmptyFolderError if path.is_dir() else InputError
        raise cls(f"the {what} holds no usable DRR stack (a NIfTI and its JSON sidecar, "
                  f"written by `xray2xray drr`){note}", path)
    return items


def _resample(views: torch.Tensor, size: int) -> torch.Tensor:
    """[A, H, W] -> [A, size, size]: bilinear with antialiasing (area-like when shrinking)."""
    if tuple(views.shape[-2:]) == (size, size):
        return views
    return F.interpolate(views[:, None], size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)[:, 0].contiguous()


def pick_context(angles, s: ViewSampling, rng: np.random.Generator) -> int:
    """Index of the context view: ``frontal`` draws the truncated normal of
    :func:`~.views.sample_angles` and takes the stack's nearest angle (each angle weighted by
    the probability mass of the arc closest to it); ``uniform`` takes every view of the
    stack with equal probability."""
    if s.context == "uniform":
        return int(rng.integers(len(angles)))
    c = float(np.clip(rng.normal(0.0, s.context_sigma_deg), -s.context_max_deg, s.context_max_deg))
    return nearest_angle(angles, c)[0]


def nearest_angle(angles, angle: float) -> Tuple[int, float]:
    """(index, wrapped distance in degrees) of the angle of ``angles`` nearest ``angle``."""
    d = np.abs(wrap_deg(np.asarray(angles, dtype=np.float64) - float(angle)))
    i = int(np.argmin(d))
    return i, float(d[i])


def pick_targets(angles, context_index: int, deltas_deg: Sequence[float], k: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Indices of ``k`` target views: among the other angles whose delta from the context is
    within :data:`ANGLE_TOLERANCE_DEG` of a configured delta, else among those whose delta is
    nearest one; drawn without replacement when there are enough."""
    a = np.asarray(angles, dtype=np.float64)
    delta = wrap_deg(a - a[context_index])
    others = np.flatnonzero(np.abs(delta) > 1e-6)
    want = np.asarray(deltas_deg, dtype=np.float64)
    miss = np.abs(wrap_deg(delta[others][:, None] - want[None, :])).min(axis=1)
    ok = others[miss <= ANGLE_TOLERANCE_DEG]
    if ok.size == 0:
        ok = others[miss <= miss.min() + 1e-6]
    return rng.choice(ok, size=k, replace=k > ok.size)


# ----------------------------------------------------------------------------- the set
class DRRStackSet:
    """Training samples from DRR stacks, by stack index.

    ``stacks`` is a source (``stacks:PATH`` or a path: folder, list file, one stack) or a
    list of :class:`StackItem` (e.g. a train/validation split of :func:`list_stacks`).
    Images are read on first use and kept, resampled to ``sampling.image_size``, in an LRU
    of at most ``max_in_memory`` stacks.
    """

    def __init__(self, stacks, sampling: ViewSampling, max_in_memory: int = 64,
                 warn_fov: bool = True):
        if isinstance(stacks, (str, Path)):
            self.where: Optional[Path] = stack_source_path(stacks)
            self.items: List[StackItem] = list_stacks(stacks)
        else:
            self.items = list(stacks)
            parents = {it.path.parent for it in self.items}
            self.where = parents.pop() if len(parents) == 1 else None
        self.sampling = sampling
        self.max_in_memory = max(1, int(max_in_memory))
        self._memory: "OrderedDict[int, Tuple[torch.Tensor, np.ndarray]]" = OrderedDict()
        self.bad: Dict[int, str] = {}
        self._warned_context = False
        if warn_fov:
            self.check_field_of_view()

    def __len__(self) -> int:
        return len(self.items)

    # ------------------------------------------------------------------ checks
    def check_field_of_view(self) -> bool:
        """Warn when stacks' field of view at the isocentre is more than 10 % away from
        ``views.field_of_view_mm`` (they are used as they are, resampled, not cropped); once
        per process for each such field of view, so a train/validation split warns once."""
        want = float(self.sampling.field_of_view_mm)
        groups: Dict[Tuple[float, float, float], List[StackItem]] = {}
        for it in self.items:
            if any(abs(f - want) > FOV_TOLERANCE * want for f in it.field_of_view_mm):
                key = (want, *(round(f, 1) for f in it.field_of_view_mm))
                groups.setdefault(key, []).append(it)
        for key, its in groups.items():
            if key in _FOV_WARNED:
                continue
            _FOV_WARNED.add(key)
            warnings.warn(
                f"{len(its)} DRR stack{'s' if len(its) != 1 else ''} (e.g. {its[0].path}) "
                f"cover{'s' if len(its) == 1 else ''} {key[1]:.0f} x {key[2]:.0f} mm at the "
                f"isocentre, not views.field_of_view_mm = {want:g} mm; training uses each "
                "stack's own field of view, resampled to views.image_size",
                StackFieldOfViewWarning, stacklevel=3)
        return bool(groups)

    def require_angles(self, angles: Sequence[float], limit: Optional[int] = None,
                       tol: float = ANGLE_TOLERANCE_DEG, what: str = "run.val_angles") -> None:
        """:class:`InputError` naming the first stack (of the first ``limit``) with no view
        within ``tol`` degrees of one of ``angles`` (checked on the sidecars)."""
        for it in self.items[: limit if limit is not None else None]:
            for a in angles:
                i, d = nearest_angle(it.angles, a)
                if d > tol:
                    raise InputError(
                        f"has no view within {tol:g} deg of the validation angle {float(a):g} "
                        f"(nearest: {it.angles[i]:g} deg); set {what} to angles the stacks "
                        "hold, or render the stacks with that angle", it.path)

    # ------------------------------------------------------------------ loading
    def _load(self, i: int) -> Tuple[torch.Tensor, np.ndarray]:
        drrs, geometry, _ = read_drr_stack(self.items[i].path)
        views = _resample(torch.from_numpy(np.ascontiguousarray(drrs, dtype=np.float32)),
                          int(self.sampling.image_size))
        return views, np.asarray(geometry.angles, dtype=np.float64)

    def _entry(self, i: int):
        """The cached (views, angles) of stack ``i``, or None when it cannot be read."""
        if i in self.bad:
            return None
        if i in self._memory:
            self._memory.move_to_end(i)
            return self._memory[i]
        try:
            entry = self._load(i)
            if _distinct_angles(entry[1]) < 2:
                raise InputError("has fewer than 2 distinct angles", self.items[i].path)
        except (XrayWorldModelError, OSError) as exc:
            self.bad[i] = str(exc)
            warnings.warn(f"skipping DRR stack {self.items[i].id}: {exc}", StackLoadWarning,
                          stacklevel=3)
            return None
        self._memory[i] = entry
        if len(self._memory) > self.max_in_memory:
            self._memory.popitem(last=False)
        return entry

    def get(self, index: int, replace: bool = True):
        """(views [A, S, S] float32 tensor, angles [A] degrees, item) of stack ``index``; an
        unreadable stack is reported once and, with ``replace``, the next readable one is
        used (``None`` without)."""
        n = len(self.items)
        if n == 0:
            raise InputError("no DRR stacks to draw from", self.where)
        for k in range(n if replace else 1):
            i = (int(index) + k) % n
            entry = self._entry(i)
            if entry is not None:
                return entry[0], entry[1], self.items[i]
        if not replace:
            return None
        raise InputError(f"none of the {n} DRR stacks could be read (first error: "
                         f"{next(iter(self.bad.values()), 'n/a')})", self.where)

    # ------------------------------------------------------------------ training samples
    def sample(self, stack_index: int, rng: np.random.Generator,
               sampling: Optional[ViewSampling] = None) -> StackSample:
        """One sample of stack ``stack_index`` drawn from ``rng`` alone: the context angle
        (configured distribution, snapped to the stack), K targets, intensity jitter, noise
        and the context's radiograph style from ``sampling`` (default: the set's; its image
        size is always the set's)."""
        s = sampling or self.sampling
        views, angles, item = self.get(stack_index)
        ci = pick_context(angles, s, rng)
        ti = pick_targets(angles, ci, s.deltas_deg, s.targets_per_context, rng)
        img = views[np.concatenate([[ci], ti])].clone()             # [1+K, H, W]
        if s.intensity_jitter:     # line integrals scale with mu_water
            img = img * float(1.0 + rng.uniform(-s.intensity_jitter, s.intensity_jitter))
        if s.noise_std:
            img = img + torch.from_numpy(
                rng.normal(0.0, s.noise_std, size=tuple(img.shape)).astype(np.float32))
        img = augment_context(img, s, rng)     # the input view only
        return StackSample(img[:1], img[1:, None], float(angles[ci]),
                           wrap_deg(angles[ti] - angles[ci]), item.tilt, item.id, ci, ti)

    def batch(self, indices: Sequence[int], rngs, ids: Optional[Sequence[str]] = None) -> ViewBatch:
        """A :class:`ViewBatch` (the contract of ``ViewRenderer.render``): sample ``b`` from
        stack ``indices[b]`` and ``rngs[b]`` alone (one generator is split per sample).
        ``ids`` default to the stacks' ids (of the stack actually used)."""
        indices = [int(i) for i in indices]
        if isinstance(rngs, np.random.Generator):
            rngs = rngs.spawn(len(indices))
        samples = [self.sample(i, rng) for i, rng in zip(indices, rngs)]
        if not samples:
            raise InputError("a batch needs at least one sample")
        f32 = torch.float32
        return ViewBatch(torch.stack([x.context for x in samples]),
                         torch.stack([x.targets for x in samples]),
                         torch.tensor([x.context_angle for x in samples], dtype=f32),
                         torch.as_tensor(np.stack([x.deltas for x in samples]), dtype=f32),
                         torch.tensor([x.tilt for x in samples], dtype=f32),
                         list(ids) if ids is not None else [x.id for x in samples])

    # ------------------------------------------------------------------ evaluation
    def views_at(self, index: int, angles: Sequence[float], tol: Optional[float] = ANGLE_TOLERANCE_DEG,
                 replace: bool = False):
        """(views [T, S, S] numpy, actual angles [T], item) of stack ``index`` nearest each
        of ``angles`` (no augmentation); :class:`InputError` when one is further than ``tol``
        degrees (``None``: no limit); ``None`` when the stack is unreadable (``replace``:
        use the next readable one)."""
        got = self.get(index, replace=replace)
        if got is None:
            return None
        views, have, item = got
        idx, actual = [], []
        for a in angles:
            i, d = nearest_angle(have, a)
            if tol is not None and d > tol:
                raise InputError(f"has no view within {tol:g} deg of {float(a):g} deg "
                                 f"(nearest: {have[i]:g} deg)", item.path)
            idx.append(i)
            actual.append(float(have[i]))
        return views[idx].numpy(), np.asarray(actual), item

    def true_views(self, context_angle: float, target_angles: Sequence[float]) -> TrueViews:
        """The stored views of every readable stack: the one nearest ``context_angle`` (any
        distance; reported once when over :data:`ANGLE_TOLERANCE_DEG`), then those nearest
        each target angle (within 1 deg, else :class:`InputError`), with their actual angles."""
        targets = [float(a) for a in target_angles]
        views, angles = [], []
        for i in range(len(self)):
            got = self.get(i, replace=False)
            if got is None:
                continue
            _, have, item = got
            c, d = nearest_angle(have, context_angle)
            if d > ANGLE_TOLERANCE_DEG and not self._warned_context:
                self._warned_context = True
                warnings.warn(f"DRR stack {item.id} has no view at the {context_angle:g} deg "
                              f"context angle; validating from its {have[c]:g} deg view",
                              StackLoadWarning, stacklevel=3)
            cv, ca, _ = self.views_at(i, [have[c]], tol=None)
            tv, ta, _ = self.views_at(i, targets)
            views.append(np.concatenate([cv, tv]))
            angles.append(np.concatenate([ca, ta]))
        if not views:
            raise InputError("none of the validation DRR stacks could be read", self.where)
        return TrueViews(np.stack(views), np.stack(angles))

    def mean_views(self, angles: Sequence[float], limit: int = 16) -> Dict[float, np.ndarray]:
        """The mean stored view at each angle (the 'mean view' baseline) over the first
        ``limit`` readable stacks, each taken at its angle nearest (within 1 deg) the wanted
        one."""
        angles = [float(a) for a in angles]
        acc = []
        for i in range(len(self)):
            if len(acc) >= limit:
                break
            got = self.views_at(i, angles)
            if got is not None:
                acc.append(got[0])
        if not acc:
            raise InputError("no readable DRR stack for the mean-view baseline", self.where)
        mean = np.mean(np.stack(acc), axis=0)
        return {a: mean[k] for k, a in enumerate(angles)}


__all__ = ["ANGLE_TOLERANCE_DEG", "DRRStackSet", "STACK_SOURCE_PREFIX", "StackFieldOfViewWarning",
           "StackItem", "StackLoadWarning", "StackSample", "is_stack_source", "list_stacks",
           "nearest_angle", "pick_context", "pick_targets", "probe_stack", "stack_source_path",
           "wrap_deg"]

"""Where training CTs come from: a folder, a CSV manifest (with optional labels),
``phantom:N`` procedural chests, ``anatomy:K:SRC`` (K augmented patients made from each CT
of SRC, :mod:`.anatomy`), or a mixture ``A+B+...`` of those. Each becomes a :class:`CTItem`
that loads lazily."""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional

from ..conventions import CT_VOLUME_SUFFIXES as CT_SUFFIXES
from ..errors import EmptyFolderError, FileNotFoundInputError, InputError
from ..io import read_ct
from ..phantom.source import is_phantom_source, parse_phantom_source
from ..phantom.variants import CHEST_KINDS, chest_volume
from ..volume import Volume
from .anatomy import NAMED_RANGES, augment_anatomy, named_ranges

PHANTOM_SHAPE = (128, 128, 96)
PHANTOM_SPACING = (2.8, 2.8, 3.5)


@dataclass
class CTItem:
    """One training CT: a stable id, how to load it, and its labels (may be empty)."""

    id: str
    spec: str                                   # path, or "phantom:chest:SEED"
    labels: Dict[str, float] = field(default_factory=dict)
    loader: Optional[Callable[[], Volume]] = field(default=None, repr=False)
    # a CT made from another one (anatomy augmentation): the training cache preprocesses
    # ``base`` and applies ``derive`` to that, not to the full-resolution CT
    base: Optional["CTItem"] = field(default=None, repr=False)
    derive: Optional[Callable[[Volume], Volume]] = field(default=None, repr=False)

    def load(self) -> Volume:
        return self.loader()


def _phantom_items(n: int, first_seed: int = 0, kind: str = "chest") -> List[CTItem]:
    """Chests of ``kind`` (``phantom:N[:FIRST_SEED][:KIND]``); ids ``phantom-SSSSS`` for the
    default chest, ``KIND-SSSSS`` for a variant, so a mixture never repeats an id."""
    def make(seed):
        return lambda: chest_volume(kind, seed=seed, shape=PHANTOM_SHAPE, spacing=PHANTOM_SPACING)
    prefix = "phantom" if kind == "chest" else kind
    return [CTItem(f"{prefix}-{s:05d}", f"phantom:{kind}:{s}", {}, make(s))
            for s in range(first_seed, first_seed + n)]


def _file_item(path: Path, labels=None, item_id: Optional[str] = None) -> CTItem:
    stem = path.name
    for suf in CT_SUFFIXES:
        if stem.lower().endswith(suf):
            stem = stem[: -len(suf)]
            break
    return CTItem(item_id or stem, str(path), dict(labels or {}), lambda: read_ct(path))


def _is_ct_path(p: Path) -> bool:
    name = p.name.lower()
    return (p.is_file() and name.endswith(CT_SUFFIXES)) or (p.is_dir() and any(p.iterdir()))


def _manifest_items(path: Path) -> List[CTItem]:
    """CSV with a ``path`` column (relative to the CSV), optional ``id``, and any other
    numeric columns as labels (empty cells are missing labels)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "path" not in rows[0]:
        raise InputError("a CT manifest needs a header row with a 'path' column", path)
    items = []
    for n, row in enumerate(rows, start=2):
        p = Path(row["path"].strip())
        p = p if p.is_absolute() else path.parent / p
        if not p.exists():
            raise FileNotFoundInputError(f"line {n} names {p}, which does not exist", path)
        labels = {}
        for key, value in row.items():
            if key in ("path", "id") or value is None or value.strip() == "":
                continue
            try:
                labels[key] = float(value)
            except ValueError:
                raise InputError(f"line {n}: label {key!r} is not a number: {value!r}", path) from None
        items.append(_file_item(p, labels, (row.get("id") or "").strip() or None))
    return items


def resolve_source(source: str) -> List[CTItem]:
    """The CTs named by ``source``: ``phantom:N`` (or ``phantom:N:FIRST_SEED``), a CSV
    manifest, a single CT, a folder of CT files / DICOM series subfolders,
    ``anatomy:K[:FIRST_SEED][:RANGES]:SRC``, or several of these joined by ``+`` (in that order)."""
    parts = _mixture_parts(str(source))
    if len(parts) > 1:
        return [item for part in parts for item in resolve_source(part)]
    if is_anatomy_source(source):
        return _anatomy_items(source)
    if is_phantom_source(source):
        chests = parse_phantom_source(source, kinds=CHEST_KINDS)
        return _phantom_items(chests.count, chests.first_seed, chests.kind)
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundInputError("no such file or folder", path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return _manifest_items(path)
    if path.is_file():
        return [_file_item(path)]
    entries = sorted(path.iterdir())
    items = [_file_item(p) for p in entries if _is_ct_path(p)]
    if not items:
        # a folder that is itself one DICOM series
        if any(p.is_file() for p in entries):
            return [_file_item(path)]
        raise EmptyFolderError("folder holds no CT files (NIfTI, NRRD, MetaImage) or DICOM series", path)
    return items


# ---------------------------------------------------------------- augmented real anatomy

ANATOMY_PREFIX = "anatomy:"
_ANATOMY_SPELLING = ("anatomy:K[:FIRST_SEED][:RANGES]:SRC (K >= 1 patients per CT of SRC; "
                     f"RANGES one of {sorted(NAMED_RANGES)}, default 'default')")


class AnatomySource(NamedTuple):
    """What ``anatomy:K[:FIRST_SEED][:RANGES]:SRC`` asks for."""

    count: int
    first_seed: int
    ranges: str          # a name in :data:`~.anatomy.NAMED_RANGES`
    source: str


def is_anatomy_source(text: str) -> bool:
    """Whether ``text`` names augmented patients (``anatomy:...``)."""
    return str(text).lower().startswith(ANATOMY_PREFIX)


def parse_anatomy_source(spec: str) -> AnatomySource:
    """The parts of ``anatomy:K[:FIRST_SEED][:RANGES]:SRC`` (seeds FIRST_SEED .. +K-1,
    ranges ``default`` unless named); :class:`InputError` naming the spelling otherwise."""
    parts = str(spec).split(":", 2)
    try:
        if len(parts) < 3 or not is_anatomy_source(spec):
            raise ValueError
        count, rest = int(parts[1]), parts[2]
        head, sep, tail = rest.partition(":")
        first = 0
        if sep and head.strip().lstrip("-").isdigit():
            first, rest = int(head), tail
        ranges = "default"
        head, sep, tail = rest.partition(":")
        if sep and head.strip() in NAMED_RANGES:
            ranges, rest = head.strip(), tail
    except ValueError:
        raise InputError(f"cannot read {spec!r}; use {_ANATOMY_SPELLING}") from None
    if count < 1 or first < 0 or not rest.strip():
        raise InputError(f"cannot read {spec!r}; use {_ANATOMY_SPELLING}")
    return AnatomySource(count, first, ranges, rest)


def anatomy_source(count: int, source, ranges: str = "default") -> str:
    """The spelling of ``count`` augmented patients per CT of ``source`` drawn with the named
    ``ranges``: the inverse of :func:`parse_anatomy_source`."""
    named_ranges(ranges)
    return f"{ANATOMY_PREFIX}{int(count)}:{'' if ranges == 'default' else ranges + ':'}{source}"


def augmented_item(base: CTItem, seed: int, ranges: str = "default") -> CTItem:
    """Patient ``seed`` made from ``base`` with the named ``ranges``: id
    ``anatomy-<base id>-<seed>`` (``anatomy-<ranges>-<base id>-<seed>`` for other ranges, so a
    mixture of both never repeats an id), spec ``anatomy:1:<seed>[:<ranges>]:<base spec>``
    (what the cache keys it by). No labels: the deformation changes the sizes labels measure
    (heart volume, ratios)."""
    seed, r = int(seed), named_ranges(ranges)
    tag = "" if ranges == "default" else f"{ranges}-"
    spec_ranges = "" if ranges == "default" else f"{ranges}:"
    return CTItem(f"anatomy-{tag}{base.id}-{seed}", f"{ANATOMY_PREFIX}1:{seed}:{spec_ranges}{base.spec}",
                  {}, lambda: augment_anatomy(base.load(), seed, r), base,
                  lambda volume: augment_anatomy(volume, seed, r))


def _anatomy_items(spec: str) -> List[CTItem]:
    a = parse_anatomy_source(spec)
    return [augmented_item(base, seed, a.ranges) for base in resolve_source(a.source)
            for seed in range(a.first_seed, a.first_seed + a.count)]


def _names_a_path(text: str) -> bool:
    """Whether ``text`` is an existing path, or ``anatomy:...`` of one."""
    if is_anatomy_source(text):
        try:
            return _names_a_path(parse_anatomy_source(text).source)
        except InputError:
            return False
    return Path(text.strip()).expanduser().exists()


def _mixture_parts(source: str) -> List[str]:
    """``A+B+...`` split at ``+``; a ``+`` inside an existing path (of a part) stays: the
    longest run of pieces that names an existing path is one part. An empty part fails."""
    pieces = source.split("+")
    parts, i = [], 0
    while i < len(pieces):
        j = next((j for j in range(len(pieces), i + 1, -1) if _names_a_path("+".join(pieces[i:j]))),
                 i + 1)
        parts.append("+".join(pieces[i:j]).strip())
        i = j
    if len(parts) > 1 and not all(parts):
        raise InputError(f"empty source in mixture {source!r}; join sources as A+B")
    if len(parts) > 1 and any(p.lower().startswith("stacks:") for p in parts):
        raise InputError(f"stacks: sources cannot be mixed with CT sources: {source!r}")
    return parts

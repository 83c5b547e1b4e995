"""Where training CTs come from: a folder, a CSV manifest (with optional labels), or
``phantom:N`` procedural chests. Each becomes a :class:`CTItem` that loads lazily."""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..conventions import CT_VOLUME_SUFFIXES as CT_SUFFIXES
from ..errors import EmptyFolderError, FileNotFoundInputError, InputError
from ..io import read_ct
from ..phantom import procedural_chest
from ..phantom.source import is_phantom_source, parse_phantom_source
from ..volume import Volume

PHANTOM_SHAPE = (128, 128, 96)
PHANTOM_SPACING = (2.8, 2.8, 3.5)


@dataclass
class CTItem:
    """One training CT: a stable id, how to load it, and its labels (may be empty)."""

    id: str
    spec: str                                   # path, or "phantom:chest:SEED"
    labels: Dict[str, float] = field(default_factory=dict)
    loader: Optional[Callable[[], Volume]] = field(default=None, repr=False)

    def load(self) -> Volume:
        return self.loader()


def _phantom_items(n: int, first_seed: int = 0) -> List[CTItem]:
    def make(seed):
        return lambda: procedural_chest(seed, PHANTOM_SHAPE, PHANTOM_SPACING)
    return [CTItem(f"phantom-{s:05d}", f"phantom:chest:{s}", {}, make(s))
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
    manifest, a single CT, or a folder of CT files / DICOM series subfolders."""
    if is_phantom_source(source):
        chests = parse_phantom_source(source, kinds=("chest",))
        return _phantom_items(chests.count, chests.first_seed)
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

"""Files the package writes and fingerprints: atomic replacement and SHA256 digests.

Outputs (DRR stacks, checkpoints, cache entries) are written to a temporary name beside
the target and moved into place only when complete, so an interrupted job never leaves a
half-written file under a final name; digests identify inputs and detect tampering.
"""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, Path]


def sha256_file(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_of(path: PathLike) -> str:
    """SHA256 of a file, or of a folder (its sorted files' relative names and digests)."""
    p = Path(path)
    if not p.is_dir():
        return sha256_file(p)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(f.relative_to(p).as_posix().encode() + b"\0" + sha256_file(f).encode() + b"\n")
    return h.hexdigest()


def _tmp_name(final: Path) -> Path:
    """A hidden temporary name beside ``final`` that keeps its suffix (writers such as
    SimpleITK pick the format by it)."""
    suffix = ".nii.gz" if final.name.lower().endswith(".nii.gz") else final.suffix
    return final.with_name(f".{final.name}.{os.getpid()}.tmp{suffix}")


@contextmanager
def atomic_path(final: PathLike, fsync: bool = True) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: write(tmp)``: ``tmp`` is synced and moved onto ``p``
    only if the block succeeds; otherwise it is removed and ``p`` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()

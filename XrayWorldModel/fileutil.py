"""Files the package writes and fingerprints: output checks, atomic replacement and SHA256
digests.

Output locations are checked before any work starts (:func:`check_output_folder`,
:func:`check_output_file`): the right kind of path, in a folder that can be written, and
nothing is created by the check. Outputs (DRR stacks, checkpoints, cache entries) are
written to a temporary name beside the target and moved into place only when complete, so
an interrupted job never leaves a half-written file under a final name; digests identify
inputs and detect tampering.
"""
from __future__ import annotations

import hashlib
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from .errors import InputError

PathLike = Union[str, Path]


# ----------------------------------------------------------------------------- output checks
def _read_only(folder: Path) -> bool:
    """A folder we may not write in: no permission, a read-only file system, or no write
    bit for anyone (honoured even for root, who could write anyway: the owner said no)."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return True
    return not os.access(folder, os.W_OK | os.X_OK) or not mode & 0o222


def _check_writable_folder(folder: Path, option: str) -> None:
    """:class:`InputError` unless ``folder`` can be written in or created; creates nothing."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"cannot create the output folder for {option}: {existing} is a file, "
                         "not a folder", folder)
    if _read_only(existing):
        if existing == folder:
            raise InputError(f"the output folder is read-only; give {option} a folder you can "
                             "write in", folder)
        raise InputError(f"cannot create the output folder for {option}: {existing} is "
                         "read-only", folder)


def check_output_folder(path: PathLike, option: str = "--out",
                        holds: str = "the outputs") -> Path:
    """Before any work: ``path`` is a folder (or can be made one) that we can write in.
    Returns it (user-expanded); creates nothing."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise InputError(f"exists and is a file; {option} names a folder for {holds}", p)
    _check_writable_folder(p, option)
    return p


def check_output_file(path: PathLike, option: str = "--out",
                      suffixes: Optional[Sequence[str]] = None, what: str = "file") -> Path:
    """Before any work: ``path`` names a file (not a folder; with one of ``suffixes`` when
    given) in a folder that we can write in or create. Returns it; creates nothing."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"is a folder; {option} names a {what}", p)
    if suffixes and not p.name.lower().endswith(tuple(suffixes)):
        raise InputError(f"{option} names a {what} ending in {', '.join(suffixes)}", p)
    _check_writable_folder(p.parent, option)
    if p.exists() and not os.access(p, os.W_OK):
        raise InputError(f"exists and is read-only; give {option} a file you can write", p)
    return p



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


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask: from /proc on Linux, else by setting and restoring it (under a
    lock; a file another thread creates in that instant would get 022)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain new file gets here: ``0o666`` less the umask (``0o644`` for 022)."""
    return 0o666 & ~current_umask()


@contextmanager
def atomic_path(final: PathLike, fsync: bool = True) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: write(tmp)``: ``tmp`` is synced and moved onto ``p``
    only if the block succeeds; otherwise it is removed and ``p`` is untouched. The file
    gets the mode a plain new file gets under the umask, whatever the writer chose
    (safetensors, for one, creates its files 0600)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()

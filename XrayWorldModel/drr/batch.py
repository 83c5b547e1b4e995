"""The DRR batch job behind ``xray2xray drr``: CT inputs to one DRR stack each.

Inputs are CT files, DICOM folders, ``.txt``/``.csv`` manifests and built-in phantoms
(:mod:`..phantom.source`). Many inputs go to a folder, one stack per CT, named after the
input with ``_2``, ``_3`` ... where names would collide. The job is

* resumable: a complete stack made with the same request (input, geometry, method,
  mu-water) is kept, one made with other settings stops the job unless told to overwrite;
* sharded: process I of N takes inputs[I::N] (options, else torchrun's WORLD_SIZE/RANK);
* forgiving: in a many-CT job one bad CT is reported in one line and the others go on.

The renderer comes in as a function, so that this module stays torch-free and bad input is
found before torch is imported.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ..console import Progress, emit_error, progress_bar
from ..conventions import CT_INPUT_SUFFIXES, MU_WATER, NIFTI_SUFFIXES
from ..errors import FileNotFoundInputError, InputError, UnreadableFileError, XrayWorldModelError
from ..fileutil import check_output_file, check_output_folder, sha256_of
from ..geometry import ProjectionGeometry
from ..io import read_ct
from ..io.drr_stack import sidecar_path, stack_complete, stack_path, write_drr_stack
from ..phantom.source import PHANTOM_KINDS, is_phantom_source, parse_phantom_source
from ..volume import Volume

MANIFEST_SUFFIXES = (".txt", ".csv")
#: ``renderer(volume, resolved_geometry, units)`` -> (DRRs [angles, H, W], device used).
Renderer = Callable[[Volume, ProjectionGeometry, str], Tuple[np.ndarray, object]]


# ----------------------------------------------------------------------------- inputs
@dataclass
class Source:
    """One CT to render: a file or DICOM folder, or a built-in phantom (``phantom:...``)."""

    spec: str                          # the path (absolute) or the phantom spec
    path: Optional[Path] = None        # None for phantoms
    listed_in: Optional[str] = None    # "manifest M line N", for error messages

    @property
    def is_phantom(self) -> bool:
        return self.path is None

    def stem(self) -> str:
        """Output name: the file name without its image suffix, or the phantom spec."""
        if self.path is None:
            raw = self.spec.replace(":", "_")
        else:
            raw = self.path.name
            for suf in CT_INPUT_SUFFIXES:
                if raw.lower().endswith(suf) and len(raw) > len(suf):
                    raw = raw[: -len(suf)]
                    break
            else:
                raw = self.path.stem if self.path.is_file() else raw
        clean = "".join(c if c.isalnum() or c in "._-" else "_" for c in raw).strip("._")
        return clean or "ct"

    def check_exists(self) -> None:
        if self.path is not None and not self.path.exists():
            where = f"listed in {self.listed_in}: " if self.listed_in else ""
            raise FileNotFoundInputError(f"{where}no such file or folder", self.path)

    def load(self) -> Tuple[Volume, str]:
        """(Volume, units) where units is what the renderer expects: 'hu' or 'mu'."""
        if self.path is not None:
            return read_ct(self.path), "hu"
        return parse_phantom_source(self.spec).load()

    def sha256(self, volume: Volume) -> Tuple[str, str]:
        """(hash, what was hashed): the input file/folder, or a phantom's voxels."""
        if self.path is not None:
            return sha256_of(self.path), "folder" if self.path.is_dir() else "file"
        arr = np.ascontiguousarray(volume.array)
        return hashlib.sha256(arr.tobytes()).hexdigest(), f"array {arr.dtype} {list(arr.shape)}"


def phantom_sources(spec: str, listed_in: Optional[str] = None) -> List[Source]:
    """The sources a ``phantom:...`` input names: itself when it names one phantom, else
    one ``phantom:chest:SEED`` per chest of ``phantom:N[:FIRST_SEED]``."""
    phantoms = parse_phantom_source(spec)
    names_one = spec.split(":")[1].lower() in PHANTOM_KINDS   # kept as spelled: the stem
    return [Source(name, None, listed_in) for name in ([spec] if names_one else phantoms.specs())]


def _path_source(p: Path, listed_in: Optional[str] = None) -> Source:
    p = p.resolve()
    return Source(str(p), p, listed_in)


def read_manifest(path: Path) -> List[Source]:
    """One input per line (first field for .csv); relative to the manifest; # comments."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableFileError("a manifest must be a UTF-8 text file listing one CT path "
                                  "per line", path) from exc
    csv = path.suffix.lower() == ".csv"
    sources: List[Source] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        entry = line.split(",")[0].strip().strip('"') if csv else line
        if not entry or (csv and not sources
                         and entry.lower() in ("path", "file", "filename", "ct", "input")):
            continue   # a CSV header
        where = f"manifest {path} line {n}"
        if is_phantom_source(entry):
            sources.extend(phantom_sources(entry, where))
            continue
        p = Path(entry).expanduser()
        sources.append(_path_source(p if p.is_absolute() else path.parent / p, where))
    if not sources:
        raise InputError("the manifest lists no inputs (one CT path per line expected)", path)
    return sources


def expand_inputs(tokens: Sequence[str]) -> Tuple[List[Source], bool]:
    """Command-line inputs -> sources, and whether a manifest was among them."""
    sources: List[Source] = []
    manifest = False
    for tok in tokens:
        if is_phantom_source(tok):
            sources.extend(phantom_sources(tok))
            continue
        p = Path(tok).expanduser()
        if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES:
            sources.extend(read_manifest(p))
            manifest = True
        else:
            sources.append(_path_source(p))
    return sources, manifest


def unique_stems(sources: Sequence[Source]) -> List[str]:
    """Output names from input stems, with ``_2``, ``_3`` ... where they would collide."""
    taken, names = set(), []
    for src in sources:
        base = name = src.stem()
        k = 1
        while name.lower() in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name.lower())
        names.append(name)
    return names


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {name}={value!r} is not an integer") from None


def shard_of(num_shards: Optional[int], shard_index: Optional[int]) -> Tuple[int, int]:
    """(N, I) from the options, else torchrun's WORLD_SIZE / RANK, else (1, 0)."""
    n = num_shards if num_shards is not None else _env_int("WORLD_SIZE", 1)
    i = shard_index if shard_index is not None else _env_int("RANK", 0)
    if n < 1:
        raise InputError(f"--num-shards must be at least 1, got {n}")
    if not 0 <= i < n:
        raise InputError(f"--shard-index must lie in 0..{n - 1} for {n} shards, got {i}")
    return n, i


# ----------------------------------------------------------------------------- the plan
@dataclass
class BatchPlan:
    """Every input with its output stack, and this process's share of them."""

    sources: List[Source]
    targets: List[Path]
    out: Path                          # the stack (one input) or the folder (many)
    many: bool
    num_shards: int = 1
    shard_index: int = 0

    @property
    def jobs(self) -> List[Tuple[Source, Path]]:
        return list(zip(self.sources, self.targets))[self.shard_index::self.num_shards]


#: A file-name extension of another format (``.txt``, ``.mha``): letters only, unlike the
#: dotted parts of plain names (``sweep_1.5mm``, ``drr.v2``), which get ``.nii.gz`` appended.
_OTHER_FORMAT = re.compile(r"\.[A-Za-z]{1,5}")


def single_stack_path(out: Path) -> Path:
    """The stack file ``--out`` names for one input: a ``.nii``/``.nii.gz`` path as given, a
    new plain name with ``.nii.gz`` appended; never a file of another kind."""
    if out.name.lower().endswith(NIFTI_SUFFIXES):
        return out
    if out.exists():
        raise InputError("exists and is neither a folder nor a DRR stack; --out names the "
                         "stack file (.nii.gz or .nii) or a folder for it", out)
    if _OTHER_FORMAT.fullmatch(out.suffix):
        raise InputError(f"--out names the stack file (.nii.gz or .nii) or a folder for it, "
                         f"not a {out.suffix} file", out)
    return stack_path(out)


def plan_batch(inputs: Sequence[str], out, num_shards: Optional[int] = None,
               shard_index: Optional[int] = None) -> BatchPlan:
    """Check the inputs exist and name the outputs, and that ``out`` is of the right kind (a
    folder, or for one input a NIfTI stack file) in a place that can be written, so that a
    bad input or an unwritable output fails now, not after minutes of rendering. Creates
    nothing: a job that fails leaves no empty folder behind."""
    sources, manifest = expand_inputs(inputs)
    for src in sources:
        src.check_exists()
    many = manifest or len(sources) > 1
    out = Path(out).expanduser()
    names = unique_stems(sources)
    n, i = shard_of(num_shards, shard_index)
    if many and out.name.lower().endswith(NIFTI_SUFFIXES) and not out.is_dir():
        raise InputError("with several inputs --out names a folder (one stack per CT), not a "
                         "NIfTI file", out)
    if many or out.is_dir():
        check_output_folder(out, "--out", "the DRR stacks")
        targets = [out / f"{name}.nii.gz" for name in (names if many else names[:1])]
    else:
        targets = [check_output_file(single_stack_path(out), "--out", what="DRR stack file")]
    return BatchPlan(sources, targets, out, many, n, i)


# ----------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class RenderSettings:
    """How every stack of a job is rendered and written."""

    method: str = "fast"
    mu_water: float = MU_WATER
    png: bool = False
    dicom: bool = False


class JobError(XrayWorldModelError):
    """A problem with the whole job (not one CT): stops a many-CT run at once."""


def stack_request(src: Source, geometry: ProjectionGeometry, settings: RenderSettings) -> dict:
    """What a stack was asked to be; a complete stack is reused only for the same request."""
    g = geometry.to_dict()
    g.pop("isocenter_lps_mm", None)
    return {"input": src.spec, "geometry": g, "method": settings.method,
            "mu_water": settings.mu_water}


def stack_state(out: Path, request: dict) -> str:
    """'complete' (same request), 'different' (complete, other settings) or 'todo'."""
    if not stack_complete(out):
        return "todo"
    try:
        with open(sidecar_path(out), encoding="utf-8") as f:
            old = json.load(f).get("request")
    except (OSError, ValueError):
        return "todo"
    return "complete" if old == request else "different"


def render_one(src: Source, out: Path, geometry: ProjectionGeometry, settings: RenderSettings,
               renderer: Renderer, shard: Tuple[int, int] = (0, 1)) -> Path:
    """Read, render and write one stack; returns the NIfTI path."""
    t0 = time.perf_counter()
    volume, units = src.load()
    t1 = time.perf_counter()
    g = geometry.resolve(volume)
    drrs, device = renderer(volume, g, units)
    t2 = time.perf_counter()
    digest, hashed = src.sha256(volume)
    t3 = time.perf_counter()
    meta = {
        "method": settings.method, "mu_water": settings.mu_water, "units": units,
        "device": str(device), "name": src.stem(), "inputs": [src.spec],
        "input_sha256": digest, "input_sha256_of": hashed,
        "volume_shape": list(volume.shape), "volume_affine_lps": volume.affine.tolist(),
        "request": stack_request(src, geometry, settings), "shard": list(shard),
        "timings_s": {"read": round(t1 - t0, 4), "render": round(t2 - t1, 4),
                      "hash": round(t3 - t2, 4)},
    }
    return write_drr_stack(drrs, g, out, meta, png=settings.png, dicom=settings.dicom)


# ----------------------------------------------------------------------------- the job
@dataclass
class BatchResult:
    written: List[Path] = field(default_factory=list)
    skipped: int = 0
    failed: int = 0


def _todo(plan: BatchPlan, geometry: ProjectionGeometry, settings: RenderSettings,
          overwrite: bool) -> Tuple[List[Tuple[Source, Path]], int]:
    """This shard's stacks still to render, and how many are complete already."""
    todo, skipped = [], 0
    for src, out in plan.jobs:
        state = "todo" if overwrite else stack_state(out, stack_request(src, geometry, settings))
        if state == "complete":
            skipped += 1
        elif state == "different":
            raise InputError("already holds a complete DRR stack made with other settings "
                             "(input, angles, detector, distances, method or mu-water); "
                             "pass --overwrite to replace it or choose another --out",
                             sidecar_path(out))
        else:
            todo.append((src, out))
    return todo, skipped


def run_batch(plan: BatchPlan, geometry: ProjectionGeometry, settings: RenderSettings,
              renderer: Renderer, overwrite: bool = False, progress: Progress = False) -> BatchResult:
    """Render this shard's stacks that are not complete yet. With one input an error stops
    the job; with many, a bad CT is reported in one line and counted, and the rest go on.
    ``progress``: a mode of :func:`~XrayWorldModel.console.show_progress` (or a bool)."""
    todo, skipped = _todo(plan, geometry, settings, overwrite)
    result = BatchResult(skipped=skipped)
    shard = (plan.shard_index, plan.num_shards)
    bar = progress_bar(todo, progress if len(todo) > 1 else False, desc="CTs", unit="CT")
    for src, out in bar:
        bar.set_postfix_str(src.stem(), refresh=False)
        try:
            result.written.append(render_one(src, out, geometry, settings, renderer, shard))
        except JobError:
            raise
        except XrayWorldModelError as exc:   # one bad CT must not sink a dataset job
            if not plan.many:
                raise
            result.failed += 1
            emit_error(exc)
    bar.close()
    return result

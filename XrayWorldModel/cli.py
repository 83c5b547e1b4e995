"""The ``xray2xray`` command line.

Subcommands:

* ``demo``        a built-in phantom (or a CXR) through the default model: report.png + results.
* ``infer``       one frontal CXR -> predicted views, a volume, scores, consistency (:mod:`.infer`).
* ``drr``         CT(s) -> DRR stacks (NIfTI + JSON sidecar, optional PNG/DICOM views); many CTs
  go to a folder, resumable and shardable across processes (torchrun's WORLD_SIZE/RANK).
* ``phantom``     a synthetic chest CT (HU), or a labelled cohort (``--cohort N``).
* ``recon``       DRR stack -> volume (FDK), in HU.
* ``train``, ``eval-views``, ``eval-volume``: the world model's training and evaluation.
* ``probe``       logistic / Cox heads on the model's latents (:mod:`.probe`).
* ``models``      list, fetch, import, remove and locate trained models (:mod:`.weights`).

Bad input ends with one line ``xray2xray: error: ...`` on stderr and exit status 2, never a
traceback; heavy modules (torch, the renderers) are imported only once inputs are known good.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .errors import FileNotFoundInputError, InputError, UnreadableFileError, XrayWorldModelError
from .conventions import CT_INPUT_SUFFIXES, MU_WATER, parse_angles
from .geometry import DEFAULT_SDD, DEFAULT_SOD, ProjectionGeometry

PROG = "xray2xray"
DEFAULT_DETECTOR = (256, 256)
DEFAULT_PIXEL_SPACING_MM = 1.6
DEFAULT_MU_WATER = MU_WATER
MANIFEST_SUFFIXES = (".txt", ".csv")
PHANTOM_KINDS = ("chest", "ellipsoid")
#: Ellipsoid phantom grid used for ``phantom:ellipsoid`` inputs (it fits a 256 mm cube).
ELLIPSOID_SHAPE, ELLIPSOID_SPACING = (128, 128, 128), 2.0
_CT_SUFFIXES = CT_INPUT_SUFFIXES


# ----------------------------------------------------------------------------- messages
def _emit(line: str) -> None:
    """One line on stderr, without breaking an active tqdm bar."""
    line = " ".join(str(line).split())
    try:
        from tqdm import tqdm
        tqdm.write(line, file=sys.stderr)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        print(line, file=sys.stderr)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    _emit(f"{PROG}: warning: {message}")


def _quiet_itk() -> None:
    """ITK prints multi-line C++ warnings straight to stderr; the package reports problems as
    typed errors and warnings instead, so those raw lines are switched off for the CLI."""
    try:
        import SimpleITK as sitk
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
    except (ImportError, AttributeError):  # pragma: no cover
        pass


def _progress() -> bool:
    """Progress bars only for a person watching (a terminal), never in logs or pipes."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


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
            for suf in _CT_SUFFIXES:
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

    def load(self):
        """(Volume, units) where units is what DRRRenderer expects: 'hu' or 'mu'."""
        if self.path is not None:
            from .io import read_ct
            return read_ct(self.path), "hu"
        kind, seed = parse_phantom_spec(self.spec)
        if kind == "chest":
            from .phantom import procedural_chest
            return procedural_chest(seed=seed), "hu"
        from .phantom import default_ellipsoid_phantom
        return default_ellipsoid_phantom().voxelize(ELLIPSOID_SHAPE, ELLIPSOID_SPACING), "mu"

    def sha256(self, volume) -> Tuple[str, str]:
        """(hash, what was hashed): the input file/folder, or a phantom's voxels."""
        if self.path is not None:
            from .fileutil import sha256_of
            return sha256_of(self.path), "folder" if self.path.is_dir() else "file"
        import numpy as np
        arr = np.ascontiguousarray(volume.array)
        return hashlib.sha256(arr.tobytes()).hexdigest(), f"array {arr.dtype} {list(arr.shape)}"


def parse_phantom_spec(spec: str) -> Tuple[str, int]:
    """``phantom:chest[:SEED]`` / ``phantom:ellipsoid`` -> (kind, seed)."""
    parts = spec.split(":")
    kind = parts[1].lower() if len(parts) > 1 else ""
    ok = kind in PHANTOM_KINDS and len(parts) <= (3 if kind == "chest" else 2)
    seed = 0
    if ok and len(parts) == 3:
        try:
            seed = int(parts[2])
        except ValueError:
            ok = False
    if not ok:
        raise InputError(f"unknown built-in phantom {spec!r}; use phantom:chest, "
                         "phantom:chest:SEED (an integer) or phantom:ellipsoid")
    return kind, seed


def read_manifest(path: Path) -> List[Source]:
    """One input per line (first field for .csv); relative to the manifest; # comments."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableFileError("a manifest must be a UTF-8 text file listing one CT path "
                                  "per line", path) from exc
    sources = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        entry = line.split(",")[0].strip().strip('"') if path.suffix.lower() == ".csv" else line
        if not entry or (path.suffix.lower() == ".csv" and not sources
                         and entry.lower() in ("path", "file", "filename", "ct", "input")):
            continue   # a CSV header
        if entry.lower().startswith("phantom:"):
            parse_phantom_spec(entry)
            sources.append(Source(entry, None, f"manifest {path} line {n}"))
            continue
        p = Path(entry).expanduser()
        p = p if p.is_absolute() else path.parent / p
        sources.append(Source(str(p.resolve()), p.resolve(), f"manifest {path} line {n}"))
    if not sources:
        raise InputError("the manifest lists no inputs (one CT path per line expected)", path)
    return sources


def expand_inputs(tokens: Sequence[str]) -> Tuple[List[Source], bool]:
    """Command-line inputs -> sources, and whether a manifest was among them."""
    sources: List[Source] = []
    manifest = False
    for tok in tokens:
        if tok.lower().startswith("phantom:"):
            parse_phantom_spec(tok)
            sources.append(Source(tok))
            continue
        p = Path(tok).expanduser()
        if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES:
            sources.extend(read_manifest(p))
            manifest = True
        else:
            sources.append(Source(str(p.resolve()), p.resolve()))
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


def shard_of(num_shards: Optional[int], shard_index: Optional[int]) -> Tuple[int, int]:
    """(N, I) from the options, else torchrun's WORLD_SIZE / RANK, else (1, 0)."""
    def env_int(name: str, default: int) -> int:
        value = os.environ.get(name)
        if value is None or value.strip() == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise InputError(f"environment variable {name}={value!r} is not an integer") from None

    n = num_shards if num_shards is not None else env_int("WORLD_SIZE", 1)
    i = shard_index if shard_index is not None else env_int("RANK", 0)
    if n < 1:
        raise InputError(f"--num-shards must be at least 1, got {n}")
    if not 0 <= i < n:
        raise InputError(f"--shard-index must lie in 0..{n - 1} for {n} shards, got {i}")
    return n, i


# ----------------------------------------------------------------------------- drr
def build_geometry(args) -> ProjectionGeometry:
    """The projection geometry the options describe (isocentre: each CT's centre)."""
    spacing = args.pixel_spacing
    if len(spacing) not in (1, 2):
        raise InputError(f"--pixel-spacing takes one value or two (row, column), got {len(spacing)}")
    kw = dict(detector_shape=tuple(args.detector),
              pixel_spacing=(spacing[0], spacing[-1]), sdd=args.sdd, sod=args.sod, tilt=args.tilt)
    if args.angle_range is not None:
        return ProjectionGeometry.from_range(*args.angle_range, **kw)
    return ProjectionGeometry(angles=tuple(parse_angles(args.angles)), **kw)


def _request(src: Source, geometry: ProjectionGeometry, args) -> dict:
    """What a stack was asked to be; a complete stack is reused only for the same request."""
    g = geometry.to_dict()
    g.pop("isocenter_lps_mm", None)
    return {"input": src.spec, "geometry": g, "method": args.method, "mu_water": args.mu_water}


def _state(out: Path, request: dict) -> str:
    """'complete' (same request), 'different' (complete, other settings) or 'todo'."""
    from .io.drr_stack import sidecar_path, stack_complete
    if not stack_complete(out):
        return "todo"
    import json
    try:
        with open(sidecar_path(out), encoding="utf-8") as f:
            old = json.load(f).get("request")
    except (OSError, ValueError):
        return "todo"
    return "complete" if old == request else "different"


class _JobError(XrayWorldModelError):
    """A problem with the whole job (not one CT): stops a many-CT run at once."""


class _LazyDevice:
    """The render device, resolved only once a CT has been read, so bad input fails fast
    without the cost of importing torch."""

    def __init__(self, method: str, name: str):
        self.method, self.name, self.value = method, name, None

    def get(self):
        if self.value is None:
            if self.method != "fast":
                self.value = "cpu"   # the exact renderer is a CPU reference
            else:
                from .drr import resolve_device
                try:
                    self.value = resolve_device(None if self.name == "auto" else self.name)
                except XrayWorldModelError as exc:
                    raise _JobError(f"--device: {exc}") from None
        return self.value


def render_one(src: Source, out: Path, geometry: ProjectionGeometry, args, device: _LazyDevice,
               shard: Tuple[int, int] = (0, 1)) -> Path:
    """Read, render and write one stack; returns the NIfTI path."""
    t0 = time.perf_counter()
    volume, units = src.load()
    t1 = time.perf_counter()
    dev = device.get()
    from .drr import render_drr
    from .io.drr_stack import write_drr_stack
    g = geometry.resolve(volume)
    drrs = render_drr(volume, g, method=args.method, device=dev, mu_water=args.mu_water,
                      units=units, progress=_progress())
    t2 = time.perf_counter()
    digest, hashed = src.sha256(volume)
    t3 = time.perf_counter()
    meta = {
        "method": args.method, "mu_water": args.mu_water, "units": units, "device": str(dev),
        "name": src.stem(), "inputs": [src.spec], "input_sha256": digest, "input_sha256_of": hashed,
        "volume_shape": list(volume.shape), "volume_affine_lps": volume.affine.tolist(),
        "request": _request(src, geometry, args), "shard": list(shard),
        "timings_s": {"read": round(t1 - t0, 4), "render": round(t2 - t1, 4),
                      "hash": round(t3 - t2, 4)},
    }
    return write_drr_stack(drrs, g, out, meta, png=args.png, dicom=args.dicom)


def cmd_drr(args) -> int:
    from .io.drr_stack import stack_path

    geometry = build_geometry(args)
    if args.mu_water <= 0:
        raise InputError(f"--mu-water must be positive, got {args.mu_water}")
    sources, manifest = expand_inputs(args.inputs)
    for src in sources:
        src.check_exists()
    many = manifest or len(sources) > 1
    out_arg = Path(args.out).expanduser()
    names = unique_stems(sources)
    if many:
        if out_arg.is_file():
            raise InputError("exists and is a file; with several inputs --out names a folder",
                             out_arg)
        targets = [out_arg / f"{name}.nii.gz" for name in names]
    elif out_arg.is_dir():
        targets = [out_arg / f"{names[0]}.nii.gz"]
    else:
        targets = [stack_path(out_arg)]

    n_shards, index = shard_of(args.num_shards, args.shard_index)
    # fail on an unwritable output now, not after minutes of rendering
    (out_arg if many else targets[0].parent).mkdir(parents=True, exist_ok=True)
    jobs = list(zip(sources, targets))[index::n_shards]
    shard_note = f" (shard {index} of {n_shards}: {len(jobs)} of {len(sources)} inputs)" \
        if n_shards > 1 else ""

    todo, skipped = [], 0
    for src, out in jobs:
        state = "todo" if args.overwrite else _state(out, _request(src, geometry, args))
        if state == "complete":
            skipped += 1
        elif state == "different":
            from .io.drr_stack import sidecar_path
            raise InputError("already holds a complete DRR stack made with other settings "
                             "(input, angles, detector, distances, method or mu-water); "
                             "pass --overwrite to replace it or choose another --out",
                             sidecar_path(out))
        else:
            todo.append((src, out))

    written, failed = [], 0
    if todo:
        device = _LazyDevice(args.method, args.device)
        from tqdm.auto import tqdm
        bar = tqdm(todo, desc="CTs", unit="CT", disable=not (_progress() and len(todo) > 1))
        for src, out in bar:
            bar.set_postfix_str(src.stem(), refresh=False)
            if not many:
                written.append(render_one(src, out, geometry, args, device, (index, n_shards)))
                continue
            try:
                written.append(render_one(src, out, geometry, args, device, (index, n_shards)))
            except _JobError:
                raise
            except XrayWorldModelError as exc:   # one bad CT must not sink a dataset job
                failed += 1
                _emit(f"{PROG}: error: {exc}")
        bar.close()

    where = out_arg if many else (written[0] if written else targets[0])
    parts = [f"wrote {len(written)} DRR stack{'s' if len(written) != 1 else ''} "
             f"({geometry.n_angles} view{'s' if geometry.n_angles != 1 else ''} each) to "
             f"{where}{shard_note}"]
    if skipped:
        parts.append(f"skipped {skipped} already complete")
    if failed:
        parts.append(f"{failed} failed")
    print("; ".join(parts))
    return 2 if failed else 0


# ----------------------------------------------------------------------------- phantom
def _check_volume_suffix(path: Path) -> None:
    from .io.ct import VOLUME_EXTENSIONS, format_from_suffix
    if format_from_suffix(path) is None:
        raise InputError("cannot tell the output format from the file name; use one of "
                         + ", ".join(VOLUME_EXTENSIONS), path)


def _triple(values, what: str):
    if values is None:
        return None
    if len(values) not in (1, 3):
        raise InputError(f"{what} takes one value or three (x y z), got {len(values)}")
    return tuple(values) * 3 if len(values) == 1 else tuple(values)


def _parse_prevalence(text: Optional[str]):
    """``--prevalence``: one probability for all five findings, or NAME=P[,NAME=P...]."""
    if text is None:
        return None
    from .phantom.findings import FINDINGS
    parts = [text] if "=" not in text else text.split(",")
    table = {}
    for part in parts:
        name, _, value = part.rpartition("=")
        name = name.strip().replace("-", "_")
        if name and name not in FINDINGS:
            raise InputError(f"--prevalence names an unknown finding {name!r}; use "
                             + ", ".join(FINDINGS))
        try:
            table[name] = float(value)
        except ValueError:
            raise InputError(f"--prevalence takes a number or NAME=P[,NAME=P...], got "
                             f"{text!r}") from None
    return table[""] if "" in table else table


def _cmd_cohort(args, shape, spacing) -> int:
    from .phantom.cohort import CohortConfig, write_cohort
    if args.kind != "chest":
        raise InputError("--cohort builds procedural chests; drop --kind ellipsoid")
    if args.cohort < 1:
        raise InputError(f"--cohort needs at least one case, got {args.cohort}")
    if args.seed < 0:
        raise InputError(f"--seed must be a non-negative integer, got {args.seed}")
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise InputError("with --cohort, --out is a folder for the CTs, not a file", out)
    prevalence = _parse_prevalence(args.prevalence)
    cfg = CohortConfig() if prevalence is None else CohortConfig.with_prevalence(prevalence)
    kw = {k: v for k, v in (("shape", shape), ("spacing", spacing)) if v is not None}
    res = write_cohort(args.cohort, out, args.labels, first_seed=args.seed, config=cfg,
                       write_masks=args.masks, overwrite=args.overwrite,
                       progress=_progress(), **kw)
    note = f"; kept {res['skipped']} already complete" if res["skipped"] else ""
    print(f"wrote {res['written']} cohort CT{'s' if res['written'] != 1 else ''} "
          f"(seeds {args.seed}..{args.seed + args.cohort - 1}) to {out}{note}; "
          f"labels in {res['csv']}")
    return 0


def cmd_phantom(args) -> int:
    from .io import write_volume
    from .volume import Volume

    shape = _triple(args.shape, "--shape")
    spacing = _triple(args.spacing, "--spacing")
    if args.cohort is not None:
        return _cmd_cohort(args, shape, spacing)
    for flag, given in (("--labels", args.labels is not None),
                        ("--prevalence", args.prevalence is not None),
                        ("--masks", args.masks), ("--overwrite", args.overwrite)):
        if given:
            raise InputError(f"{flag} goes with --cohort N")
    out = Path(args.out).expanduser()
    _check_volume_suffix(out)
    if args.kind == "chest":
        from .phantom import procedural_chest
        kw = {k: v for k, v in (("shape", shape), ("spacing", spacing)) if v is not None}
        vol = procedural_chest(seed=args.seed, **kw)
    else:
        import numpy as np
        from .phantom import default_ellipsoid_phantom
        mu = default_ellipsoid_phantom().voxelize(shape or ELLIPSOID_SHAPE,
                                                  spacing or ELLIPSOID_SPACING)
        hu = (1000.0 * (mu.array / DEFAULT_MU_WATER - 1.0)).astype(np.float32)
        vol = Volume(hu, mu.affine, {"units": "HU", "source": "default_ellipsoid_phantom"})
    write_volume(vol, out)
    print(f"wrote {args.kind} phantom {'x'.join(map(str, vol.shape))} "
          f"(spacing {', '.join(f'{s:g}' for s in vol.spacing)} mm, HU) to {out}")
    return 0


# ----------------------------------------------------------------------------- recon
def cmd_recon(args) -> int:
    import numpy as np
    from .io.drr_stack import read_drr_stack
    from .io import write_volume
    from .volume import Volume

    out = Path(args.out).expanduser()
    _check_volume_suffix(out)
    if args.size < 2:
        raise InputError(f"--size must be at least 2, got {args.size}")
    if args.spacing is not None and not args.spacing > 0:
        raise InputError(f"--spacing must be positive, got {args.spacing}")
    drrs, geometry, meta = read_drr_stack(args.stack)
    from . import recon
    t0 = time.perf_counter()
    vol = recon.fdk(drrs, geometry, shape=(args.size,) * 3, spacing=args.spacing,
                    filter=args.filter, device=None if args.device == "auto" else args.device,
                    progress=_progress())
    mu_water = float(meta.get("mu_water", DEFAULT_MU_WATER))
    hu = np.asarray(recon.mu_to_hu(vol.array, mu_water=mu_water), dtype=np.float32)
    write_volume(Volume(hu, vol.affine, {"units": "HU"}), out)
    print(f"wrote {args.size}^3 FDK reconstruction from {geometry.n_angles} views "
          f"({time.perf_counter() - t0:.1f} s) to {out}")
    return 0


# ----------------------------------------------------------------------------- parser
def _version() -> str:
    from .io.drr_stack import package_version
    return package_version()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Xray2Xray chest X-ray world model: DRR datasets from chest CTs, "
        "synthetic phantoms and reconstructions.")
    p.add_argument("--version", action="store_true", help="print the package version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser(
        "drr", help="render DRR stacks from CTs",
        description="Render digitally reconstructed radiographs (line integrals, float32) of "
        "one or many CTs. One input: --out is the stack file (OUT.nii.gz + OUT.json). Several "
        "inputs or a manifest: --out is a folder with one stack per CT; finished stacks are "
        "skipped, so an interrupted job is resumed by running it again.")
    d.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="CT file (NIfTI, NRRD, MetaImage) or DICOM folder; several; a .txt/.csv "
                   "manifest (one path per line, relative to the manifest, # comments); or "
                   "phantom:chest, phantom:chest:SEED, phantom:ellipsoid")
    d.add_argument("--out", required=True, help="stack path (one input) or folder (several)")
    ang = d.add_mutually_exclusive_group(required=True)
    ang.add_argument("--angles", metavar="DEG,DEG,...",
                     help="gantry angles in degrees: 0 PA, 90 left lateral, 180 AP, 270 right lateral")
    ang.add_argument("--angle-range", nargs=3, type=float, metavar=("START", "STOP", "STEP"),
                     help="angles START, START+STEP, ... below STOP (degrees)")
    d.add_argument("--detector", nargs=2, type=int, default=list(DEFAULT_DETECTOR),
                   metavar=("H", "W"), help="detector rows and columns (default: 256 256)")
    d.add_argument("--pixel-spacing", nargs="+", type=float, default=[DEFAULT_PIXEL_SPACING_MM],
                   metavar="MM", help="detector pixel spacing in mm, one value or row and column "
                   f"(default: {DEFAULT_PIXEL_SPACING_MM} mm, a 410 mm field at 256 pixels)")
    d.add_argument("--sdd", type=float, default=DEFAULT_SDD,
                   help=f"source-to-detector distance, mm (default: {DEFAULT_SDD:g})")
    d.add_argument("--sod", type=float, default=DEFAULT_SOD,
                   help=f"source-to-isocentre distance, mm (default: {DEFAULT_SOD:g})")
    d.add_argument("--tilt", type=float, default=0.0,
                   help="cranio-caudal tilt, degrees; positive moves the source towards the head")
    d.add_argument("--method", choices=("fast", "exact"), default="fast",
                   help="fast (Joseph, CPU or CUDA; default) or exact (Siddon, CPU reference)")
    d.add_argument("--device", default="auto",
                   help="auto (CUDA when available; default), cpu, cuda or cuda:N")
    d.add_argument("--mu-water", type=float, default=DEFAULT_MU_WATER,
                   help=f"attenuation of water, 1/mm, for HU conversion (default: {DEFAULT_MU_WATER})")
    d.add_argument("--png", action="store_true",
                   help="also write one 8-bit PNG per view (bone bright) in OUT_png/")
    d.add_argument("--dicom", action="store_true",
                   help="also write one DX DICOM per view in OUT_dicom/")
    d.add_argument("--num-shards", type=int, default=None,
                   help="split the inputs over N processes (default: $WORLD_SIZE or 1)")
    d.add_argument("--shard-index", type=int, default=None,
                   help="this process's shard, 0..N-1: inputs[I::N] (default: $RANK or 0)")
    d.add_argument("--overwrite", action="store_true",
                   help="render again even when a complete stack exists")
    d.set_defaults(func=cmd_drr)

    ph = sub.add_parser("phantom", help="write a synthetic chest CT (HU), or a labelled cohort",
                        description="Write a built-in phantom as a CT volume in HU; with "
                        "--cohort N, a labelled synthetic cohort: N chests with findings "
                        "(atelectasis, cardiomegaly, consolidation, edema, pleural effusion), "
                        "coronary and aortic calcium and a known event outcome, as NIfTI CTs "
                        "plus a label CSV usable as a training manifest. Resumable.")
    ph.add_argument("--kind", choices=PHANTOM_KINDS, default="chest",
                    help="chest (procedural, seeded; default) or ellipsoid (fixed, exact)")
    ph.add_argument("--seed", type=int, default=0,
                    help="chest anatomy seed; with --cohort the first case's seed (default: 0)")
    ph.add_argument("--out", required=True, help="output volume (.nii.gz, .nii, .nrrd, .mha); "
                    "with --cohort, the folder for the cases")
    ph.add_argument("--cohort", type=int, default=None, metavar="N",
                    help="write N labelled cases (seeds SEED..SEED+N-1) to the --out folder")
    ph.add_argument("--labels", default=None, metavar="CSV",
                    help="with --cohort: the label CSV (default: OUT/labels.csv)")
    ph.add_argument("--prevalence", default=None, metavar="P|NAME=P,...",
                    help="with --cohort: probability of each finding, one number for all or "
                    "e.g. edema=0.2,pleural_effusion=0.35 (default: 0.3 each)")
    ph.add_argument("--masks", action="store_true",
                    help="with --cohort: also write each case's finding mask (uint8 bits)")
    ph.add_argument("--overwrite", action="store_true",
                    help="with --cohort: rebuild cases that are already complete")
    ph.add_argument("--shape", nargs="+", type=int, metavar="N",
                    help="voxels, one value or X Y Z (default: chest 128 128 96, ellipsoid 128)")
    ph.add_argument("--spacing", nargs="+", type=float, metavar="MM",
                    help="voxel size in mm, one value or X Y Z (default: chest 2.8 2.8 3.5, "
                    "ellipsoid 2)")
    ph.set_defaults(func=cmd_phantom)

    r = sub.add_parser("recon", help="reconstruct a volume (FDK) from a DRR stack",
                       description="Cone-beam FDK reconstruction of a DRR stack written by "
                       "`xray2xray drr`; the volume is written in HU.")
    r.add_argument("stack", metavar="STACK", help="DRR stack (.nii.gz with its .json beside it)")
    r.add_argument("--out", required=True, help="output volume (.nii.gz, .nii, .nrrd, .mha)")
    r.add_argument("--size", type=int, default=128, help="voxels per side (default: 128)")
    r.add_argument("--spacing", type=float, default=None,
                   help="voxel size, mm (default: fit the field of view)")
    r.add_argument("--filter", default="hann", help="FDK ramp window (default: hann)")
    r.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    r.set_defaults(func=cmd_recon)

    t = sub.add_parser("train", help="train the world model on CTs (or phantoms)",
                       description="Train the world model. Views are rendered on the fly from the "
                       "configured CTs; checkpoints go to run.out_dir/checkpoints. Under torchrun "
                       "it trains data-parallel on every rank.")
    t.add_argument("--config", required=True,
                   help="a preset (cpu-small, paper) or a .json/.toml config file")
    t.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. optim.steps=500 data.source=phantom:32")
    t.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from a checkpoint (default: the latest in run.out_dir)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval-views", help="novel-view PSNR/SSIM of a trained model, as JSON",
                       description="Predict views at --angles from the frontal (0 deg) view of "
                       "each CT in --data and compare with the true DRRs, next to two "
                       "baselines: copying the input view and the mean training view.")
    e.add_argument("--model", required=True, help="checkpoint file or run folder")
    e.add_argument("--data", required=True, help="CT folder, CSV manifest or phantom:N[:SEED]")
    e.add_argument("--angles", default=None, help="target angles, e.g. 45,90 (default: the run's)")
    e.add_argument("--limit", type=int, default=None, help="evaluate at most N CTs")
    e.add_argument("--seed", type=int, default=None,
                   help="first phantom seed when --data is phantom:N (same as phantom:N:SEED)")
    e.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    e.set_defaults(func=cmd_eval_views)

    from .weights.cli import add_models_parser
    add_models_parser(sub)
    from .probe.cli import add_probe_parser
    add_probe_parser(sub)
    from .infer.cli import add_demo_parser, add_eval_volume_parser, add_infer_parser
    add_infer_parser(sub)
    add_demo_parser(sub)
    add_eval_volume_parser(sub)
    from .study.cli import add_study_parser
    add_study_parser(sub)
    return p


def cmd_train(args) -> int:
    from .config import load_config
    from .train.trainer import train
    cfg = load_config(args.config, args.overrides)
    last = train(cfg, resume=args.resume, progress=_progress())
    if int(os.environ.get("RANK", "0")) == 0:
        _emit(f"trained to step {cfg.optim.steps}; final loss {last.get('total', float('nan')):.4f}; "
              f"checkpoints in {Path(cfg.run.out_dir) / 'checkpoints'}")
    return 0


def cmd_eval_views(args) -> int:
    import json as _json
    from .train.evaluate import evaluate_checkpoint
    data = args.data
    if args.seed is not None and data.startswith("phantom:") and data.count(":") == 1:
        data = f"{data}:{args.seed}"
    angles = None if args.angles is None else [float(a) for a in parse_angles(args.angles)]
    result = evaluate_checkpoint(args.model, data, angles, limit=args.limit, device=args.device)
    print(_json.dumps(result, indent=1))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input or usage, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:   # argparse: usage errors (2) and --help (0)
        return int(exc.code or 0)
    if args.version:
        print(f"{PROG} {_version()}")
        return 0
    if getattr(args, "func", None) is None:
        parser.print_usage(sys.stderr)
        _emit(f"{PROG}: error: a command is required "
              "(demo, infer, drr, phantom, recon, train, eval-views, probe or models)")
        return 2
    _quiet_itk()
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return int(args.func(args) or 0)
        except XrayWorldModelError as exc:
            _emit(f"{PROG}: error: {exc}")
            return 2
        except OSError as exc:   # unwritable output folder, disk full, permissions
            name = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            _emit(f"{PROG}: error: {name}{exc.strerror or exc}")
            return 2
        except KeyboardInterrupt:
            _emit(f"{PROG}: interrupted")
            return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

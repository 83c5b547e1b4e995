"""``xray2xray drr``: CT(s) -> DRR stacks (NIfTI + JSON sidecar, optional PNG/DICOM views).

The options become a projection geometry and render settings; the job itself (inputs,
resume, shards) is :mod:`.batch`, imported when the command runs (it reads CTs and builds
phantoms, which import SimpleITK and scipy: no cost for the other commands). Torch and the
renderers are imported only once a CT has been read, so bad input fails fast.
"""
from __future__ import annotations

import argparse

from ..console import show_progress
from ..conventions import DEFAULT_DETECTOR, DEFAULT_PIXEL_SPACING_MM, MU_WATER, parse_angles
from ..errors import InputError, XrayWorldModelError
from ..geometry import DEFAULT_SDD, DEFAULT_SOD, ProjectionGeometry


def add_drr_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``drr`` subcommand to ``subparsers``."""
    d = subparsers.add_parser(
        "drr", help="render DRR stacks from CTs",
        description="Render digitally reconstructed radiographs (line integrals, float32) of "
        "one or many CTs. One input: --out is the stack file (OUT.nii.gz + OUT.json) or a "
        "folder for it. Several inputs or a manifest: --out is a folder with one stack per CT; "
        "finished stacks are skipped, so an interrupted job is resumed by running it again.")
    d.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="CT file (NIfTI, NRRD, MetaImage) or DICOM folder; several; a .txt/.csv "
                   "manifest (one path per line, relative to the manifest, # comments); or "
                   "phantom:chest, phantom:chest:SEED, phantom:ellipsoid, phantom:N[:FIRST_SEED]")
    d.add_argument("--out", required=True,
                   help="one input: the stack file (.nii.gz or .nii; a plain name gets .nii.gz) "
                   "or a folder for it; several inputs: a folder")
    _geometry_arguments(d)
    d.add_argument("--method", choices=("fast", "exact"), default="fast",
                   help="fast (Joseph, CPU or CUDA; default) or exact (Siddon, CPU reference)")
    d.add_argument("--device", default="auto",
                   help="auto (CUDA when available; default), cpu, cuda or cuda:N")
    d.add_argument("--mu-water", type=float, default=MU_WATER,
                   help=f"attenuation of water, 1/mm, for HU conversion (default: {MU_WATER})")
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
    d.add_argument("--quiet", action="store_true",
                   help="no progress bars or progress lines (messages and errors only)")
    d.set_defaults(func=cmd_drr)
    return d


def _geometry_arguments(d: argparse.ArgumentParser) -> None:
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


class _Renderer:
    """:func:`render_drr` with the settings of the job. The renderers (torch, numba) are
    imported and the device resolved on the first CT that reads well."""

    def __init__(self, settings: "batch.RenderSettings", device: str, progress):
        self.settings, self.name, self.progress, self.device = settings, device, progress, None

    def _resolve(self):
        if self.settings.method != "fast":
            return "cpu"   # the exact renderer is a CPU reference
        from . import batch
        from .render import resolve_device
        try:
            return resolve_device(None if self.name == "auto" else self.name)
        except XrayWorldModelError as exc:
            raise batch.JobError(f"--device: {exc}") from None

    def __call__(self, volume, geometry, units):
        if self.device is None:
            self.device = self._resolve()
        from .render import render_drr
        drrs = render_drr(volume, geometry, method=self.settings.method, device=self.device,
                          mu_water=self.settings.mu_water, units=units, progress=self.progress)
        return drrs, self.device


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def cmd_drr(args) -> int:
    from . import batch
    geometry = build_geometry(args)
    if args.mu_water <= 0:
        raise InputError(f"--mu-water must be positive, got {args.mu_water}")
    plan = batch.plan_batch(args.inputs, args.out, args.num_shards, args.shard_index)
    settings = batch.RenderSettings(args.method, args.mu_water, args.png, args.dicom)
    progress = show_progress(args.quiet)
    res = batch.run_batch(plan, geometry, settings, _Renderer(settings, args.device, progress),
                          overwrite=args.overwrite, progress=progress)
    where = plan.out if plan.many else (res.written[0] if res.written else plan.targets[0])
    shard_note = (f" (shard {plan.shard_index} of {plan.num_shards}: {len(plan.jobs)} of "
                  f"{len(plan.sources)} inputs)") if plan.num_shards > 1 else ""
    parts = [f"wrote {_plural(len(res.written), 'DRR stack')} "
             f"({_plural(geometry.n_angles, 'view')} each) to {where}{shard_note}"]
    if res.skipped:
        parts.append(f"skipped {res.skipped} already complete")
    if res.failed:
        parts.append(f"{res.failed} failed")
    print("; ".join(parts))
    return 2 if res.failed else 0

"""``xray2xray phantom``: a synthetic chest CT (HU), the ellipsoid phantom, or a labelled
cohort (``--cohort N``) with a label CSV usable as a training manifest."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import numpy as np

from ..console import show_progress
from ..conventions import MU_WATER
from ..errors import InputError
from ..fileutil import check_output_file, check_output_folder
from ..io import VOLUME_EXTENSIONS, write_volume
from ..io.ct import format_from_suffix
from ..volume import Volume
from .names import CHEST_KINDS, FINDINGS, PHANTOM_KINDS


def add_phantom_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``phantom`` subcommand to ``subparsers``."""
    ph = subparsers.add_parser(
        "phantom", help="write a synthetic chest CT (HU), or a labelled cohort",
        description="Write a built-in phantom as a CT volume in HU; with --cohort N, a "
        "labelled synthetic cohort: N chests with findings (atelectasis, cardiomegaly, "
        "consolidation, edema, pleural effusion), coronary and aortic calcium and a known "
        "event outcome, as NIfTI CTs plus a label CSV usable as a training manifest. Resumable.")
    ph.add_argument("--kind", choices=PHANTOM_KINDS, default="chest",
                    help="chest (procedural, seeded; default), chest2 (the realistic variant: "
                    "shoulders, raised arms, breasts, clavicles, scapulae, cartilage, vessel "
                    "and airway trees, texture) or ellipsoid (fixed, exact)")
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
    ph.add_argument("--quiet", action="store_true",
                    help="with --cohort: no progress bar or progress lines")
    ph.add_argument("--shape", nargs="+", type=int, metavar="N",
                    help="voxels, one value or X Y Z (default: chest 128 128 96, ellipsoid 128)")
    ph.add_argument("--spacing", nargs="+", type=float, metavar="MM",
                    help="voxel size in mm, one value or X Y Z (default: chest 2.8 2.8 3.5, "
                    "ellipsoid 2)")
    ph.set_defaults(func=cmd_phantom)
    return ph


def check_volume_suffix(path: Path) -> None:
    """Fail before any work when an output volume's name tells no format."""
    if format_from_suffix(path) is None:
        raise InputError("cannot tell the output format from the file name; use one of "
                         + ", ".join(VOLUME_EXTENSIONS), path)


def check_volume_out(path: Path) -> None:
    """Before any work: ``--out`` names a volume file (by its suffix) that can be written."""
    check_volume_suffix(path)
    check_output_file(path, "--out", what="volume file")


def _triple(values, what: str):
    if values is None:
        return None
    if len(values) not in (1, 3):
        raise InputError(f"{what} takes one value or three (x y z), got {len(values)}")
    return tuple(values) * 3 if len(values) == 1 else tuple(values)


def _grid(shape, spacing) -> dict:
    return {k: v for k, v in (("shape", shape), ("spacing", spacing)) if v is not None}


def parse_prevalence(text: Optional[str]):
    """``--prevalence``: one probability for all five findings, or NAME=P[,NAME=P...]."""
    if text is None:
        return None
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
    if args.kind not in CHEST_KINDS:
        raise InputError(f"--cohort builds procedural chests ({' or '.join(CHEST_KINDS)}); "
                         f"drop --kind {args.kind}")
    if args.cohort < 1:
        raise InputError(f"--cohort needs at least one case, got {args.cohort}")
    if args.seed < 0:
        raise InputError(f"--seed must be a non-negative integer, got {args.seed}")
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise InputError("with --cohort, --out is a folder for the CTs, not a file", out)
    check_output_folder(out, "--out", "the cohort's CTs")
    if args.labels is not None:
        check_output_file(args.labels, "--labels", (".csv",), "label CSV")
    prevalence = parse_prevalence(args.prevalence)
    from .cohort import CohortConfig, write_cohort     # scipy: only when a cohort is built
    cfg = CohortConfig() if prevalence is None else CohortConfig.with_prevalence(prevalence)
    res = write_cohort(args.cohort, out, args.labels, first_seed=args.seed, config=cfg,
                       write_masks=args.masks, overwrite=args.overwrite,
                       progress=show_progress(args.quiet), kind=args.kind,
                       **_grid(shape, spacing))
    note = f"; kept {res['skipped']} already complete" if res["skipped"] else ""
    print(f"wrote {res['written']} cohort CT{'s' if res['written'] != 1 else ''} "
          f"(seeds {args.seed}..{args.seed + args.cohort - 1}) to {out}{note}; "
          f"labels in {res['csv']}")
    return 0


def cmd_phantom(args) -> int:
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
    check_volume_out(out)
    if args.kind in CHEST_KINDS:
        from .variants import chest_volume      # scipy: only when a chest is built
        vol = chest_volume(args.kind, seed=args.seed, **_grid(shape, spacing))
    else:
        from .ellipsoid import default_ellipsoid_phantom
        from .source import ELLIPSOID_SHAPE, ELLIPSOID_SPACING
        mu = default_ellipsoid_phantom().voxelize(shape or ELLIPSOID_SHAPE,
                                                  spacing or ELLIPSOID_SPACING)
        hu = (1000.0 * (mu.array / MU_WATER - 1.0)).astype(np.float32)
        vol = Volume(hu, mu.affine, {"units": "HU", "source": "default_ellipsoid_phantom"})
    write_volume(vol, out)
    print(f"wrote {args.kind} phantom {'x'.join(map(str, vol.shape))} "
          f"(spacing {', '.join(f'{s:g}' for s in vol.spacing)} mm, HU) to {out}")
    return 0

"""``xray2xray recon``: a DRR stack written by ``xray2xray drr`` -> a volume (FDK), in HU."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..console import show_progress
from ..conventions import MU_WATER
from ..errors import InputError
from ..io import write_volume
from ..io.drr_stack import read_drr_stack
from ..phantom.cli import check_volume_out
from ..volume import Volume


def add_recon_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``recon`` subcommand to ``subparsers``."""
    r = subparsers.add_parser("recon", help="reconstruct a volume (FDK) from a DRR stack",
                              description="Cone-beam FDK reconstruction of a DRR stack written "
                              "by `xray2xray drr`; the volume is written in HU.")
    r.add_argument("stack", metavar="STACK", help="DRR stack (.nii.gz with its .json beside it)")
    r.add_argument("--out", required=True, help="output volume (.nii.gz, .nii, .nrrd, .mha)")
    r.add_argument("--size", type=int, default=128, help="voxels per side (default: 128)")
    r.add_argument("--spacing", type=float, default=None,
                   help="voxel size, mm (default: the grid just covers what the projections "
                   "show; a smaller grid that crops it is warned about)")
    r.add_argument("--filter", default="hann", help="FDK ramp window (default: hann)")
    r.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    r.add_argument("--quiet", action="store_true",
                   help="no progress bar or progress lines (messages and errors only)")
    r.set_defaults(func=cmd_recon)
    return r


def cmd_recon(args) -> int:
    out = Path(args.out).expanduser()
    check_volume_out(out)
    if args.size < 2:
        raise InputError(f"--size must be at least 2, got {args.size}")
    if args.spacing is not None and not args.spacing > 0:
        raise InputError(f"--spacing must be positive, got {args.spacing}")
    drrs, geometry, meta = read_drr_stack(args.stack)
    from .reconstruct import fdk, mu_to_hu     # torch: only once the stack has been read
    t0 = time.perf_counter()
    vol = fdk(drrs, geometry, shape=(args.size,) * 3, spacing=args.spacing, filter=args.filter,
              device=None if args.device == "auto" else args.device,
              progress=show_progress(args.quiet))
    mu_water = float(meta.get("mu_water", MU_WATER))
    hu = np.asarray(mu_to_hu(vol.array, mu_water=mu_water), dtype=np.float32)
    write_volume(Volume(hu, vol.affine, {"units": "HU"}), out)
    print(f"wrote {args.size}^3 FDK reconstruction from {geometry.n_angles} views "
          f"({time.perf_counter() - t0:.1f} s) to {out}")
    return 0

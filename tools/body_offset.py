"""Where each CT's body lies in its scan: the centroid of the body (thresholded, table left
out) relative to the scan's centre, on the training cube, and how high its lungs reach.

A frontal view says nothing about depth along the beam, so a patient lying far from where
the training patients lay gets a lateral drawn in the wrong place; this shows how far, and
so why training cubes are now centred on the body (``data.centre_on``, data/cache.py).
Body centring moves a cube across and front to back only; the lung columns show how far
apart the patients' lungs then lie cranio-caudally, which a radiograph placed by its apices
(infer/domain.py) is matched against.

    python tools/body_offset.py ../shared/data/chest_ct.nii.gz ../shared/data/real_ct/*.nii.gz
    python tools/body_offset.py --centre-on chest ...    # where the lungs lie in chest-centred cubes
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Dict

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from XrayWorldModel.config import load_config  # noqa: E402
from XrayWorldModel.data.anatomy import body_mask, find_landmarks, lung_mask  # noqa: E402
from XrayWorldModel.data.cache import CENTRE_ON, preprocess  # noqa: E402
from XrayWorldModel.errors import InputError  # noqa: E402
from XrayWorldModel.infer.prior import centred  # noqa: E402
from XrayWorldModel.io import read_ct  # noqa: E402
from XrayWorldModel.volume import Volume  # noqa: E402


def body_offset(volume: Volume) -> Dict[str, float]:
    """The body's centroid (mm, LPS: +x left, +y posterior, +z superior) relative to the
    centre of ``volume``'s grid, its extent along each axis, and the lungs' top and bottom
    as the anatomy augmentation finds them (a CT without lungs is refused)."""
    vol = centred(volume)
    mask = body_mask(vol)
    if not mask.any():
        raise InputError("no body found (nothing above -500 HU)")
    lps = vol.index_to_lps(np.argwhere(mask))
    c, extent = lps.mean(axis=0), np.ptp(lps, axis=0)
    lm = find_landmarks(vol)
    return {"left_mm": float(c[0]), "posterior_mm": float(c[1]), "superior_mm": float(c[2]),
            "lr_extent_mm": float(extent[0]), "ap_extent_mm": float(extent[1]),
            "chest_depth_mm": chest_depth(vol, mask),
            "lung_top_mm": lm.lung_top, "lung_bottom_mm": lm.lung_bottom}


def chest_depth(volume: Volume, body: np.ndarray) -> float:
    """The chest's front-to-back depth (mm): the body's extent along LPS y between the lungs'
    left and right edges, median over the middle half of the slices that hold lung. Habitus,
    unlike ``ap_extent_mm`` (the whole body's, shoulders and abdomen included)."""
    xyz = [int(np.argmax(np.abs(volume.direction[k]))) for k in range(3)]   # array axis of x, y, z
    b = np.transpose(body, xyz)                     # [x (left-right), y (front-back), z]
    lungs = np.transpose(lung_mask(volume, body), xyz)
    slices = np.flatnonzero(lungs.any(axis=(0, 1)))
    quarter = len(slices) // 4
    depths = []
    for k in slices[quarter: len(slices) - quarter]:
        cols = np.flatnonzero(lungs[:, :, k].any(axis=1))
        rows = np.flatnonzero(b[cols[0]: cols[-1] + 1, :, k].any(axis=0))
        depths.append((rows[-1] - rows[0] + 1) * float(volume.spacing[xyz[1]]))
    return float(np.median(depths))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cts", nargs="+", help="CT files or DICOM folders")
    ap.add_argument("--config", default="cpu-small", help="whose training cube (default cpu-small)")
    ap.add_argument("--centre-on", default="scan", choices=CENTRE_ON,
                    help="where the cube is centred before measuring (default scan: where each "
                         "body lies in its scan; body or chest: where it lies in its training cube)")
    args = ap.parse_args(argv)
    grid = replace(load_config(args.config).data.preprocessing(), centre_on=args.centre_on)
    print("| CT | left (mm) | posterior (mm) | superior (mm) | LR extent (mm) | AP extent (mm) "
          "| chest depth (mm) | lung top (mm) | lung bottom (mm) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for path in args.cts:
        try:
            o = body_offset(preprocess(read_ct(path), grid))
        except InputError as exc:
            print(f"body_offset: {exc}", file=sys.stderr)
            return 2
        print(f"| {Path(path).name} | {o['left_mm']:.1f} | {o['posterior_mm']:.1f} | "
              f"{o['superior_mm']:.1f} | {o['lr_extent_mm']:.1f} | {o['ap_extent_mm']:.1f} | "
              f"{o['chest_depth_mm']:.1f} | {o['lung_top_mm']:.1f} | {o['lung_bottom_mm']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

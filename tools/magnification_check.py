"""Does a chest radiograph reach the model at the size of its training chests? Judged where
the truth is known: each CT's frontal view rendered as a chest radiograph (the source
``--source-distance`` from the detector, 1800 mm for a PA chest; the chest's mid-plane
``MIDPLANE_TO_DETECTOR_MM`` in front of it: magnified 1.08 at 1800 mm, 1.16 at a portable's
1000, not the model's 1.2), given to ``infer`` as a display image with its exact detector
spacing, and the lateral (90 deg) the model predicts is scored against the CT's true one at
the model's geometry.

Three rows per CT: the radiograph as a file without geometry in its header is read (a PA
chest's 1.08 assumed: what ``infer`` does; right at 1800 mm, 7 % off at 1000); the same with
its true magnification stated (``infer --magnification``, or a header's SID); and stated to
be magnified as the model's DRRs are, which skips the correction: the input path before it
was made, when detector spacing was mapped straight onto the model's pitch and every real
chest arrived about 10 % small. Consistency is printed beside it: it cannot see scale.

    python tools/magnification_check.py --data phantom:4:5000
    python tools/magnification_check.py --data ../shared/data/real_ct --source-distance 1000
"""
from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from XrayWorldModel.config import TrainConfig  # noqa: E402
from XrayWorldModel.drr import DRRRenderer  # noqa: E402
from XrayWorldModel.infer.pipeline import isocentric_geometry, run_inference  # noqa: E402
from XrayWorldModel.infer.prior import centred  # noqa: E402
from XrayWorldModel.infer.scale import (MIDPLANE_TO_DETECTOR_MM,  # noqa: E402
                                        PA_SOURCE_TO_DETECTOR_MM, chest_magnification)
from XrayWorldModel.metrics import psnr  # noqa: E402
from XrayWorldModel.radiograph import Radiograph  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tool_cli import ct_parser, model_and_cts, positive_int, run_reporting_errors  # noqa: E402

#: Nearest source (mm from the detector) simulated: a chest fits between it and the detector.
MIN_SOURCE_MM = 500

#: (row label, the magnification the image states: None = nothing, as a PNG or bare DICOM;
#: "own": its true one; "model": the model's, which skips the correction)
READINGS = (("nothing stated (infer assumes 1.08)", None), ("its own stated", "own"),
            ("model's stated (no correction)", "model"))


def chest_radiograph(volume, views, pixels: int, source_mm: float) -> Radiograph:
    """The frontal view of ``volume`` (body-centred) as a chest radiograph taken ``source_mm``
    from the detector, the chest's mid-plane ``MIDPLANE_TO_DETECTOR_MM`` in front of it (1800:
    a PA chest, magnified 1.08; 1000: a portable AP, 1.16), the model's field of view at the
    patient, ``pixels`` across, display values, no geometry stated."""
    pa = replace(views, sdd=float(source_mm), sod=float(source_mm) - MIDPLANE_TO_DETECTOR_MM,
                 image_size=int(pixels))
    with warnings.catch_warnings():     # the training cube's corners (air) cross the detector
        warnings.simplefilter("ignore")
        image = DRRRenderer(volume, "fast", "cpu", pa.mu_water).render(
            isocentric_geometry(pa, [0.0]))[0]
    return Radiograph((image / image.max()).astype(np.float32), (pa.pixel_spacing,) * 2, "PA")


def score(model, card, volume, pixels: int, source_mm: float = PA_SOURCE_TO_DETECTOR_MM):
    """{reading: (90-deg PSNR, consistency)} for one CT."""
    views = TrainConfig.from_dict(card["config"]).views
    c = centred(volume)
    lateral = DRRRenderer(c, "fast", "cpu", views.mu_water).render(
        isocentric_geometry(views, [90.0]))[0]
    rad = chest_radiograph(c, views, pixels, source_mm)
    stated = {None: {}, "own": {"magnification": chest_magnification(source_mm)},
              "model": {"magnification": views.sdd / views.sod}}
    out = {}
    for label, reading in READINGS:
        meta = stated[reading]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = run_inference(replace(rad, metadata=meta), (model, card), views=(90.0,),
                                volume_size=64, uncertainty=0)
        out[label] = (psnr(res.views[0], lateral), res.consistency)
    return out


def source_distance(text: str) -> int:
    """An argparse type: a source-to-detector distance in mm, far enough for a chest between
    the source and the detector (``MIN_SOURCE_MM``)."""
    mm = positive_int(text)
    if mm < MIN_SOURCE_MM:
        raise argparse.ArgumentTypeError(f"a chest radiograph's source lies at least "
                                         f"{MIN_SOURCE_MM} mm from the detector, got {mm}")
    return mm


def main(argv=None) -> int:
    ap = ct_parser(__doc__)
    ap.add_argument("--pixels", type=positive_int, default=256,
                    help="pixels across the simulated radiograph")
    ap.add_argument("--source-distance", type=source_distance, default=int(PA_SOURCE_TO_DETECTOR_MM),
                    metavar="MM", help="source to detector of the simulated radiograph "
                    "(default 1800, a PA chest; 1000: a portable AP)")
    args = ap.parse_args(argv)
    return run_reporting_errors("magnification_check", _table, args)


def _table(args) -> None:
    model, card, cfg, volumes = model_and_cts(args)
    rows = {label: [] for label, _ in READINGS}
    print("| CT | reading | 90-deg PSNR (dB) | consistency |\n|---|---|---:|---:|")
    for i, vol in enumerate(volumes):
        for label, (p, c) in score(model, card, vol, args.pixels,
                                   args.source_distance).items():
            rows[label].append((p, c))
            print(f"| {i} | {label} | {p:.2f} | {c:.3f} |")
    for label, values in rows.items():
        p, c = np.mean(values, axis=0)
        print(f"| all ({len(values)}) | {label} | {p:.2f} | {c:.3f} |")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    raise SystemExit(main())

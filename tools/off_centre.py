"""What a patient standing aside costs the predicted lateral, and what centring the radiograph
on its lung fields (``XrayWorldModel/infer/domain.py``) gives back.

    python tools/off_centre.py --model MODEL --data CT_OR_SOURCE [--aside 0,15,30,45]

For each CT (preprocessed as the model trained: centred on the body) and each offset, its
frontal DRR at 1 mm pixels over a 470 mm detector, the CT's centre ``aside`` mm off the
beam's axis (patient's left), goes through the inference preprocessing twice: as ``infer``
does it (moved so the lung fields' midline lies at the field's centre) and placed by its
own centre (``check_spacing=False``, which skips the anatomy; the DRR's spacing is exact).
The model's 90 deg view from each is scored (PSNR, dB) against the true 90 deg view of the
CT at the isocentre: what a centred model is asked to draw (a shift along the lateral beam
only magnifies it, by 2 % at 30 mm). A measurement script, not part of the package.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from XrayWorldModel.config import TrainConfig  # noqa: E402
from XrayWorldModel.data import PreprocessedCache, resolve_source  # noqa: E402
from XrayWorldModel.data.cache import VolumeProvider  # noqa: E402
from XrayWorldModel.drr import DRRRenderer  # noqa: E402
from XrayWorldModel.geometry import ProjectionGeometry  # noqa: E402
from XrayWorldModel.infer.domain import LINE_INTEGRAL, to_model_input  # noqa: E402
from XrayWorldModel.metrics import psnr  # noqa: E402
from XrayWorldModel.radiograph import Radiograph  # noqa: E402
from XrayWorldModel.weights.loading import load_world_model  # noqa: E402

PITCH_MM, DETECTOR_MM = 1.0, 470.0


def frontal(volume, sampling, aside_mm: float) -> np.ndarray:
    """The frontal DRR at PITCH_MM, the volume's centre ``aside_mm`` off the beam's axis."""
    n = int(round(DETECTOR_MM / PITCH_MM))
    centre = np.asarray(volume.center, dtype=np.float64) + (aside_mm, 0.0, 0.0)
    g = ProjectionGeometry(angles=(0.0,), detector_shape=(n, n),
                           pixel_spacing=(PITCH_MM, PITCH_MM), sdd=sampling.sdd,
                           sod=sampling.sod, isocenter=tuple(centre))
    return DRRRenderer(volume, "fast", "cpu", sampling.mu_water).render(g)[0]


@torch.no_grad()
def lateral(model, image: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    return model.predict_view(x, 0.0, 90.0)[0, 0].numpy()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model name, file, checkpoint or run folder")
    ap.add_argument("--data", required=True, help="CT file, folder, manifest or phantom:N")
    ap.add_argument("--aside", default="0,15,30,45", help="offsets in mm (default 0,15,30,45)")
    args = ap.parse_args(argv)
    model, card = load_world_model(args.model, "cpu")
    cfg = TrainConfig.from_dict(card["config"])
    sampling = cfg.views
    items = resolve_source(args.data)
    provider = VolumeProvider(items, PreprocessedCache(), cfg.data.preprocessing(), len(items))
    offsets = [float(v) for v in args.aside.split(",")]
    rows = {a: {"centred": [], "own centre": [], "shift": []} for a in offsets}
    for i in range(len(items)):
        got = provider.get(i, replace=False)
        if got is None:
            continue
        vol = got[0]
        truth = DRRRenderer(vol, "fast", "cpu", sampling.mu_water).render(
            sampling.geometry([90.0]))[0]
        for a in offsets:
            rad = Radiograph(frontal(vol, sampling, a), (PITCH_MM, PITCH_MM), "PA",
                             {"units": LINE_INTEGRAL})
            centred = to_model_input(rad, sampling, card.get("domain"))
            own = to_model_input(rad, sampling, card.get("domain"), check_spacing=False)
            rows[a]["centred"].append(psnr(lateral(model, centred.image), truth))
            rows[a]["own centre"].append(psnr(lateral(model, own.image), truth))
            rows[a]["shift"].append(centred.centring["shift_px"])
    print(f"model {args.model}, data {args.data} ({len(rows[offsets[0]]['shift'])} CTs); "
          f"90 deg PSNR (dB), mean over CTs")
    print("| aside (mm) | shift (px) | centred on the lung fields | placed by its own centre |")
    print("|---:|---|---:|---:|")
    for a, r in rows.items():
        print(f"| {a:g} | {','.join(str(s) for s in r['shift'])} | "
              f"{np.mean(r['centred']):.2f} | {np.mean(r['own centre']):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

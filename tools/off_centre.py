"""What a chest framed off the middle costs the predicted lateral, and what placing the
radiograph by its lung fields (``XrayWorldModel/infer/domain.py``) gives back.

    python tools/off_centre.py --model MODEL --data CT_OR_SOURCE [--moves "0,0;30,0;0,30"]

For each CT (preprocessed as the model trained) and each move ``X,Z`` (mm: the beam's axis
X to the patient's left, Z to the head), its frontal DRR at 1 mm pixels over a 470 mm
detector goes through the inference preprocessing twice: as ``infer`` does it (placed by
its lung fields) and by the image's own centre (``place=False``). The model's 90 deg view
from each is scored (PSNR, dB) against the true 90 deg view of the chest as that input
frames it: the move less what the placement undid (a move along the lateral beam only magnifies it, 2 % at 30 mm). A
measurement script, not part of the package.
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


def frontal(volume, sampling, moved_mm) -> np.ndarray:
    """The frontal DRR at PITCH_MM, the beam's axis ``moved_mm`` (LPS) from the volume's
    centre."""
    n = int(round(DETECTOR_MM / PITCH_MM))
    centre = np.asarray(volume.center, dtype=np.float64) + np.asarray(moved_mm, np.float64)
    g = ProjectionGeometry(angles=(0.0,), detector_shape=(n, n),
                           pixel_spacing=(PITCH_MM, PITCH_MM), sdd=sampling.sdd,
                           sod=sampling.sod, isocenter=tuple(centre))
    return DRRRenderer(volume, "fast", "cpu", sampling.mu_water).render(g)[0]


def true_lateral(volume, sampling, moved_mm, shift_px) -> np.ndarray:
    """The 90 deg view of ``volume`` framed as the model's input frames it: the move less
    the placement's shift (``shift_px`` = rows up, columns left, model pixels)."""
    back = np.asarray(shift_px, dtype=np.float64) * sampling.pixel_spacing * sampling.sod / sampling.sdd
    residual = np.asarray(moved_mm, np.float64) + (back[1], 0.0, -back[0])
    centre = np.asarray(volume.center, dtype=np.float64) + residual
    return DRRRenderer(volume, "fast", "cpu", sampling.mu_water).render(
        sampling.geometry([90.0], isocenter=centre))[0]


@torch.no_grad()
def lateral(model, image: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    return model.predict_view(x, 0.0, 90.0)[0, 0].numpy()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model name, file, checkpoint or run folder")
    ap.add_argument("--data", required=True, help="CT file, folder, manifest or phantom:N")
    ap.add_argument("--moves", default="0,0;15,0;30,0;45,0;0,30;0,-30;0,60",
                    help="X,Z moves in mm, ';'-separated (default 0,0;15,0;30,0;45,0;0,30;"
                         "0,-30;0,60)")
    args = ap.parse_args(argv)
    model, card = load_world_model(args.model, "cpu")
    cfg = TrainConfig.from_dict(card["config"])
    sampling, domain = cfg.views, card.get("domain")
    items = resolve_source(args.data)
    provider = VolumeProvider(items, PreprocessedCache(), cfg.data.preprocessing(), len(items))
    moves = [tuple(float(v) for v in m.split(",")) for m in args.moves.split(";")]
    rows = {m: {"placed": [], "own centre": [], "shift": []} for m in moves}
    for i in range(len(items)):
        got = provider.get(i, replace=False)
        if got is None:
            continue
        vol = got[0]
        for m in moves:
            moved = (m[0], 0.0, m[1])
            rad = Radiograph(frontal(vol, sampling, moved), (PITCH_MM, PITCH_MM), "PA",
                             {"units": LINE_INTEGRAL})
            placed = to_model_input(rad, sampling, domain)
            own = to_model_input(rad, sampling, domain, place=False)
            shift = placed.centring["shift_px"]
            rows[m]["placed"].append(psnr(lateral(model, placed.image),
                                          true_lateral(vol, sampling, moved, shift)))
            rows[m]["own centre"].append(psnr(lateral(model, own.image),
                                              true_lateral(vol, sampling, moved, (0, 0))))
            rows[m]["shift"].append(f"{shift[0]}/{shift[1]}")
    print(f"model {args.model}, data {args.data} ({len(rows[moves[0]]['shift'])} CTs); "
          f"90 deg PSNR (dB), mean over CTs; shift: model pixels up/left")
    print("| beam moved X, Z (mm) | shift | placed by its lung fields | by the image's centre |")
    print("|---|---|---:|---:|")
    for m, r in rows.items():
        print(f"| {m[0]:g}, {m[1]:g} | {' '.join(r['shift'])} | "
              f"{np.mean(r['placed']):.2f} | {np.mean(r['own centre']):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

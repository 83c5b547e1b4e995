"""How closely a model redraws its own input view (0 deg predicted from 0 deg), as NCC: on
a radiograph over the pixels it covers, and again without their outermost ring (where the
image's edges cut the chest off), and on the frontal DRRs of CTs over their body.

The real-CR consistency (``infer``) compares the re-projected volume with the input; the
volume cannot agree with the input more closely than the model redraws it, so this bounds
that score and says where the gap lies: the radiograph's look, its framing, or the model.

    python tools/self_redraw.py --model MODEL --cxr ../shared/data/chest_cr_pa.dcm \\
        --ct ../shared/data/chest_ct.nii.gz --ct ../shared/data/real_ct/lidc_idri_0314.nii.gz
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from XrayWorldModel.config import TrainConfig  # noqa: E402
from XrayWorldModel.data.cache import preprocess  # noqa: E402
from XrayWorldModel.infer.domain import BODY_FRACTION  # noqa: E402
from XrayWorldModel.infer.evaluate import encoded_frontal  # noqa: E402
from XrayWorldModel.infer.pipeline import ncc  # noqa: E402  (the consistency score's own)
from XrayWorldModel.io import read_ct  # noqa: E402
from XrayWorldModel.weights.loading import load_world_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tool_cli import input_parser, model_inputs, parse_inputs, run_reporting_errors  # noqa: E402


@torch.no_grad()
def redraw(model, image: np.ndarray) -> np.ndarray:
    """The model's 0-deg view predicted from ``image`` at 0 deg."""
    x = torch.from_numpy(np.asarray(image, np.float32))[None, None]
    zero = torch.zeros(1)
    return model.predict_view(x, zero, zero).float().numpy()[0, 0]


def _edges(covered: np.ndarray) -> str:
    """How far in from each edge of the model's field the radiograph's own edges lie."""
    rows, cols = np.flatnonzero(covered.any(1)), np.flatnonzero(covered.any(0))
    h, w = covered.shape
    cuts = (rows[0] / h, (h - 1 - rows[-1]) / h, cols[0] / w, (w - 1 - cols[-1]) / w)
    return ", ".join(f"{100 * c:.0f}" for c in cuts)


def main(argv=None) -> int:
    return run_reporting_errors("self_redraw", _table, parse_inputs(input_parser(__doc__), argv))


def _table(args) -> None:
    model, card = load_world_model(args.model)
    cfg = TrainConfig.from_dict(card["config"])
    print("| input | pixels | NCC | NCC without the outer ring | image edges in from top, "
          "bottom, left, right (% of the field) |\n|---|---:|---:|---:|---|")
    for name, mi in model_inputs(args.cxr, card):
        drawn = redraw(model, mi.image)
        inner = ndi.binary_erosion(mi.covered)
        print(f"| {name} | {int(mi.covered.sum())} | "
              f"{ncc(drawn[mi.covered], mi.image[mi.covered]):.3f} | "
              f"{ncc(drawn[inner], mi.image[inner]):.3f} | {_edges(mi.covered)} |")
    for path in args.ct:
        _, frontal, _ = encoded_frontal(model, preprocess(read_ct(path), cfg.data.preprocessing()),
                                        cfg.views, "cpu")
        body = frontal > BODY_FRACTION * frontal.max()
        print(f"| {Path(path).name} (DRR) | {int(body.sum())} | "
              f"{ncc(redraw(model, frontal)[body], frontal[body]):.3f} | | |")


if __name__ == "__main__":
    raise SystemExit(main())

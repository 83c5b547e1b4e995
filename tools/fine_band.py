"""How much of a model input's contrast lies in its finest band, at the model's resolution:
the std of ``image - gaussian(image, 1 px)`` over the std of the image, inside the body. For
radiographs through the inference's input path, and for the frontal DRRs of CTs clean and
with the training's context augmentations (each the mean over ``--seeds`` draws), so the
augmentations can be set to span what real radiographs bring.

    python tools/fine_band.py --cxr ../shared/data/chest_cr_pa.dcm \\
        --ct ../shared/data/chest_ct.nii.gz
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from XrayWorldModel.config import TrainConfig  # noqa: E402
from XrayWorldModel.data.cache import preprocess  # noqa: E402
from XrayWorldModel.data.radiograph_style import (DETAIL, EFFECTS, draw_effects,  # noqa: E402
                                                     radiograph_style)
from XrayWorldModel.drr import DRRRenderer  # noqa: E402
from XrayWorldModel.infer.domain import BODY_FRACTION  # noqa: E402
from XrayWorldModel.infer.pipeline import isocentric_geometry  # noqa: E402
from XrayWorldModel.infer.prior import centred  # noqa: E402
from XrayWorldModel.io import read_ct  # noqa: E402
from XrayWorldModel.weights.loading import load_world_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tool_cli import (input_parser, model_inputs, parse_inputs, positive_int,  # noqa: E402
                      run_reporting_errors)

#: The context augmentations compared on each CT's DRR: effects of the style chain, or a
#: probability for each effect drawn as training draws them (``views.radiograph_style``).
VARIANTS = {"clean": (), "unsharp": ("unsharp",), "every effect": EFFECTS,
            "fine detail": (DETAIL,), "as trained, each effect 0.3": 0.3}


def fine_share(image: np.ndarray, body: np.ndarray) -> float:
    """The finest band's share of the contrast inside ``body`` (eroded by two pixels, so the
    body's own outline does not count)."""
    inner = ndi.binary_erosion(body, iterations=2)
    image = np.asarray(image, np.float64)
    return float((image - ndi.gaussian_filter(image, 1.0))[inner].std() / image[inner].std())


def main(argv=None) -> int:
    ap = input_parser(__doc__)
    ap.add_argument("--seeds", type=positive_int, default=16, help="draws per augmentation")
    return run_reporting_errors("fine_band", _table, parse_inputs(ap, argv))


def _table(args) -> None:
    _, card = load_world_model(args.model)
    cfg = TrainConfig.from_dict(card["config"])
    print("| input | finest band's share of the body's contrast (mean) | highest draw |\n"
          "|---|---:|---:|")
    for name, mi in model_inputs(args.cxr, card):
        body = mi.covered & (mi.image > BODY_FRACTION * mi.image.max())
        share = fine_share(mi.image, body)
        print(f"| {name} | {share:.3f} | {share:.3f} |")
    for path in args.ct:
        vol = centred(preprocess(read_ct(path), cfg.data.preprocessing()))
        drr = DRRRenderer(vol, "fast", "cpu", cfg.views.mu_water).render(
            isocentric_geometry(cfg.views, [0.0]))[0]
        body = drr > BODY_FRACTION * drr.max()
        for name, effects in VARIANTS.items():
            shares = [fine_share(_styled(drr, effects, np.random.default_rng(k)), body)
                      for k in range(args.seeds if effects else 1)]
            print(f"| {Path(path).name} (DRR, {name}) | {np.mean(shares):.3f} | "
                  f"{np.max(shares):.3f} |")


def _styled(drr, effects, rng):
    if isinstance(effects, float):
        effects = draw_effects(effects, rng)
    return radiograph_style(drr, effects, rng) if effects else drr


if __name__ == "__main__":
    raise SystemExit(main())

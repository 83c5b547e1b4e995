"""Which intensity mapping should bring a radiograph into the model's DRR units? Judged where
the truth is known: the frontal DRRs of CTs, made into radiographs by the training's own
radiograph chain (:func:`~XrayWorldModel.data.radiograph_style.styled_display`, display
values as a file would hold them), fed through the inference's input path with each mapping,
and scored by the lateral (90 deg) the model predicts against the CT's true one, with the
consistency score ``infer`` reports beside it.

The mappings differ only in the body quantiles the radiograph's are matched onto
(:mod:`XrayWorldModel.infer.domain`); the scale and placement references stay the card's:

- ``card``: the training DRRs' pooled quantiles (what a model file's card holds);
- ``plain``: an even spread over 0-5 line-integral units (what a card without domain
  statistics gets);
- ``own``: the CT's own clean frontal DRR's quantiles, which no radiograph can know: the
  ceiling a mapping could reach, and what the training's styled contexts were mapped onto.

Use CTs the model did not train on (a leave-one-patient-out fold's held-out patient, or
held-out phantoms such as ``phantom:8:5000``); a training patient flatters every mapping.

    python tools/mapping_check.py --model MODEL --data ../shared/data/chest_ct.nii.gz \\
        --styles 8
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from XrayWorldModel.config import TrainConfig  # noqa: E402
from XrayWorldModel.data.radiograph_style import draw_effects, styled_display  # noqa: E402
from XrayWorldModel.drr import DRRRenderer  # noqa: E402
from XrayWorldModel.infer.domain import N_QUANTILES, domain_reference  # noqa: E402
from XrayWorldModel.infer.pipeline import isocentric_geometry, run_inference  # noqa: E402
from XrayWorldModel.infer.prior import centred  # noqa: E402
from XrayWorldModel.metrics import psnr, ssim  # noqa: E402
from XrayWorldModel.radiograph import Radiograph  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tool_cli import ct_parser, model_and_cts, positive_int, run_reporting_errors  # noqa: E402

MAPPINGS = ("card", "plain", "own")
#: Each effect of the radiograph chain is drawn with this probability per styled image.
EFFECT_PROBABILITY = 0.5


def domain_variants(domain: dict, own_frontal: np.ndarray) -> dict:
    """The card's domain with its body quantiles replaced, one per mapping of
    :data:`MAPPINGS` (scale, placement and mirror references kept)."""
    own = domain_reference(own_frontal[None])
    plain = {"quantiles": [float(v) for v in np.linspace(0.0, 5.0, N_QUANTILES)],
             "body_threshold": 0.0}
    return {"card": dict(domain),
            "plain": {**domain, **plain},
            "own": {**domain, "quantiles": own["quantiles"],
                    "body_threshold": own["body_threshold"]}}


def score_case(model, card, frontal, lateral, styles: int, seed: int):
    """{mapping: [(PSNR, SSIM, consistency) per styled image]} for one CT's views."""
    sampling = TrainConfig.from_dict(card["config"]).views
    variants = domain_variants(card["domain"], frontal)
    out = {m: [] for m in MAPPINGS}
    for k in range(styles):
        rng = np.random.default_rng(seed + k)
        display = styled_display(frontal, draw_effects(EFFECT_PROBABILITY, rng), rng)
        rad = Radiograph(display.astype(np.float32), (sampling.pixel_spacing,) * 2, "PA",
                         {"magnification": sampling.sdd / sampling.sod})
        for name in MAPPINGS:
            c = {**card, "domain": variants[name]}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = run_inference(rad, (model, c), views=(90.0,), volume_size=64,
                                    uncertainty=0)
            view = res.views[list(res.view_angles).index(90.0)]
            out[name].append((psnr(view, lateral), ssim(view, lateral), res.consistency))
    return out


def main(argv=None) -> int:
    ap = ct_parser(__doc__)
    ap.add_argument("--styles", type=positive_int, default=8, help="styled radiographs per CT")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-image", action="store_true", help="also a row per styled image "
                    "(its seed), not only the means")
    args = ap.parse_args(argv)
    return run_reporting_errors("mapping_check", _table, args)


def _table(args) -> None:
    model, card, cfg, volumes = model_and_cts(args)
    rows = {m: [] for m in MAPPINGS}
    print("| CT | mapping | 90-deg PSNR (dB) | SSIM | consistency |\n|---|---|---:|---:|---:|")
    for i, vol in enumerate(volumes):
        frontal, lateral = DRRRenderer(centred(vol), "fast", "cpu", cfg.views.mu_water).render(
            isocentric_geometry(cfg.views, [0.0, 90.0]))
        scores = score_case(model, card, frontal, lateral, args.styles, args.seed)
        for m in MAPPINGS:
            rows[m] += scores[m]
            for k, (p, s, c) in enumerate(scores[m] if args.per_image else []):
                print(f"| {i}, seed {args.seed + k} | {m} | {p:.2f} | {s:.3f} | {c:.3f} |")
            p, s, c = np.mean(scores[m], axis=0)
            print(f"| {i} | {m} | {p:.2f} | {s:.3f} | {c:.3f} |")
    for m in MAPPINGS:
        p, s, c = np.mean(rows[m], axis=0)
        print(f"| all ({len(rows[m])}) | {m} | {p:.2f} | {s:.3f} | {c:.3f} |")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    raise SystemExit(main())

"""How the volume from one frontal view depends on the volume prior and the reconstruction
settings: the study behind the rule that a model uses its prior only when validation says so
(:func:`XrayWorldModel.infer.evaluate.prior_validation`).

    python tools/prior_grid.py --model RUN_OR_FILE --data CT_OR_SOURCE [--data ...]
                               --baseline-source MANIFEST [--json OUT]

For each ``--data`` set it prints the mean Pearson r (inside the evaluation cylinder, as
``eval-volume`` scores) of: FDK of the imagined 15-deg sweep alone; the mean CT of
``--baseline-source`` alone; that mean CT as the prior with the residual weighted 0.4-1.2 and
smoothed 0-2 voxels; and FDK alone with a 7.5-deg sweep and with 3 SIRT steps. A study
script, not part of the installed package: nothing here is used by inference.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from XrayWorldModel.config import TrainConfig  # noqa: E402
from XrayWorldModel.data import PreprocessedCache, resolve_source  # noqa: E402
from XrayWorldModel.infer.evaluate import (evaluation_cylinder, encoded_frontal, read_volumes,  # noqa: E402
                                           volume_scores)
from XrayWorldModel.infer.pipeline import isocentric_geometry, load_inference_model, reconstruct  # noqa: E402
from XrayWorldModel.infer.prior import VolumePrior, resample_like  # noqa: E402
from XrayWorldModel.weights.loading import resolve_model_ref  # noqa: E402

WEIGHTS = (0.4, 0.6, 0.8, 1.0, 1.2)
SMOOTHING = (0.0, 1.0, 2.0)
SIZE = 64


def settings(prior: VolumePrior):
    """(name, reconstruct keyword arguments) of every setting the study compares."""
    yield "views alone (15 deg)", {}
    yield "views alone (7.5 deg)", {"sweep_step": 7.5}
    yield "views alone + 3 SIRT steps", {"refine_iterations": 3}
    for w in WEIGHTS:
        for s in SMOOTHING:
            yield f"prior, weight {w}, smoothing {s}", {
                "prior": VolumePrior(prior.hu, prior.n_volumes, w, s)}


def study(model, cfg: TrainConfig, prior: VolumePrior, volumes) -> dict:
    rows = {"mean CT alone": []}
    for vol in volumes:
        c, _, state = encoded_frontal(model, vol, cfg.views, "cpu")
        truth = mask = None
        for name, kw in settings(prior):
            with torch.enable_grad() if kw.get("refine_iterations") else torch.no_grad():
                v = reconstruct(model, state.detach(), cfg.views, SIZE, **kw)
            if truth is None:
                truth, mask = resample_like(c, v), evaluation_cylinder(v.shape)
            rows.setdefault(name, []).append(volume_scores(v.array, truth, mask)["pearson_r"])
        rows["mean CT alone"].append(volume_scores(prior.hu_on(SIZE), truth, mask)["pearson_r"])
    return {k: float(np.mean(v)) for k, v in rows.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="run folder, checkpoint or model file")
    ap.add_argument("--data", action="append", required=True, help="CTs to score (repeatable)")
    ap.add_argument("--baseline-source", required=True, help="the CTs whose mean is the prior")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, card, _ = load_inference_model(resolve_model_ref(args.model).path, "cpu")
    cfg = TrainConfig.from_dict(card["config"])
    cache = PreprocessedCache()
    train = read_volumes(resolve_source(args.baseline_source), cfg, cache)
    prior = VolumePrior.from_volumes(train, isocentric_geometry(cfg.views, [0.0]), SIZE)
    out = {d: study(model, cfg, prior, read_volumes(resolve_source(d), cfg, cache))
           for d in args.data}
    print("| setting | " + " | ".join(args.data) + " |")
    print("|---|" + "---:|" * len(args.data))
    for name in next(iter(out.values())):
        print(f"| {name} | " + " | ".join(f"{out[d][name]:.3f}" for d in args.data) + " |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

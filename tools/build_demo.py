"""Build the built-in demonstration model from a ``cpu-small`` training run on phantoms.

    python tools/build_demo.py RUN_DIR [--cohort N] [--heldout N] [--work DIR] [--version V]
    python tools/build_demo.py --from-model FILE --version V [--refit] [--cohort N] [--heldout N]

Steps, all reproducible from the run and a seed: export the run's best checkpoint as a model
file; add the domain statistics inference needs (quantiles of the training frontal DRRs);
write a labelled synthetic cohort (seeds 50000..) and a held-out one (seeds 51000..) and fit
the risk, then the pathology probe heads on the first (what ``xray2xray probe --save-into
--heldout`` does: each CT seen through 4 random acquisitions, Platt calibration of each head
on its logits for the held-out cohort, the out-of-distribution reference of the same
features, its threshold the 99th percentile on the held-out cohort); add the volume prior
(the mean of 64 training CTs spread evenly over its source, :mod:`XrayWorldModel.infer.prior`,
marked used only when it beats the views alone on the validation phantoms);
copy the result into ``XrayWorldModel/weights/builtin/``
and record its size and SHA256 in the shipped registry. ``--from-model`` redoes the prior and
the install on an existing model file (a new version); with ``--refit`` it also refits the
heads, their calibration and the OOD reference (how 1.2 was made from 1.1). The card says
plainly what the model is: a demonstration, trained on synthetic chests and (when the run's
source lists them) the real CTs named with their collection and licence, not for clinical use.

A release script, not part of the installed package: it writes into this checkout's
``XrayWorldModel/weights``, and nothing in ``XrayWorldModel`` imports it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))     # build with the package of this checkout, which it updates

from XrayWorldModel.config import TrainConfig  # noqa: E402
from XrayWorldModel.data import PreprocessedCache, resolve_source  # noqa: E402
from XrayWorldModel.data.cache import VolumeProvider  # noqa: E402
from XrayWorldModel.data.sources import is_anatomy_source, parse_anatomy_source  # noqa: E402
from XrayWorldModel.data.views import render_views  # noqa: E402
from XrayWorldModel.errors import XrayWorldModelError  # noqa: E402
from XrayWorldModel.fileutil import atomic_path, sha256_file  # noqa: E402
from XrayWorldModel.infer.domain import domain_reference  # noqa: E402
from XrayWorldModel.infer.evaluate import (PRIOR_VALIDATION_SOURCE, prior_validation,  # noqa: E402
                                           read_volumes)
from XrayWorldModel.infer.pipeline import isocentric_geometry, load_inference_model  # noqa: E402
from XrayWorldModel.infer.scale import volumes_reference  # noqa: E402
from XrayWorldModel.infer.prior import CARD_KEY as PRIOR_CARD_KEY, VolumePrior  # noqa: E402
from XrayWorldModel.phantom.cohort import write_cohort  # noqa: E402
from XrayWorldModel.probe.run import probe_task  # noqa: E402
from XrayWorldModel.train.checkpoint import load_checkpoint, resolve_checkpoint  # noqa: E402
from XrayWorldModel.weights.loading import add_mean_views, export_checkpoint  # noqa: E402
from XrayWorldModel.weights.model_file import load_model_file, read_card, save_model_file  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_cts  # noqa: E402

NAME = "xray2xray-demo"
WEIGHTS = ROOT / "XrayWorldModel" / "weights"
BUILTIN = WEIGHTS / "builtin"
REGISTRY = WEIGHTS / "registry.json"
INTENDED_USE = ("Demonstration only. Trained on synthetic procedural chest phantoms (no patient "
                "data); its scores are fitted on synthetic labels. Not for clinical use, not a "
                "medical device.")
#: Said beside every score (``results.json`` scores.disclaimer, the CLI, report, Slicer).
DISCLAIMER = ("demonstration model trained on synthetic chest phantoms only (no patient data); "
              "scores fitted and calibrated on a synthetic cohort; not for clinical use")
DESCRIPTION = ("Xray2Xray world model (cpu-small: ViT 64 px, 1.7 M parameters) trained on "
               "procedural chest phantoms, with calibrated probe heads for cardiovascular risk "
               "and five pathologies and an out-of-distribution reference, fitted on a "
               "synthetic cohort.")
#: First seeds of the cohort the heads are fitted on and of the held-out one (threshold).
COHORT_SEED, HELDOUT_SEED = 50_000, 51_000


def reference_items(cfg: TrainConfig, n: int = 64):
    """``n`` training CTs of ``cfg`` spread evenly over its source, so a mixed source
    (phantoms + augmented real CTs) is represented in proportion, not by its first part."""
    items = resolve_source(cfg.data.source)
    step = max(1, len(items) // n)
    return items[::step][:n]


def training_volumes(cfg: TrainConfig, n: int = 64):
    """:func:`reference_items` of ``cfg``, preprocessed as the trainer saw them."""
    items = reference_items(cfg, n)
    cache = PreprocessedCache(Path(cfg.data.cache_dir) if cfg.data.cache_dir else None)
    data = VolumeProvider(items, cache, cfg.data.preprocessing(), len(items))
    return [data.get(i)[0] for i in range(len(items))]


def real_training_data(source: str) -> list:
    """Provenance (id, collection, licence) of the real CTs an ``anatomy:...:MANIFEST`` part of
    the training ``source`` lists (any seed offset or named ranges)."""
    ids = []
    for part in source.split("+"):
        if is_anatomy_source(part):       # anatomy:K[:FIRST][:RANGES]:MANIFEST
            manifest = Path(parse_anatomy_source(part).source)
            ids += [i for i in real_cts.manifest_ids(manifest) if i not in ids]
    return real_cts.provenance(ids)


def card_texts(real: list) -> dict:
    """description, intended use and disclaimer: what the model was trained on, plainly."""
    if not real:
        return {"description": DESCRIPTION, "intended_use": INTENDED_USE, "disclaimer": DISCLAIMER}
    n = len(real)
    data = (f"digitally reconstructed radiographs of {n} real chest CTs ({n} patients, each "
            "augmented into many plausible ones) and of procedural chest phantoms")
    return {"description": DESCRIPTION.replace("procedural chest phantoms", data),
            "intended_use": f"Demonstration only. Trained on {data}; its scores are fitted on "
                            "synthetic labels. Not for clinical use, not a medical device.",
            "disclaimer": f"demonstration model trained on {n} real chest CTs (augmented) and "
                          "synthetic phantoms; scores fitted and calibrated on a synthetic cohort; "
                          "not for clinical use"}


def frontals(cfg: TrainConfig, n: int = 64):
    """Frontal (0 deg) DRRs [N, H, W] of the first ``n`` training CTs."""
    return render_views(training_volumes(cfg, n), cfg.views, [0.0])[:, 0]


def training_domain(cfg: TrainConfig) -> dict:
    """The card's ``domain``: what the inference's input path matches a radiograph to
    (:mod:`XrayWorldModel.infer.domain`), from the training data of ``cfg``: the frontal
    DRRs' body quantiles, and the spacing estimator's lung-field widths and apex heights."""
    return {**domain_reference(frontals(cfg)),
            "anatomy": volumes_reference(training_volumes(cfg), cfg.views,
                                         f"64 training CTs ({cfg.data.source})")}


def add_volume_prior(model_file, out_path, version: str = None, n_volumes: int = 64,
                     card_updates: dict = None) -> Path:
    """A copy of ``model_file`` carrying the volume prior built from its own training data
    (and ``version`` and ``card_updates``, when given)."""
    tensors, card = load_model_file(model_file)
    cfg = TrainConfig.from_dict(card["config"])
    vols = training_volumes(cfg, n_volumes)
    prior = VolumePrior.from_volumes(vols, isocentric_geometry(cfg.views, [0.0]),
                                     cfg.views.image_size,
                                     source=f"mean of {len(vols)} training CTs spread over "
                                            f"({cfg.data.source})")
    model, _, _ = load_inference_model(model_file, "cpu")
    validation = read_volumes(resolve_source(PRIOR_VALIDATION_SOURCE), cfg, PreprocessedCache())
    prior.validation = prior_validation(model, cfg.views, prior, validation,
                                        PRIOR_VALIDATION_SOURCE)
    prior.used = prior.validation["used"]
    print(f"volume prior: r {prior.validation['r_on_prior']:.3f} on it, "
          f"{prior.validation['r_views_only']:.3f} from the views alone "
          f"({PRIOR_VALIDATION_SOURCE}): {'used' if prior.used else 'kept unused'}",
          file=sys.stderr)
    tensors = {k: v for k, v in tensors.items() if not k.startswith("prior.")}
    card = dict(card, **{PRIOR_CARD_KEY: prior.card_entry()}, **(card_updates or {}))
    if version:
        card["version"] = version
    return save_model_file(out_path, {**tensors, **prior.tensors()}, card)


def fit_heads(model: Path, csv: str, task: str, out: Path, work: Path,
              heldout: str = None) -> Path:
    """``xray2xray probe --model MODEL --data CSV --labels CSV --task TASK --save-into OUT
    [--heldout HELDOUT]``: the task's heads (calibrated) and the OOD reference fitted on the
    cohort and written into a copy of the model file, the threshold from ``heldout``."""
    progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
    try:
        summary = probe_task(csv, task, model=str(model), labels=csv, out=work / f"{task}.json",
                             save_into=out, device="cpu", progress=progress, heldout=heldout,
                             diagrams=work)
    except XrayWorldModelError as exc:
        raise SystemExit(f"probe ({task}) failed: {exc}") from None
    print(json.dumps(summary, indent=1))
    return out


def refit_heads(model: Path, work: Path, name: str, n_cohort: int = 480,
                n_heldout: int = 600) -> Path:
    """Risk heads, then pathology heads, each calibrated on the held-out cohort, with the
    OOD reference and its held-out threshold (the same features for both tasks; the last
    task's reference is what the card keeps)."""
    cohort = write_cohort(n_cohort, work / "cohort", first_seed=COHORT_SEED, progress=True)
    held = write_cohort(n_heldout, work / "heldout", first_seed=HELDOUT_SEED, progress=True)
    csv = str(cohort["csv"])
    with_risk = fit_heads(model, csv, "risk", work / "with-risk.safetensors", work,
                          heldout=str(held["csv"]))
    return fit_heads(with_risk, csv, "pathology", work / name, work, heldout=str(held["csv"]))


def build(run_dir, version: str, work, n_cohort: int = 480, n_heldout: int = 600) -> Path:
    """The demo model file from training run ``run_dir``, built under ``work``."""
    run_dir, work = Path(run_dir), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    best = run_dir / "checkpoints" / "best.safetensors"
    ckpt = best if best.exists() else resolve_checkpoint(run_dir)
    _, ck, _ = load_checkpoint(ckpt)
    cfg = TrainConfig.from_dict(ck["config"])
    real = real_training_data(cfg.data.source)
    card = {"name": NAME, "version": version, "license": "Apache-2.0", **card_texts(real),
            "domain": training_domain(cfg),
            "training": {"run": str(run_dir), "checkpoint_step": ck["step"],
                         "validation": ck.get("metrics"), "data": cfg.data.source,
                         "real_cts": real}}
    base = export_checkpoint(ckpt, work / "base.safetensors", card)

    final = refit_heads(base, work, f"{NAME}-{version}.safetensors", n_cohort, n_heldout)
    return add_volume_prior(final, final)


def install(model_file: Path) -> dict:
    """Copy into ``builtin/`` and record it in the shipped registry (replacing older entries)."""
    card = read_card(model_file)
    BUILTIN.mkdir(exist_ok=True)
    for old in BUILTIN.glob(f"{NAME}-*.safetensors"):
        old.unlink()
    dest = BUILTIN / model_file.name
    shutil.copyfile(model_file, dest)
    entry = {"name": NAME, "version": card["version"],
             "url": f"package://XrayWorldModel/weights/builtin/{dest.name}",
             "sha256": sha256_file(dest), "size": dest.stat().st_size,
             "card": {"description": card["description"], "license": card["license"],
                      "intended_use": card["intended_use"],
                      **({"disclaimer": card["disclaimer"]} if card.get("disclaimer") else {})}}
    registry = json.loads(REGISTRY.read_text())
    registry["models"] = [m for m in registry["models"] if m.get("name") != NAME] + [entry]
    with atomic_path(REGISTRY) as tmp:
        tmp.write_text(json.dumps(registry, indent=1) + "\n")
    return entry


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="build and install the built-in demo model")
    ap.add_argument("run_dir", nargs="?", help="the cpu-small training run to build from")
    ap.add_argument("--from-model", default=None, metavar="FILE",
                    help="instead of a run: an existing model file to re-version with the "
                         "current volume prior")
    ap.add_argument("--version", default="1.0")
    ap.add_argument("--work", default="demo-model-build")
    ap.add_argument("--cohort", type=int, default=480,
                    help="synthetic cohort size for the heads (default 480)")
    ap.add_argument("--heldout", type=int, default=600,
                    help="held-out cohort size for the calibration and the OOD threshold "
                         "(default 600)")
    ap.add_argument("--refit", action="store_true",
                    help="with --from-model: also refit the heads, calibration and OOD reference")
    args = ap.parse_args(argv)
    if (args.run_dir is None) == (args.from_model is None):
        ap.error("give either RUN_DIR or --from-model FILE")
    if args.from_model:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        source = refit_heads(Path(args.from_model), work, "refit.safetensors", args.cohort,
                             args.heldout) if args.refit else args.from_model
        source_cfg = TrainConfig.from_dict(read_card(args.from_model)["config"])
        updates = card_texts(real_training_data(source_cfg.data.source)) if args.refit else None
        final = add_volume_prior(source, work / f"{NAME}-{args.version}.safetensors",
                                 args.version, card_updates=updates)
    else:
        final = build(args.run_dir, args.version, args.work, args.cohort, args.heldout)
    final = add_mean_views(final, final)   # the mean-view baseline of eval-views
    entry = install(final)
    print(json.dumps(entry, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

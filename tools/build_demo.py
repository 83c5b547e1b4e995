"""Build the built-in demonstration model from a ``cpu-small`` training run on phantoms.

    python tools/build_demo.py RUN_DIR [--cohort N] [--work DIR] [--version V]
    python tools/build_demo.py --from-model FILE --version V

Steps, all reproducible from the run and a seed: export the run's best checkpoint as a model
file; add the domain statistics inference needs (quantiles of the training frontal DRRs);
write a labelled synthetic cohort and fit the pathology and risk probe heads on it (what
``xray2xray probe --save-into`` does); add the volume prior (the mean of the first 64
training CTs, :mod:`XrayWorldModel.infer.prior`); copy the result into
``XrayWorldModel/weights/builtin/`` and record its size and SHA256 in the shipped registry.
``--from-model`` redoes only the last two steps on an existing model file (a new version with
the current prior). The card says plainly what the model is: a demonstration trained on
synthetic chests, not for clinical use.

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
from XrayWorldModel.data.views import render_views  # noqa: E402
from XrayWorldModel.errors import XrayWorldModelError  # noqa: E402
from XrayWorldModel.fileutil import atomic_path, sha256_file  # noqa: E402
from XrayWorldModel.infer.domain import domain_reference  # noqa: E402
from XrayWorldModel.infer.pipeline import isocentric_geometry  # noqa: E402
from XrayWorldModel.infer.prior import CARD_KEY as PRIOR_CARD_KEY, VolumePrior  # noqa: E402
from XrayWorldModel.phantom.cohort import write_cohort  # noqa: E402
from XrayWorldModel.probe.run import probe_task  # noqa: E402
from XrayWorldModel.train.checkpoint import load_checkpoint, resolve_checkpoint  # noqa: E402
from XrayWorldModel.weights.loading import export_checkpoint  # noqa: E402
from XrayWorldModel.weights.model_file import load_model_file, read_card, save_model_file  # noqa: E402

NAME = "xray2xray-demo"
WEIGHTS = ROOT / "XrayWorldModel" / "weights"
BUILTIN = WEIGHTS / "builtin"
REGISTRY = WEIGHTS / "registry.json"
INTENDED_USE = ("Demonstration only. Trained on synthetic procedural chest phantoms (no patient "
                "data); its scores are fitted on synthetic labels. Not for clinical use, not a "
                "medical device.")


def training_volumes(cfg: TrainConfig, n: int = 64):
    """The first ``n`` training CTs of ``cfg``, preprocessed as the trainer saw them."""
    items = resolve_source(cfg.data.source)[:n]
    cache = PreprocessedCache(Path(cfg.data.cache_dir) if cfg.data.cache_dir else None)
    data = VolumeProvider(items, cache, cfg.data.preprocessing(), len(items))
    return [data.get(i)[0] for i in range(len(items))]


def frontals(cfg: TrainConfig, n: int = 64):
    """Frontal (0 deg) DRRs [N, H, W] of the first ``n`` training CTs."""
    return render_views(training_volumes(cfg, n), cfg.views, [0.0])[:, 0]


def add_volume_prior(model_file, out_path, version: str = None, n_volumes: int = 64) -> Path:
    """A copy of ``model_file`` carrying the volume prior built from its own training data
    (and ``version``, when given)."""
    tensors, card = load_model_file(model_file)
    cfg = TrainConfig.from_dict(card["config"])
    vols = training_volumes(cfg, n_volumes)
    prior = VolumePrior.from_volumes(vols, isocentric_geometry(cfg.views, [0.0]),
                                     cfg.views.image_size,
                                     source=f"mean of the first {len(vols)} training CTs "
                                            f"({cfg.data.source})")
    tensors = {k: v for k, v in tensors.items() if not k.startswith("prior.")}
    card = dict(card, **{PRIOR_CARD_KEY: prior.card_entry()})
    if version:
        card["version"] = version
    return save_model_file(out_path, {**tensors, **prior.tensors()}, card)


def fit_heads(model: Path, csv: str, task: str, out: Path, work: Path) -> Path:
    """``xray2xray probe --model MODEL --data CSV --labels CSV --task TASK --save-into OUT``:
    the task's heads fitted on the cohort and merged into a copy of the model file."""
    progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
    try:
        summary = probe_task(csv, task, model=str(model), labels=csv, out=work / f"{task}.json",
                             save_into=out, device="cpu", progress=progress)
    except XrayWorldModelError as exc:
        raise SystemExit(f"probe ({task}) failed: {exc}") from None
    print(json.dumps(summary, indent=1))
    return out


def build(run_dir, version: str, work, n_cohort: int = 160, cohort_seed: int = 50_000) -> Path:
    """The demo model file from training run ``run_dir``, built under ``work``."""
    run_dir, work = Path(run_dir), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    best = run_dir / "checkpoints" / "best.safetensors"
    ckpt = best if best.exists() else resolve_checkpoint(run_dir)
    _, ck, _ = load_checkpoint(ckpt)
    cfg = TrainConfig.from_dict(ck["config"])
    card = {"name": NAME, "version": version, "license": "Apache-2.0",
            "description": "Xray2Xray world model (cpu-small: ViT 64 px, 1.7 M parameters) "
                           "trained on procedural chest phantoms, with probe heads for "
                           "cardiovascular risk and five pathologies fitted on a synthetic cohort.",
            "intended_use": INTENDED_USE,
            "domain": domain_reference(frontals(cfg)),
            "training": {"run": str(run_dir), "checkpoint_step": ck["step"],
                         "validation": ck.get("metrics"), "data": cfg.data.source}}
    base = export_checkpoint(ckpt, work / "base.safetensors", card)

    cohort = write_cohort(n_cohort, work / "cohort", first_seed=cohort_seed, progress=True)
    csv = str(cohort["csv"])
    with_path = fit_heads(base, csv, "pathology", work / "with-pathology.safetensors", work)
    final = fit_heads(with_path, csv, "risk", work / f"{NAME}-{version}.safetensors", work)
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
                      "intended_use": card["intended_use"]}}
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
    ap.add_argument("--cohort", type=int, default=160, help="synthetic cohort size for the heads")
    args = ap.parse_args(argv)
    if (args.run_dir is None) == (args.from_model is None):
        ap.error("give either RUN_DIR or --from-model FILE")
    if args.from_model:
        Path(args.work).mkdir(parents=True, exist_ok=True)
        final = add_volume_prior(args.from_model,
                                 Path(args.work) / f"{NAME}-{args.version}.safetensors",
                                 args.version)
    else:
        final = build(args.run_dir, args.version, args.work, args.cohort)
    entry = install(final)
    print(json.dumps(entry, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

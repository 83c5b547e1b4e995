"""``xray2xray infer CXR --out DIR`` (CXR: a radiograph or a folder of them, :mod:`.batch`),
``demo``, ``eval-views`` and ``eval-volume``: the command-line face of
:func:`.pipeline.run_inference`, :func:`.demo.run_demo`, :func:`.evaluate.evaluate_model_views`
and :func:`.evaluate.evaluate_model_volume`. Both ``eval-`` commands take any ``--model``
(:func:`~XrayWorldModel.weights.loading.resolve_model_ref`).

Only torch-free modules are imported at the top, so that building the command line stays
fast; each command imports the inference code when it runs.
"""
from __future__ import annotations

import argparse
import atexit
import gc
import json
import os
import sys
import time
import warnings
from pathlib import Path

from ..console import progress_bar, show_progress
from ..conventions import UNCERTAINTY_PASSES, parse_angles, uncertainty_passes
from ..errors import GeometryError, InputError
from ..fileutil import check_output_folder
from ..io import DefaultSpacingWarning, read_cxr

#: What ``infer`` and ``demo`` write into their --out folder.
OUTPUTS = "the views, volume and results.json"


def parse_views(text: str):
    """``--views``: comma-separated angles in degrees (none: no predicted views)."""
    try:
        return list(parse_angles(text, allow_empty=True))
    except GeometryError:
        raise InputError(f"--views takes comma-separated angles in degrees, got {text!r}") from None


def passive_openmp_waits() -> None:
    """Let idle OpenMP threads sleep rather than spin (``OMP_WAIT_POLICY=PASSIVE``) unless
    the user chose otherwise. Inference is many small parallel regions; with the default
    spinning, a thread waiting at a barrier takes the core its partner needs whenever the
    machine is busy: on 2 shared cores at load 5, ``run_inference`` took 6.6 s instead of
    0.44 s (median of 7 in one process each, side by side). Read once, when torch first
    loads the OpenMP runtime, so it must run before torch is imported; later it changes
    nothing."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def skip_final_collection() -> None:
    """Spare the process its last full garbage collection at exit, which walks every object
    torch and the model created (about 0.3 s of a fresh ``infer``, measured) only to free
    memory the OS takes back anyway: ``gc.freeze`` at exit hides them from the collector.
    Reference counting still destroys objects and atexit handlers run as usual. Registered
    once per process (in-process callers, the tests, get it at their own exit)."""
    if not getattr(skip_final_collection, "registered", False):
        atexit.register(gc.freeze)
        skip_final_collection.registered = True


def infer_file(path: Path, out: Path, args, model, progress=None):
    """One radiograph through ``run_inference`` into ``out``; returns (result, results dict).
    ``model``: anything :func:`~.pipeline.load_inference_model` takes, loaded or not."""
    from .domain import stated_geometry
    from .outputs import input_info, write_outputs
    from .pipeline import run_inference
    with warnings.catch_warnings():
        if args.pixel_spacing is not None:    # a missing spacing is given: no default to warn of
            warnings.simplefilter("ignore", DefaultSpacingWarning)
        rad = read_cxr(path, check=True)  # not a radiograph at all: refused before the model
    rad = stated_geometry(rad, args.pixel_spacing, args.magnification)
    result = run_inference(rad, model, parse_views(args.views), args.volume_size, args.device,
                           args.sweep_step, args.refine, uncertainty=args.uncertainty,
                           progress=progress, force_scores=args.force_scores)
    return result, write_outputs(result, out, input_info(path, rad))


def run_infer(args) -> int:
    passive_openmp_waits()
    skip_final_collection()
    path = Path(args.cxr).expanduser()
    if path.is_dir():
        from .batch import run_batch
        return run_batch(path, args, infer_file)
    from .trust import score_lines
    t0 = time.perf_counter()
    check_output_folder(args.out, "--out", OUTPUTS)     # before any work
    with UncertaintyProgress(args.uncertainty) as progress:
        result, data = infer_file(path, Path(args.out), args, args.model, progress)
    print(f"model {data['model']['name']}: consistency NCC {result.consistency:.3f} "
          f"({data['consistency']['reading']})")
    for line in score_lines(data):      # the trust verdict, then the scores or why not
        print(line)
    for note in data["preprocessing"]["notes"]:
        print(f"note: {note}")
    print(f"wrote views, volume and results.json to {args.out} "
          f"({time.perf_counter() - t0:.1f} s; model {result.timings['total']:.2f} s)")
    if args.json:
        print(json.dumps(data, indent=1))
    return 0


def add_infer_parser(sub) -> None:
    p = sub.add_parser("infer", help="predict views, a volume and scores from one frontal CXR",
                       description="From one frontal chest radiograph (DICOM, PNG, JPEG): "
                       "predicted views, a reconstructed volume, risk and pathology scores, "
                       "and a consistency score. The scores are shown only when the trust "
                       "verdict finds the input in the model's domain (results.json: trust).")
    p.add_argument("cxr", help="the radiograph file, or a folder of them (each gets its own "
                   "output folder in --out, listed with its verdict in summary.csv; a rerun "
                   "keeps the results already there)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default=None,
                   help="registry name, model file or checkpoint (default: the built-in demo model)")
    p.add_argument("--views", default="90,180,270", help="angles to predict, degrees (default 90,180,270)")
    p.add_argument("--volume-size", type=int, default=128, help="reconstructed volume, voxels per side")
    p.add_argument("--sweep-step", type=float, default=15.0,
                   help="angular step of the sweep reconstructed by FDK (degrees, default 15)")
    p.add_argument("--refine", type=int, default=0, metavar="N",
                   help="N SIRT steps after FDK (sharper volume, ~0.4 s each; default 0)")
    add_uncertainty_argument(p)
    p.add_argument("--force-scores", action="store_true",
                   help="print and store the scores even when the trust verdict says the input "
                   "is out of distribution (they are then marked so); default: withheld")
    p.add_argument("--pixel-spacing", type=float, default=None, metavar="MM",
                   help="mm per pixel at the detector, over the header's (PNG and JPEG have "
                   "none; default: the header's, else estimated from the anatomy)")
    p.add_argument("--magnification", type=float, default=None, metavar="M",
                   help="how much the detector magnifies the chest, over the header's "
                   "(default: the header's, else 1.08, a PA chest at 1800 mm; an AP "
                   "portable at 1000 mm is about 1.16)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--json", action="store_true", help="also print results.json (one file only)")
    p.set_defaults(func=run_infer)


def _passes(text: str) -> int:
    try:
        return uncertainty_passes(text)
    except InputError as exc:      # argparse shows the words of this type only
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_uncertainty_argument(p) -> None:
    p.add_argument("--uncertainty", type=_passes, default=UNCERTAINTY_PASSES,
                   metavar="N", help="test-time augmentation passes for the standard-deviation "
                   f"maps views_std.nii.gz and volume_std.nii.gz (0: off; default "
                   f"{UNCERTAINTY_PASSES})")


class UncertaintyProgress:
    """A ``progress(done, total)`` for the uncertainty maps (the passes, then the
    reconstructions of the volume's std): a bar on a terminal, plain lines in a log or pipe
    (:func:`~XrayWorldModel.console.show_progress`), started at the first report so that its
    rate and ETA count only this work."""

    def __init__(self, passes: int):
        self.passes, self.bar = passes, None

    def __enter__(self):
        return self if self.passes else None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = progress_bar(None, show_progress(), total=total, desc="uncertainty",
                                    unit="steps")
        self.bar.total = total        # the passes, then the volume's reconstructions
        self.bar.update(done - self.bar.n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False


def run_demo_command(args) -> int:
    passive_openmp_waits()
    skip_final_collection()
    check_output_folder(args.out, "--out", "the report, " + OUTPUTS)     # before any work
    from .demo import run_demo
    data = run_demo(args.out, args.cxr, args.model, args.volume_size, args.device,
                    uncertainty=args.uncertainty)
    out = Path(args.out)
    print(f"report: {out / data['report']}")
    print(f"results: {out / 'results.json'} (consistency NCC {data['consistency']['ncc']:.3f})")
    print(f"done in {data['wall_time_s']:.1f} s")
    return 0


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="one-page report: a built-in phantom (or your CXR) through "
                       "the default model", description="Render a built-in procedural chest (or "
                       "read --cxr), run inference with the default model and write report.png "
                       "and results.json.")
    p.add_argument("--out", default="xray2xray-demo", help="output folder (default ./xray2xray-demo)")
    p.add_argument("--cxr", default=None, help="a frontal chest radiograph instead of the phantom")
    p.add_argument("--model", default=None, help="model name or file (default: the built-in demo model)")
    p.add_argument("--volume-size", type=int, default=128, help="reconstructed volume, voxels per side")
    add_uncertainty_argument(p)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.set_defaults(func=run_demo_command)


def check_eval_inputs(args, data: str):
    """The model (cards only) and the data sources listed, so that bad input fails before
    any model or CT is loaded; returns the :class:`~XrayWorldModel.weights.loading.ModelRef`."""
    from ..data import is_stack_source, list_stacks, resolve_source
    from ..weights.loading import resolve_model_ref
    ref = resolve_model_ref(args.model)
    for source in (data, args.baseline_source):
        if source:
            (list_stacks if is_stack_source(source) else resolve_source)(source)
    return ref


def run_eval_volume(args) -> int:
    from .evaluate import evaluate_model_volume
    ref = check_eval_inputs(args, args.data)
    result = evaluate_model_volume(ref, args.data, args.limit, args.volume_size, args.sweep_step,
                                   args.refine, args.baseline_source, args.cache_dir, args.device)
    print(json.dumps(result, indent=1))
    return 0


def run_eval_views(args) -> int:
    from .evaluate import evaluate_model_views
    data = args.data
    if args.seed is not None and data.startswith("phantom:") and data.count(":") == 1:
        data = f"{data}:{args.seed}"
    angles = None if args.angles is None else [float(a) for a in parse_angles(args.angles)]
    ref = check_eval_inputs(args, data)
    t0 = time.perf_counter()
    result = evaluate_model_views(ref, data, angles, args.context_angle, args.limit,
                                  args.baseline_source, args.cache_dir, args.device)
    result["wall_time_s"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(result, indent=1))
    if not result["mean_view"]["available"]:
        print(f"note: mean-view baseline unavailable: {result['mean_view']['reason']}",
              file=sys.stderr)
    return 0


MODEL_HELP = ("registry model name (default: the built-in demo model), model file "
              "(.safetensors), training checkpoint (weights or card file) or run folder")
DATA_HELP = ("held-out CTs: a CT file (NIfTI, NRRD, MetaImage, DICOM folder), a folder of "
             "them, a CSV manifest, or phantom:N[:SEED]")
BASELINE_HELP = ("CTs (any --data form) to take the mean baseline from, instead of the model's "
                 "training data")


def add_eval_views_parser(sub) -> None:
    p = sub.add_parser(
        "eval-views", help="novel-view PSNR/SSIM of a trained model, as JSON",
        description="Predict views at --angles from the frontal (0 deg) view of each CT in "
        "--data and compare with the true DRRs, next to two baselines: copying the input view "
        "and the mean training view (a model file carries it; a checkpoint's is rendered from "
        "its training data; --baseline-source renders it from other CTs).")
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--data", required=True, help=DATA_HELP + ", or stacks:PATH")
    p.add_argument("--angles", default=None, help="target angles, e.g. 45,90 (default: the run's)")
    p.add_argument("--context-angle", type=float, default=0.0,
                   help="angle of the input view, degrees (default 0: PA)")
    p.add_argument("--limit", type=int, default=None, help="evaluate at most N CTs")
    p.add_argument("--seed", type=int, default=None,
                   help="first phantom seed when --data is phantom:N (same as phantom:N:SEED)")
    p.add_argument("--baseline-source", default=None, help=BASELINE_HELP)
    p.add_argument("--cache-dir", default=None, help="preprocessed-CT cache (default: user cache)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.set_defaults(func=run_eval_views)


def add_eval_volume_parser(sub) -> None:
    p = sub.add_parser("eval-volume", help="volume from one frontal view vs the true CT, as JSON",
                       description="Pearson r and SSIM of the volume reconstructed from each "
                       "CT's frontal DRR against the CT (on the model's volume prior, and by FDK "
                       "of the views alone), next to the mean training CT and FDK of the frontal "
                       "view copied to every angle, with the per-CT difference in r against the "
                       "mean CT and its bootstrap 95% CI.")
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--limit", type=int, default=None, help="use at most this many CTs")
    p.add_argument("--baseline-source", default=None, help=BASELINE_HELP + " (the mean CT)")
    p.add_argument("--volume-size", type=int, default=64)
    p.add_argument("--sweep-step", type=float, default=15.0)
    p.add_argument("--refine", type=int, default=0, metavar="N", help="SIRT steps after FDK")
    p.add_argument("--cache-dir", default=None, help="preprocessed-CT cache (default: user cache)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run_eval_volume)

"""What the measuring tools under ``tools/`` share at their command line: the model and the
radiographs and CTs they read, and how they end on a user's mistake (one line naming the
tool and the problem, exit status 2, no traceback: the CLI's own rule)."""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from XrayWorldModel.errors import XrayWorldModelError
from XrayWorldModel.infer.domain import radiograph_input
from XrayWorldModel.io.cxr import read_cxr


def input_parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by ``doc``'s first paragraph, with ``--model``, ``--cxr`` and
    ``--ct``."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model name, file, checkpoint or run folder "
                    "(default: the built-in model)")
    ap.add_argument("--cxr", action="append", default=[], help="a radiograph (repeatable)")
    ap.add_argument("--ct", action="append", default=[], help="a CT (repeatable)")
    return ap


def ct_parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by ``doc``'s first paragraph, with ``--model`` (a checkpoint too)
    and ``--data`` (CTs), for the tools that score a model where the truth is known."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model name, file, checkpoint or run "
                    "folder (default: the built-in model); a checkpoint gets the domain "
                    "statistics its model file would carry, from its training data")
    ap.add_argument("--data", required=True, help="CTs: a file, folder, manifest or "
                    "phantom:N[:SEED]")
    return ap


def model_and_cts(args):
    """(model, card, its TrainConfig, the preprocessed CTs of ``args.data``) for a
    :func:`ct_parser` tool; a checkpoint's card gets the domain its model file would carry."""
    from build_demo import training_domain
    from XrayWorldModel.config import TrainConfig
    from XrayWorldModel.data import PreprocessedCache, resolve_source
    from XrayWorldModel.infer.evaluate import read_volumes
    from XrayWorldModel.weights.loading import load_world_model
    model, card = load_world_model(args.model)
    cfg = TrainConfig.from_dict(card["config"])
    if not card.get("domain"):
        card = {**card, "domain": training_domain(cfg)}
    return model, card, cfg, read_volumes(resolve_source(args.data), cfg, PreprocessedCache(None))


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a count of draws or images)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_inputs(ap: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """``ap``'s arguments from ``argv``, insisting on at least one radiograph or CT."""
    args = ap.parse_args(argv)
    if not args.cxr and not args.ct:
        ap.error("give at least one --cxr or --ct")
    return args


def run_reporting_errors(tool: str, body, args) -> int:
    """``body(args)``; 0, or 2 after one line on stderr when it raises a package error."""
    try:
        body(args)
    except XrayWorldModelError as exc:
        print(f"{tool}: {exc}", file=sys.stderr)
        return 2
    return 0


def model_inputs(paths, card):
    """(file name, :class:`~XrayWorldModel.infer.domain.ModelInput`) for each radiograph,
    through the inference's own input path for the model of ``card``."""
    for path in paths:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # a missing spacing is reported by infer
            yield Path(path).name, radiograph_input(read_cxr(path), card)

"""The ``xray2xray`` command line: it assembles the subcommands, each registered by its
family's ``add_*_parser``, runs the chosen one and reports package errors in one line.

* ``demo``        a built-in phantom (or a CXR) through the default model: report.png + results.
* ``infer``       one frontal CXR (or a folder of them) -> predicted views, a volume, scores,
  consistency (:mod:`.infer.cli`, :mod:`.infer.batch`).
* ``drr``         CT(s) -> DRR stacks (NIfTI + JSON sidecar, optional PNG/DICOM views); many CTs
  go to a folder, resumable and shardable across processes (:mod:`.drr.cli`, :mod:`.drr.batch`).
* ``phantom``     a synthetic chest CT (HU), or a labelled cohort (:mod:`.phantom.cli`).
* ``recon``       DRR stack -> volume (FDK), in HU (:mod:`.recon.cli`).
* ``train``: the world model's training (:mod:`.train.cli`); ``eval-views`` and
  ``eval-volume``: any model's views and volume against baselines (:mod:`.infer.cli`).
* ``probe``       logistic / Cox heads on the model's latents (:mod:`.probe.cli`).
* ``models``      list, fetch, import, remove and locate trained models (:mod:`.weights.cli`).
* ``study``, ``study-analysis``: the in-silico study (:mod:`.study.cli`).
* ``web``         the Slicer module's workflow in a web browser: runs the checkout's
  ``Xray2XrayWeb`` front end in its own process (:mod:`.web`; needs the ``[web]`` extra).

Bad input ends with one line ``xray2xray: error: ...`` on stderr and exit status 2, never a
traceback (:func:`.console.run_command`); command modules import torch only inside their
command functions, so ``xray2xray --help`` and ``xray2xray models list`` stay quick.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .console import EXIT_INPUT_ERROR, PROG, emit_error, run_command
from .drr.cli import add_drr_parser
from .infer.cli import (add_demo_parser, add_eval_views_parser, add_eval_volume_parser,
                         add_infer_parser)
from .phantom.cli import add_phantom_parser
from .probe.cli import add_probe_parser
from .recon.cli import add_recon_parser
from .study.cli import add_study_parser
from .train.cli import add_train_parser
from .version import __version__
from .weights.cli import add_models_parser
from .web import add_web_parser

#: The command families, in the order ``xray2xray --help`` lists them.
PARSERS = (add_drr_parser, add_phantom_parser, add_recon_parser, add_train_parser,
           add_eval_views_parser, add_models_parser, add_probe_parser, add_infer_parser, add_demo_parser,
           add_eval_volume_parser, add_study_parser, add_web_parser)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Xray2Xray chest X-ray world model: DRR datasets from chest CTs, "
        "synthetic phantoms and reconstructions.")
    p.add_argument("--version", action="store_true", help="print the package version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for add_parser in PARSERS:
        add_parser(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input or usage, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:   # argparse: usage errors (2) and --help (0)
        return int(exc.code or 0)
    if args.version:
        print(f"{PROG} {__version__}")
        return 0
    if getattr(args, "func", None) is None:
        parser.print_usage(sys.stderr)
        emit_error("a command is required "
                   "(demo, infer, drr, phantom, recon, train, eval-views, probe or models)")
        return EXIT_INPUT_ERROR
    return run_command(args.func, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``python -m XrayWorldModel.train --config ... [key=value ...]`` (also under torchrun):
``xray2xray train`` without the rest of the command line."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..console import PROG, run_command
from .cli import add_train_parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse as ``xray2xray train ARGV`` (same usage, messages and exit statuses) and train."""
    parser = argparse.ArgumentParser(prog=PROG)
    add_train_parser(parser.add_subparsers(dest="command"))
    try:
        args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    except SystemExit as exc:   # argparse: usage errors (2) and --help (0)
        return int(exc.code or 0)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())

"""How the measuring tools under ``tools/`` end on a user's mistake: one line naming the tool
and the problem, exit status 2, no traceback (the CLI's own rule)."""
from __future__ import annotations

import sys

from XrayWorldModel.errors import XrayWorldModelError


def run_reporting_errors(tool: str, body, args) -> int:
    """``body(args)``; 0, or 2 after one line on stderr when it raises a package error."""
    try:
        body(args)
    except XrayWorldModelError as exc:
        print(f"{tool}: {exc}", file=sys.stderr)
        return 2
    return 0

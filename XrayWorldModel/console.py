"""What the command line shows a person: one-line messages and warnings on stderr, progress
bars only on a terminal, and package errors turned into one line and exit status 2.

Torch-free and below everything else, so every command module (``cli``, ``*/cli.py``,
``python -m XrayWorldModel.train``) reports in the same words.
"""
from __future__ import annotations

import sys
import warnings
from typing import Callable

from .errors import XrayWorldModelError

PROG = "xray2xray"

#: Exit status of bad input or usage, and of an interrupted run.
EXIT_INPUT_ERROR, EXIT_INTERRUPTED = 2, 130


def emit(line: str) -> None:
    """One line on stderr, without breaking an active tqdm bar."""
    line = " ".join(str(line).split())
    try:
        from tqdm import tqdm
        tqdm.write(line, file=sys.stderr)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        print(line, file=sys.stderr)


def emit_error(message) -> None:
    """``xray2xray: error: MESSAGE`` on stderr."""
    emit(f"{PROG}: error: {message}")


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A ``warnings.showwarning`` that prints ``xray2xray: warning: ...`` on one line."""
    emit(f"{PROG}: warning: {message}")


def quiet_itk() -> None:
    """ITK prints multi-line C++ warnings straight to stderr; the package reports problems as
    typed errors and warnings instead, so those raw lines are switched off for the CLI."""
    try:
        import SimpleITK as sitk
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
    except (ImportError, AttributeError):  # pragma: no cover
        pass


def show_progress() -> bool:
    """Progress bars only for a person watching (a terminal), never in logs or pipes."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def run_command(func: Callable[[object], int], args) -> int:
    """Run one command: warnings as single lines, package errors and OS errors as one
    ``xray2xray: error:`` line and status 2, Ctrl-C as status 130; never a traceback."""
    quiet_itk()
    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        try:
            return int(func(args) or 0)
        except XrayWorldModelError as exc:
            emit_error(exc)
            return EXIT_INPUT_ERROR
        except OSError as exc:   # unwritable output folder, disk full, permissions
            name = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            emit_error(f"{name}{exc.strerror or exc}")
            return EXIT_INPUT_ERROR
        except KeyboardInterrupt:
            emit(f"{PROG}: interrupted")
            return EXIT_INTERRUPTED

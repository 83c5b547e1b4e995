"""What the command line shows a person: one-line messages and warnings on stderr, progress
(tqdm bars on a terminal, plain lines at most one every few seconds in logs and pipes,
nothing with ``--quiet``), and package errors turned into one line and exit status 2.

Torch-free and below everything else, so every command module (``cli``, ``*/cli.py``,
``python -m XrayWorldModel.train``) reports in the same words.
"""
from __future__ import annotations

import sys
import time
import warnings
from typing import Callable, Iterable, Optional, Union

from .errors import Interrupted, XrayWorldModelError

PROG = "xray2xray"

#: Exit status of bad input or usage, and of an interrupted run (128 + SIGINT).
EXIT_INPUT_ERROR, EXIT_INTERRUPTED = 2, 130

#: Progress modes: tqdm bars (a terminal), plain lines (a log or a pipe), or nothing.
BAR, LINES, QUIET = "bar", "lines", ""
#: Least seconds between two plain progress lines.
PROGRESS_LINE_INTERVAL_S = 5.0

#: What a ``progress=`` argument may be: a mode, or a bool (True: a bar, as before modes).
Progress = Union[str, bool, None]


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


def show_progress(quiet: bool = False) -> str:
    """How a command shows progress: :data:`BAR` when stderr is a terminal (a person
    watching), :data:`LINES` when it is a log or a pipe (CI, Slicer's job log, batch
    scripts), :data:`QUIET` (falsy) with ``--quiet``."""
    if quiet:
        return QUIET
    return BAR if bool(getattr(sys.stderr, "isatty", lambda: False)()) else LINES


def progress_mode(progress: Progress) -> str:
    """The mode a ``progress=`` argument asks for (True is a bar, falsy is nothing)."""
    if progress is True:
        return BAR
    return progress if progress in (BAR, LINES) else QUIET


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


class LineTicker:
    """Decides when a plain progress line is due: at most one per ``interval`` seconds."""

    def __init__(self, interval: float = PROGRESS_LINE_INTERVAL_S,
                 clock: Optional[Callable[[], float]] = None):
        self.interval, self.clock = interval, clock or time.monotonic
        self.start = self.last = self.clock()

    def due(self) -> bool:
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            return True
        return False

    def elapsed(self) -> float:
        return self.clock() - self.start


class LineProgress:
    """The part of tqdm's interface the package uses, printing plain lines instead of a bar:
    ``xray2xray: DRR (fast) 16/180 views (9%), 3.2 views/s, ETA 51 s``, at most one per
    :data:`PROGRESS_LINE_INTERVAL_S`, and a closing line when any was printed."""

    def __init__(self, iterable: Optional[Iterable] = None, total: Optional[int] = None,
                 desc: str = "", unit: str = "it", initial: int = 0,
                 interval: float = PROGRESS_LINE_INTERVAL_S,
                 clock: Optional[Callable[[], float]] = None, **_ignored):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.initial = int(initial)
        self.postfix = ""
        self.ticker = LineTicker(interval, clock)
        self.printed = 0
        self.closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.ticker.due():
            self._line()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k} {v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def _line(self, closing: bool = False) -> None:
        done = self.n - self.initial
        elapsed = self.ticker.elapsed()
        units = self.unit if self.unit.endswith("s") else self.unit + "s"
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"{PROG}: {self.desc + ' ' if self.desc else ''}{count} {units}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        if closing:
            parts.append(f"done in {format_duration(elapsed)}")
        elif done > 0 and elapsed > 0:
            rate = done / elapsed
            parts.append(f"{rate:.3g} {units}/s")
            if self.total:
                parts.append(f"ETA {format_duration((self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        emit(", ".join(parts))
        self.printed += 1

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.printed:
            self._line(closing=True)


def progress_bar(iterable: Optional[Iterable] = None, progress: Progress = BAR, **kwargs):
    """A tqdm bar, plain :class:`LineProgress` lines or a silent pass-through, as
    ``progress`` asks (a mode from :func:`show_progress`, or a bool); ``kwargs`` are tqdm's
    (``total``, ``desc``, ``unit``, ``initial``...)."""
    mode = progress_mode(progress)
    if mode == LINES:
        return LineProgress(iterable, **kwargs)
    from tqdm.auto import tqdm
    return tqdm(iterable, disable=mode != BAR, **kwargs)


def run_command(func: Callable[[object], int], args) -> int:
    """Run one command: warnings as single lines, package errors and OS errors as one
    ``xray2xray: error:`` line and status 2, an interrupted run as one line and 130 (SIGINT)
    or 143 (SIGTERM); never a traceback."""
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
        except Interrupted as exc:
            emit(f"{PROG}: {exc}")
            return exc.exit_status
        except KeyboardInterrupt:
            emit(f"{PROG}: interrupted")
            return EXIT_INTERRUPTED

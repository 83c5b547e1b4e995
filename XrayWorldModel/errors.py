"""The package's exception hierarchy.

Every failure caused by what a user handed us (a file, an argument) is raised as a
subclass of :class:`XrayWorldModelError` whose message names the file and the problem,
so that the CLI and the Slicer module can show one line instead of a traceback.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, Path]


class XrayWorldModelError(Exception):
    """Base class of every error the package raises on purpose."""


class InputError(XrayWorldModelError, ValueError):
    """Bad input: a file or argument that cannot be used as given.

    ``path`` (when known) is prefixed to the message so the user sees which file failed.
    """

    def __init__(self, message: str, path: Optional[PathLike] = None):
        self.path = None if path is None else Path(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


class FileNotFoundInputError(InputError, FileNotFoundError):
    """The named file or folder does not exist."""


class UnreadableFileError(InputError):
    """The file exists but cannot be decoded (corrupt, truncated, unknown format)."""


class EmptyFolderError(InputError):
    """A folder that should hold an image series holds none."""


class NotAVolumeError(InputError):
    """A 3D volume was expected (a CT) but the input is not one (for example a 2D image)."""


class NotARadiographError(InputError):
    """A 2D radiograph was expected but the input is something else (for example a CT)."""


class NonFiniteDataError(InputError):
    """The image holds NaN or infinite values."""


class GeometryError(InputError):
    """Projection geometry parameters that cannot describe a real acquisition."""


class Interrupted(Exception):
    """A long run stopped on SIGINT or SIGTERM after saving what it had (for example a
    training checkpoint at the current step). Not an input error: the command line exits
    with 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, message: str, signum: int):
        self.signum = int(signum)
        self.exit_status = 128 + self.signum
        super().__init__(message)

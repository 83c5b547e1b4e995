"""Checks of what a user hands the module: angle lists and the volume size.

Shared by the in-process logic (:mod:`.core`) and the background jobs (:mod:`.jobs`), so the
widget, the console and a job refuse the same input with the same message. A text angle list
("0,90") is read by ``XrayWorldModel.conventions.parse_angles``, the package's own syntax.
Every refusal is an :class:`InputError` (a ``ValueError``).
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np

from XrayWorldModel.conventions import parse_angles
from XrayWorldModel.errors import InputError

#: Edge of the reconstructed volume (voxels) that inference accepts.
VOLUME_SIZE_RANGE = (16, 512)


def angleList(value, what: str = "angles", allowEmpty: bool = False,
              distinct: bool = True) -> Tuple[float, ...]:
    """Angles in degrees from text ("0,90"), one number or a sequence of numbers, in the
    order given. They must be finite and, with ``distinct``, differ as the sequence items
    they become ("90" and "90.0" are the same item). ``allowEmpty``: None or an empty list
    gives () instead of an error. ``what`` names the parameter in the messages."""
    if value is None:
        if allowEmpty:
            return ()
        raise InputError(f"no {what} given; pass e.g. {what}=[0, 90] (degrees)")
    if isinstance(value, str):
        values = list(parse_angles(value, allow_empty=allowEmpty))
    else:
        try:
            values = [float(a) for a in np.atleast_1d(np.asarray(value, dtype=np.float64))]
        except (TypeError, ValueError):
            raise InputError(f"{what} must be numbers in degrees, got {value!r}") from None
    if not values and not allowEmpty:
        raise InputError(f"no {what} given (an empty list); pass e.g. {what}=[0, 90] (degrees)")
    if not all(math.isfinite(a) for a in values):
        raise InputError(f"{what} must be finite numbers in degrees, got {values}")
    keys = [f"{a:g}" for a in values]
    if distinct and len(set(keys)) != len(keys):
        raise InputError(f"{what} must be distinct (each becomes one sequence item), got {values}")
    return tuple(values)


def volumeSize(value) -> int:
    """The reconstructed volume's edge in voxels: a whole number in ``VOLUME_SIZE_RANGE``."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise InputError(f"volumeSize must be a whole number of voxels, got {value!r}") from None
    lo, hi = VOLUME_SIZE_RANGE
    if n != value or not lo <= n <= hi:
        raise InputError(f"volumeSize must be a whole number between {lo} and {hi}, got {value!r}")
    return n

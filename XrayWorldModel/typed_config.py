"""Typed configuration sections: values checked against dataclass annotations.

Training and the in-silico study read JSON/TOML configs into dataclasses; both need the same
strictness (unknown keys and wrong types stop with the key named, ints pass as floats,
nothing else is converted), so it lives here once.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Mapping, Tuple, Union

from .errors import InputError


def coerce(key: str, value: Any, hint) -> Any:
    """``value`` checked against ``hint``: int, float, bool, str, Optional, Union of
    float/str, homogeneous tuples. Ints pass as floats; nothing else is converted."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return coerce(key, value, a)
            except InputError as exc:
                errors.append(exc)
        names = " or ".join(getattr(a, "__name__", str(a)) for a in args)
        raise InputError(f"config: {key} must be {names}, got {type(value).__name__} {value!r}")
    if origin in (tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            raise InputError(f"config: {key} must be a list, got {type(value).__name__} {value!r}")
        return tuple(coerce(key, v, args[0]) for v in value)
    checks = {bool: lambda v: isinstance(v, bool),
              int: lambda v: isinstance(v, int) and not isinstance(v, bool),
              float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
              and math.isfinite(v),
              str: lambda v: isinstance(v, str)}
    if not checks[hint](value):
        raise InputError(f"config: {key} must be {hint.__name__}, got {type(value).__name__} {value!r}")
    return float(value) if hint is float else value


def build_section(cls, data: Mapping[str, Any], section: str, label_errors: bool = True):
    """``cls(**data)`` after checking every key and type; with ``label_errors`` the class's
    own validation errors are prefixed with the section name."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise InputError(f"config: unknown key {section}.{key} "
                             f"(known: {', '.join(sorted(names))})")
        kwargs[key] = coerce(f"{section}.{key}", value, hints[key])
    if not label_errors:
        return cls(**kwargs)
    try:
        return cls(**kwargs)
    except InputError as exc:
        raise InputError(f"config: {section}: {exc}") from None

"""The chest generators a phantom source or a cohort can name, by kind.

``chest`` is the original procedural chest (:mod:`.chest`), the default everywhere, so every
model, reference and test built on it keeps its exact input. ``chest2`` is the realistic
variant (:mod:`.realistic`). Both share one contract: a builder returning ``(hu, labels,
context)`` that the findings code (:mod:`.findings`) places itself in, and a function that
wraps those arrays as Volumes.
"""
from __future__ import annotations

from typing import Callable, Dict, NamedTuple

from ..errors import InputError
from . import names
from .chest import _as_volumes, _build_chest, procedural_chest
from .realistic import as_realistic_volumes, build_realistic_chest, realistic_chest


class ChestVariant(NamedTuple):
    """One generator: the public function, the raw builder and the Volume wrapper."""

    make: Callable            # (seed=, shape=, spacing=, return_labels=, noise_hu=, heart_scale=)
    build: Callable           # (seed, shape, spacing, noise_hu, heart_scale) -> hu, labels, ctx
    as_volumes: Callable      # (hu, labels, ctx, seed, return_labels, extra_meta)


CHEST_VARIANTS: Dict[str, ChestVariant] = {
    "chest": ChestVariant(procedural_chest, _build_chest, _as_volumes),
    "chest2": ChestVariant(realistic_chest, build_realistic_chest, as_realistic_volumes),
}
#: Kinds of procedural chest, the default first.
CHEST_KINDS = tuple(CHEST_VARIANTS)
assert CHEST_KINDS == names.CHEST_KINDS, "phantom.names.CHEST_KINDS is out of date"


def chest_variant(kind: str) -> ChestVariant:
    """The generator of ``kind``; :class:`InputError` naming the kinds otherwise."""
    try:
        return CHEST_VARIANTS[str(kind).lower()]
    except KeyError:
        raise InputError(f"unknown chest kind {kind!r}; use one of {', '.join(CHEST_KINDS)}") \
            from None


def chest_volume(kind: str = "chest", **kwargs):
    """A chest of ``kind`` (keyword arguments as :func:`.chest.procedural_chest`)."""
    return chest_variant(kind).make(**kwargs)


__all__ = ["CHEST_KINDS", "CHEST_VARIANTS", "ChestVariant", "chest_variant", "chest_volume"]

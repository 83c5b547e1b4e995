"""Built-in phantoms named as CT inputs: one spelling for the DRR job and the training data.

===============================  ==============================================
``phantom:chest``                the procedural chest with anatomy seed 0
``phantom:chest:SEED``           the procedural chest with anatomy seed SEED
``phantom:chest2[:SEED]``        the realistic chest variant (:mod:`.realistic`)
``phantom:ellipsoid``            the fixed, exact ellipsoid phantom (attenuation)
``phantom:N``                    N procedural chests, seeds 0 .. N-1
``phantom:N:FIRST_SEED``         N procedural chests, seeds FIRST_SEED .. FIRST_SEED+N-1
``phantom:N[:FIRST_SEED]:KIND``  N chests of KIND (``chest`` or ``chest2``)
===============================  ==============================================

The prefix and the kind are read case-insensitively. Without a kind, a chest is the original
procedural chest, so every existing spelling names exactly what it named before.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ..errors import InputError
from ..volume import Volume
from . import names
from .ellipsoid import default_ellipsoid_phantom
from .variants import CHEST_KINDS, chest_volume

PREFIX = "phantom:"
PHANTOM_KINDS = names.PHANTOM_KINDS
#: Grid of ``phantom:ellipsoid`` (it fits a 256 mm cube).
ELLIPSOID_SHAPE, ELLIPSOID_SPACING = (128, 128, 128), 2.0

_SPELLINGS = {"chest": "phantom:chest, phantom:chest:SEED (an integer), phantom:N or "
                       "phantom:N:FIRST_SEED (N chests)",
              "chest2": "phantom:chest2, phantom:chest2:SEED or phantom:N[:FIRST_SEED]:chest2 "
                        "(realistic chests)",
              "ellipsoid": "phantom:ellipsoid"}


@dataclass(frozen=True)
class PhantomSource:
    """What a ``phantom:...`` input names: ``count`` phantoms of one ``kind``, the chests
    with seeds ``first_seed`` .. ``first_seed + count - 1``."""

    kind: str = "chest"
    first_seed: int = 0
    count: int = 1

    @property
    def seeds(self) -> range:
        return range(self.first_seed, self.first_seed + self.count)

    def specs(self) -> List[str]:
        """One single-phantom spelling per volume: ``phantom:chest:SEED`` or
        ``phantom:ellipsoid``."""
        if self.kind == "ellipsoid":
            return [f"{PREFIX}ellipsoid"]
        return [f"{PREFIX}{self.kind}:{seed}" for seed in self.seeds]

    def load(self, seed: Optional[int] = None) -> Tuple[Volume, str]:
        """(volume, units) of one phantom at its default grid: a chest in ``"hu"``, the
        ellipsoid phantom in ``"mu"`` (1/mm); ``seed`` defaults to ``first_seed``."""
        if self.kind == "ellipsoid":
            return default_ellipsoid_phantom().voxelize(ELLIPSOID_SHAPE, ELLIPSOID_SPACING), "mu"
        return chest_volume(self.kind, seed=self.first_seed if seed is None else seed), "hu"


def is_phantom_source(text: str) -> bool:
    """Whether ``text`` is spelled as a built-in phantom (``phantom:...``)."""
    return str(text).lower().startswith(PREFIX)


def parse_phantom_source(spec: str, kinds: Sequence[str] = PHANTOM_KINDS) -> PhantomSource:
    """The phantom(s) that ``spec`` names (see the module's table), of one of ``kinds``;
    :class:`InputError` naming the accepted spellings otherwise."""
    found = _parse(spec, kinds)
    if found.kind not in kinds:
        raise InputError(f"{spec!r} cannot be used here; use {_spelled(kinds)}")
    return found


def _spelled(kinds: Sequence[str]) -> str:
    return "; or ".join(_SPELLINGS[k] for k in kinds)


def _parse(spec: str, kinds: Sequence[str]) -> PhantomSource:
    parts = str(spec).split(":")
    head = parts[1].lower() if len(parts) > 1 else ""
    try:
        if not is_phantom_source(spec) or len(parts) > 4:
            raise ValueError
        if head in PHANTOM_KINDS:
            if len(parts) > 3 or (head == "ellipsoid" and len(parts) > 2):
                raise ValueError
            return PhantomSource(head, int(parts[2]) if len(parts) == 3 else 0)
        count, rest = int(head), parts[2:]
        kind = rest.pop().lower() if rest and rest[-1].lower() in CHEST_KINDS else "chest"
        if len(rest) > 1:
            raise ValueError
        first = int(rest[0]) if rest else 0
    except ValueError:
        raise InputError(f"unknown built-in phantom {spec!r}; use {_spelled(kinds)}") from None
    if count < 1:
        raise InputError(f"phantom source needs at least one phantom, got {spec!r}")
    return PhantomSource(kind, first, count)

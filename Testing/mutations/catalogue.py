"""Deliberate one-line bugs, one per invariant a user relies on, each with the tests that
must catch it. ``run.py`` applies them one at a time to a scratch copy.

An anchor is an exact, unique piece of the current source; when the code moves, the
runner reports "anchor missing" and the entry here must be updated with it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class Mutation:
    id: str
    file: str
    anchor: str
    replacement: str
    tests: Tuple[str, ...]
    invariant: str


MUTATIONS = (
    Mutation("joseph-drops-last-slice", "XrayWorldModel/drr/joseph.py",
             "    return max(0, int(math.ceil(xa))), min(na - 1, int(math.floor(xb)))",
             "    return max(0, int(math.ceil(xa))), min(na - 2, int(math.floor(xb)))",
             ("Testing/test_drr.py",),
             "the fast renderer integrates through every slice of the volume"),
    Mutation("tilt-sign-flipped", "XrayWorldModel/geometry.py",
             "        e = math.cos(t) * e0 + math.sin(t) * z",
             "        e = math.cos(t) * e0 - math.sin(t) * z",
             ("Testing/test_oracles.py",),
             "positive tilt moves the source towards the head (DESIGN.md)"),
    Mutation("dicom-sorted-by-file-name", "XrayWorldModel/io/ct.py",
             "[_Series(uid, list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)))",
             "[_Series(uid, sorted(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)))",
             ("Testing/test_oracles.py",),
             "DICOM slices are stacked by position along the slice normal, not by file name"),
)

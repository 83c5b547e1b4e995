"""The names the phantom command line and data sources accept, without building anything.

Kept apart from the generators (which import scipy) so that assembling ``xray2xray``'s
parser, which every command pays for, stays cheap; :mod:`.variants` checks at import that
its registry matches these names, and :mod:`.findings` re-exports them.
"""
from __future__ import annotations

from typing import Tuple

#: Kinds of procedural chest, the default first (:data:`.variants.CHEST_VARIANTS`).
CHEST_KINDS: Tuple[str, ...] = ("chest", "chest2")
#: Everything ``xray2xray phantom --kind`` builds.
PHANTOM_KINDS: Tuple[str, ...] = (*CHEST_KINDS, "ellipsoid")
#: The findings a synthetic cohort labels, in label-column order.
FINDINGS: Tuple[str, ...] = ("atelectasis", "cardiomegaly", "consolidation", "edema",
                             "pleural_effusion")

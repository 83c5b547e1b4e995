"""Sample data made on this machine: the synthetic chest.

"synthetic chest (Xray2Xray)" is the package's procedural chest phantom
(``XrayWorldModel.phantom.procedural_chest``, a CT in HU with lungs, heart, aorta, spine and
ribs), generated in about a second, with nothing downloaded. The Slicer module registers it
with Slicer's Sample Data module (``Xray2Xray.registerSampleData``); the web front end offers
it as an input (``xray2xray web --sample``). Both add it to a scene with
:func:`addSyntheticChest`.
"""
from __future__ import annotations

from typing import Optional

from . import conversions as conv

#: The Sample Data entry: category (section title) and sample name (button text).
SAMPLE_CATEGORY = "Xray2Xray"
SYNTHETIC_CHEST = "synthetic chest (Xray2Xray)"
#: Name of the volume node it makes.
SYNTHETIC_CHEST_NODE = "SyntheticChest"
#: The thumbnail shown in Sample Data (a PA DRR of the same phantom), in Resources/Icons.
SYNTHETIC_CHEST_THUMBNAIL = "SyntheticChest.png"
#: The phantom's seed: the same volume every time.
SYNTHETIC_CHEST_SEED = 0


def syntheticChest(seed: int = SYNTHETIC_CHEST_SEED):
    """The synthetic chest CT as a package ``Volume`` (HU, LPS affine; 128x128x96 voxels of
    2.8x2.8x3.5 mm, centred on the origin)."""
    from XrayWorldModel.phantom import procedural_chest   # numpy/scipy: only now
    return procedural_chest(seed=seed)


def addSyntheticChest(scene, seed: int = SYNTHETIC_CHEST_SEED, name: Optional[str] = None):
    """Add the synthetic chest to ``scene`` as a scalar volume node with its true geometry and
    return the node."""
    name = name or SYNTHETIC_CHEST_NODE
    if scene is not None and scene.GetFirstNodeByName(name) is not None:
        name = scene.GenerateUniqueName(name)
    return conv.volumeToVolumeNode(syntheticChest(seed), scene, name)

"""Xray2XrayLib: the Qt-free part of the Xray2Xray Slicer module.

Imports with nothing but slicer-core (MRML), numpy and XrayWorldModel, so it runs in Slicer,
in Slicer's Python console and in plain pytest. ``conversions`` is the only place where RAS
meets LPS; ``core`` holds :class:`Xray2XrayCoreLogic`; ``jobs`` describes the background
processes (training, folders of CTs, model registry) the widget runs; ``parameters`` checks
what users type (angle lists, volume size) the same way for both. Shared constants and rules
(suffixes, format tags, view positions, the angle-list syntax, the model cache) come from
``XrayWorldModel.conventions``, never from a copy here.
"""
from .conversions import (LPS_TO_RAS, radiographToVolumeNode, volumeNodeToRadiograph,
                          volumeNodeToVolume, volumeToVolumeNode)
from .core import CancelledError, Xray2XrayCoreLogic

__all__ = ["Xray2XrayCoreLogic", "CancelledError", "LPS_TO_RAS", "volumeNodeToVolume",
           "volumeToVolumeNode", "volumeNodeToRadiograph", "radiographToVolumeNode"]

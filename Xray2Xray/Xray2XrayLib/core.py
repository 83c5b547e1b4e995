"""Xray2XrayCoreLogic: the work of the Slicer module on an MRML scene, without Qt.

Everything here runs in Slicer's Python console, in ``Xray2XrayLogic`` (which delegates to
it), and on plain ``slicer-core`` (the tests). Heavy modules (torch, the renderers) are
imported inside the methods that need them, never at import time.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from XrayWorldModel.errors import InputError, XrayWorldModelError
from XrayWorldModel.geometry import DEFAULT_SDD, DEFAULT_SOD, ProjectionGeometry

from . import conversions as conv

#: Attribute / reference names on the nodes the logic creates.
ATTR_GEOMETRY = conv.ATTR_PREFIX + "Geometry"            # JSON of ProjectionGeometry.to_dict()
ATTR_METHOD = conv.ATTR_PREFIX + "Method"
ATTR_ANGLE = conv.ATTR_PREFIX + "Angle"
ATTR_KIND = conv.ATTR_PREFIX + "Kind"                    # "DRRSequence", "DRR"
REF_SOURCE_CT = "Xray2XraySourceCT"

DEFAULT_DETECTOR = (256, 256)
DEFAULT_PIXEL_SPACING = 1.6

ProgressCallback = Callable[[float, str], Optional[bool]]


class CancelledError(XrayWorldModelError):
    """The user cancelled a running job (the progress callback returned False)."""


def _viewPosition(angle: float) -> str:
    a = angle % 360.0
    for ref, name in ((0.0, "PA"), (90.0, "LL"), (180.0, "AP"), (270.0, "RL")):
        if min(abs(a - ref), 360.0 - abs(a - ref)) < 1e-6:
            return name
    return ""


def _parseAngles(angles) -> Tuple[float, ...]:
    if angles is None:
        raise InputError("no angles given; pass e.g. angles=[0, 90] (degrees)")
    if isinstance(angles, str):
        from XrayWorldModel.geometry import parse_angles
        values = list(parse_angles(angles))
    else:
        try:
            values = [float(a) for a in np.atleast_1d(np.asarray(angles, dtype=np.float64))]
        except (TypeError, ValueError):
            raise InputError(f"angles must be numbers in degrees, got {angles!r}") from None
    if not values:
        raise InputError("no angles given (an empty list); pass e.g. angles=[0, 90] (degrees)")
    if not all(math.isfinite(a) for a in values):
        raise InputError(f"angles must be finite numbers in degrees, got {values}")
    keys = [f"{a:g}" for a in values]
    if len(set(keys)) != len(keys):
        raise InputError(f"angles must be distinct (each becomes one sequence item), got {values}")
    return tuple(values)


def _pair(value, what: str, kind=float) -> Tuple:
    try:
        arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (2,))
    except (TypeError, ValueError):
        raise InputError(f"{what} must be one number or two, got {value!r}") from None
    if kind is int:
        if not np.all(arr == np.round(arr)):
            raise InputError(f"{what} must be whole numbers, got {value!r}")
        return tuple(int(v) for v in arr)
    return tuple(float(v) for v in arr)


class Xray2XrayCoreLogic:
    """The module's logic on one MRML scene (Qt-free).

    ``sequencesLogic``: Slicer's ``slicer.modules.sequences.logic()`` when running inside
    Slicer; on plain slicer-core a private ``vtkSlicerSequencesLogic`` is made on first use.
    """

    def __init__(self, scene=None, sequencesLogic=None):
        if scene is None:
            import slicer
            scene = getattr(slicer, "mrmlScene", None)
        if scene is None:
            raise InputError("no MRML scene: pass one, e.g. Xray2XrayCoreLogic(slicer.mrmlScene)")
        self.scene = scene
        self._sequencesLogic = sequencesLogic

    # ------------------------------------------------------------------ helpers
    def sequencesLogic(self):
        if self._sequencesLogic is None:
            import slicer
            logic = None
            modules = getattr(slicer, "modules", None)
            if modules is not None and hasattr(modules, "sequences"):
                logic = modules.sequences.logic()
            if logic is None or logic.GetMRMLScene() is not self.scene:
                logic = slicer.vtkSlicerSequencesLogic()
                logic.SetMRMLScene(self.scene)
            self._sequencesLogic = logic
        return self._sequencesLogic

    def _requireInScene(self, node, what: str):
        if node.GetScene() is not self.scene:
            raise InputError(f"{what} node '{node.GetName()}' is not in this logic's scene")

    def _subjectHierarchy(self):
        """The scene's subject hierarchy node, or None (none is created here)."""
        return self.scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode")

    def _placeInHierarchy(self, sourceNode, nodes) -> None:
        """Put ``nodes`` beside ``sourceNode``: under its study (or its parent folder)."""
        sh = self._subjectHierarchy()
        if sh is None:
            return
        parent = sh.GetSceneItemID()
        srcItem = sh.GetItemByDataNode(sourceNode) if sourceNode is not None else 0
        if srcItem:
            study = sh.GetItemAncestorAtLevel(srcItem, "Study")
            parent = study if study else (sh.GetItemParent(srcItem) or parent)
        for node in nodes:
            if node is None:
                continue
            item = sh.GetItemByDataNode(node)
            if item:
                sh.SetItemParent(item, parent)
            else:
                sh.CreateItem(parent, node)

    # ------------------------------------------------------------------ loading
    def loadCT(self, path, name: Optional[str] = None):
        """Read a CT (NIfTI, NRRD, MetaImage, DICOM file or series folder) with the package's
        reader and add it as a scalar volume node with its true geometry."""
        from XrayWorldModel.io import read_ct
        volume = read_ct(path)
        p = Path(path)
        stem = p.name
        for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        return conv.volumeToVolumeNode(volume, self.scene, name or stem)

    def loadRadiograph(self, path, name: Optional[str] = None):
        """Read a radiograph (DICOM CR/DX, PNG, JPEG) in display convention (bone bright) and
        add it as a single-slice volume node (PA detector frame, centred on the origin)."""
        from XrayWorldModel.io import read_cxr
        radiograph = read_cxr(path)
        return conv.radiographToVolumeNode(radiograph, self.scene, name or Path(path).stem)

    # ------------------------------------------------------------------ DRRs
    def makeGeometry(self, angles, detectorSize=DEFAULT_DETECTOR, pixelSpacing=DEFAULT_PIXEL_SPACING,
                     sdd: float = DEFAULT_SDD, sod: float = DEFAULT_SOD, tilt: float = 0.0,
                     isocenterRAS=None) -> ProjectionGeometry:
        """A :class:`ProjectionGeometry` from the module's parameters (isocentre in RAS, or
        None for the CT's centre), angles ascending as a sequence node orders them. Raises
        :class:`InputError` for impossible values."""
        iso = None if isocenterRAS is None else tuple(conv.pointRasToLps(isocenterRAS))
        return ProjectionGeometry(angles=tuple(sorted(_parseAngles(angles))),
                                  detector_shape=_pair(detectorSize, "detectorSize", int),
                                  pixel_spacing=_pair(pixelSpacing, "pixelSpacing"),
                                  sdd=float(sdd), sod=float(sod), tilt=float(tilt), isocenter=iso)

    def renderDRRs(self, ctNode, geometry: ProjectionGeometry, method: str = "fast", device=None,
                   progressCallback: Optional[ProgressCallback] = None,
                   anglesPerChunk: int = 8) -> Tuple[np.ndarray, ProjectionGeometry]:
        """DRRs [A, H, W] (float32 line integrals) of a CT node and the resolved geometry.
        Adds nothing to the scene."""
        conv.requireCTNode(ctNode)
        volume = conv.volumeNodeToVolume(ctNode, copy=False)
        geometry = geometry.resolve(volume)
        from XrayWorldModel.drr import DRRRenderer   # torch: only now
        if progressCallback is not None and progressCallback(0.0, "preparing the CT") is False:
            raise CancelledError("cancelled")
        renderer = DRRRenderer(volume, method=method, device=device)
        A = geometry.n_angles
        out = np.empty((A,) + tuple(geometry.detector_shape), dtype=np.float32)
        for lo in range(0, A, anglesPerChunk):
            hi = min(A, lo + anglesPerChunk)
            out[lo:hi] = renderer.render(replace(geometry, angles=geometry.angles[lo:hi]))
            if progressCallback is not None and \
                    progressCallback(hi / A, f"rendered {hi} of {A} DRRs") is False:
                raise CancelledError(f"cancelled after {hi} of {A} DRRs")
        return out, geometry

    def generateDRRs(self, ctNode, angles, detectorSize=DEFAULT_DETECTOR,
                     pixelSpacing=DEFAULT_PIXEL_SPACING, sdd: float = DEFAULT_SDD,
                     sod: float = DEFAULT_SOD, method: str = "fast", device=None,
                     tilt: float = 0.0, isocenterRAS=None, name: Optional[str] = None,
                     progressCallback: Optional[ProgressCallback] = None):
        """Render DRRs of ``ctNode`` at ``angles`` (degrees: 0 PA, 90 left lateral, ...) and
        return a ``vtkMRMLSequenceNode`` holding one single-slice scalar volume per angle
        (index "angle", deg, ascending), each placed on its physical detector plane. A
        sequence browser node (and its proxy volume node) is added, all under the CT's
        subject-hierarchy study when the scene has a subject hierarchy.

        ``pixelSpacing``: mm at the detector, one value or (row, column); ``detectorSize``:
        (rows, columns). Bad input raises :class:`InputError` (a ``ValueError``) and leaves the
        scene unchanged.
        """
        conv.requireCTNode(ctNode)
        self._requireInScene(ctNode, "CT")
        geometry = self.makeGeometry(angles, detectorSize, pixelSpacing, sdd, sod, tilt, isocenterRAS)
        drrs, geometry = self.renderDRRs(ctNode, geometry, method, device, progressCallback)
        return self.addDRRSequence(drrs, geometry, sourceNode=ctNode, method=method,
                                   name=name or f"{ctNode.GetName()} DRR")

    def addDRRSequence(self, drrs: np.ndarray, geometry: ProjectionGeometry, sourceNode=None,
                       method: str = "", name: str = "DRR"):
        """Put rendered DRRs [A, H, W] into a new sequence + browser in the scene."""
        from slicer import (vtkMRMLScalarVolumeNode, vtkMRMLSequenceBrowserNode,
                            vtkMRMLSequenceNode)
        drrs = np.asarray(drrs, dtype=np.float32)
        if drrs.ndim != 3 or drrs.shape[0] != geometry.n_angles:
            raise InputError(f"DRRs must be [angles, rows, columns] matching the geometry; "
                             f"got {drrs.shape} for {geometry.n_angles} angles")
        geomJson = json.dumps(geometry.to_dict())
        seq = vtkMRMLSequenceNode()
        seq.SetName(self.scene.GenerateUniqueName(name))
        seq.SetIndexName("angle")
        seq.SetIndexUnit("deg")
        seq.SetIndexType(vtkMRMLSequenceNode.NumericIndex)
        seq.SetAttribute(ATTR_KIND, "DRRSequence")
        seq.SetAttribute(ATTR_GEOMETRY, geomJson)
        seq.SetAttribute(ATTR_METHOD, method)
        for a, angle in enumerate(geometry.angles):
            node = vtkMRMLScalarVolumeNode()
            node.SetName(f"{name} {angle:g} deg")
            rg = _drrRadiograph(drrs[a], geometry, angle)
            conv.radiographToVolumeNode(rg, None, node=node,
                                        detectorAffine=geometry.detector_affine(a))
            node.SetAttribute(ATTR_KIND, "DRR")
            node.SetAttribute(ATTR_ANGLE, f"{angle:g}")
            seq.SetDataNodeAtValue(node, f"{angle:g}")

        added = []
        try:
            self.scene.AddNode(seq)
            added.append(seq)
            if sourceNode is not None:
                seq.SetNodeReferenceID(REF_SOURCE_CT, sourceNode.GetID())
            browser = vtkMRMLSequenceBrowserNode()
            browser.SetName(self.scene.GenerateUniqueName(f"{name} browser"))
            self.scene.AddNode(browser)
            added.append(browser)
            browser.SetAndObserveMasterSequenceNodeID(seq.GetID())
            browser.SetIndexDisplayFormat("%.0f deg")
            logic = self.sequencesLogic()
            logic.UpdateProxyNodesFromSequences(browser)
            proxy = browser.GetProxyNode(seq)
            if proxy is not None:
                added.append(proxy)
                proxy.SetName(seq.GetName())
                self._setDisplayWindow(proxy, drrs)
            self._placeInHierarchy(sourceNode, [seq, browser, proxy])
        except Exception:
            for node in reversed(added):
                self._removeWithDisplay(node)
            raise
        return seq

    def _removeWithDisplay(self, node) -> None:
        """Remove ``node`` and the display and storage nodes it owns."""
        owned = []
        for count, nth in (("GetNumberOfDisplayNodes", "GetNthDisplayNode"),
                           ("GetNumberOfStorageNodes", "GetNthStorageNode")):
            if hasattr(node, count):
                owned += [getattr(node, nth)(i) for i in range(getattr(node, count)())]
        if node.GetScene() is self.scene:
            self.scene.RemoveNode(node)
        for d in owned:
            if d is not None and d.GetScene() is self.scene:
                self.scene.RemoveNode(d)

    @staticmethod
    def _setDisplayWindow(volumeNode, drrs: np.ndarray) -> None:
        """Bone bright, 0 to a high percentile of the whole stack (same as the CLI's PNGs)."""
        display = volumeNode.GetDisplayNode()
        if display is None:
            volumeNode.CreateDefaultDisplayNodes()
            display = volumeNode.GetDisplayNode()
        if display is None or not hasattr(display, "SetWindowLevel"):
            return
        hi = float(np.percentile(drrs, 99.5)) if drrs.size else 1.0
        hi = hi if hi > 0 else 1.0
        display.AutoWindowLevelOff()
        display.SetWindowLevel(hi, hi / 2)

    # ------------------------------------------------------------------ reading back
    @staticmethod
    def sequenceGeometry(sequenceNode) -> ProjectionGeometry:
        """The resolved geometry a DRR sequence was rendered with."""
        text = sequenceNode.GetAttribute(ATTR_GEOMETRY) if sequenceNode is not None else None
        if not text:
            name = sequenceNode.GetName() if sequenceNode is not None else None
            raise InputError(f"sequence {name!r} was not made by Xray2Xray (no geometry attribute)")
        return ProjectionGeometry.from_dict(json.loads(text))

    def sequenceToDRRs(self, sequenceNode) -> Tuple[np.ndarray, ProjectionGeometry]:
        """DRRs [A, H, W] in the geometry's angle order, and that geometry."""
        geometry = self.sequenceGeometry(sequenceNode)
        images = []
        for angle in geometry.angles:
            node = sequenceNode.GetDataNodeAtValue(f"{angle:g}")
            if node is None:
                raise InputError(f"sequence '{sequenceNode.GetName()}' has no item at {angle:g} deg")
            images.append(conv.volumeNodeToRadiograph(node).image)
        return np.stack(images), geometry

    def exportDRRs(self, sequenceNode, outPath, png: bool = False, dicom: bool = False) -> Path:
        """Write a DRR sequence as a stack (NIfTI + JSON sidecar, like ``xray2xray drr``)."""
        from XrayWorldModel.export import write_drr_stack
        drrs, geometry = self.sequenceToDRRs(sequenceNode)
        meta = {"method": sequenceNode.GetAttribute(ATTR_METHOD) or "", "name": sequenceNode.GetName(),
                "source": "3D Slicer, Xray2Xray module"}
        src = sequenceNode.GetNodeReference(REF_SOURCE_CT)
        if src is not None:
            meta["inputs"] = [src.GetName()]
        return write_drr_stack(drrs, geometry, outPath, meta, png=png, dicom=dicom)

    # ------------------------------------------------------------------ batch
    def generateDRRsForFolder(self, folder, angles, outputFolder=None, pattern: str = "*.nii*",
                              keepInScene: bool = True, **drrArgs) -> Dict[str, object]:
        """DRRs for every CT in ``folder`` matching ``pattern``: returns {file name: sequence
        node} (or the written stack path when ``keepInScene`` is False). With ``outputFolder``
        each stack is also written there (NIfTI + JSON)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError("is not a folder", folder)
        paths = sorted(p for p in folder.glob(pattern) if p.is_file())
        if not paths:
            raise InputError(f"holds no files matching {pattern!r}", folder)
        results = {}
        for path in paths:
            ct = self.loadCT(path)
            try:
                seq = self.generateDRRs(ct, angles, **drrArgs)
                result = seq
                if outputFolder is not None:
                    out = self.exportDRRs(seq, Path(outputFolder) / f"{ct.GetName()}.nii.gz")
                    result = seq if keepInScene else out
                if not keepInScene:
                    self.removeDRRSequence(seq)
            finally:
                if not keepInScene:
                    self._removeWithDisplay(ct)
            results[path.name] = result
        return results

    def removeDRRSequence(self, sequenceNode) -> None:
        """Remove a DRR sequence, its browser(s) and proxy nodes from the scene."""
        logic = self.sequencesLogic()
        browsers = []
        try:
            import vtk
            coll = vtk.vtkCollection()
            logic.GetBrowserNodesForSequenceNode(sequenceNode, coll)
            browsers = [coll.GetItemAsObject(i) for i in range(coll.GetNumberOfItems())]
        except Exception:   # pragma: no cover - older Slicer API
            pass
        for browser in browsers:
            proxy = browser.GetProxyNode(sequenceNode)
            self.scene.RemoveNode(browser)
            if proxy is not None:
                self._removeWithDisplay(proxy)
        self._removeWithDisplay(sequenceNode)

    # ------------------------------------------------------------------ inference
    def runInference(self, cxrNode, model=None, views: Sequence[float] = (90,),
                     volumeSize: int = 128) -> Dict[str, object]:
        """Run the world model on a radiograph node.

        Returns ``{"volume": reconstructed scalar volume node, "views": sequence node of
        predicted views, "table": table node with risk, five pathology probabilities,
        consistency score and model name}``.

        TODO(issue 4): inference lands with issue 4 (``XrayWorldModel.infer``); the lead
        fills this in. Validation of ``cxrNode`` (a single-slice node, see
        :func:`conversions.volumeNodeToRadiograph`) should happen before any scene change.
        """
        raise NotImplementedError("inference lands with issue 4")


def _drrRadiograph(image: np.ndarray, geometry: ProjectionGeometry, angle: float):
    from XrayWorldModel.radiograph import Radiograph
    return Radiograph(image=image, spacing=geometry.pixel_spacing,
                      view_position=_viewPosition(angle) or None,
                      metadata={"angle_deg": angle})

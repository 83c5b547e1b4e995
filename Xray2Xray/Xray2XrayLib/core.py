"""Xray2XrayCoreLogic: the work of the Slicer module on an MRML scene, without Qt.

Everything here runs in Slicer's Python console, in ``Xray2XrayLogic`` (which exposes it),
and on plain ``slicer-core`` (the tests). Heavy modules (torch, the renderers) are
imported inside the methods that need them, never at import time.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from XrayWorldModel.conventions import (DEFAULT_DETECTOR, DEFAULT_PIXEL_SPACING_MM,
                                        LATERAL_VIEW_POSITIONS, RESULTS_FORMAT,
                                        format_probability, strip_ct_suffix,
                                        uncertainty_passes as uncertaintyPasses, view_position)
from XrayWorldModel.errors import InputError, XrayWorldModelError
from XrayWorldModel.geometry import DEFAULT_SDD, DEFAULT_SOD, ProjectionGeometry
from XrayWorldModel.radiograph import Radiograph

from . import conversions as conv
from .parameters import angleList, volumeSize as checkVolumeSize

#: Attribute / reference names on the nodes the logic creates.
ATTR_GEOMETRY = conv.ATTR_PREFIX + "Geometry"            # JSON of ProjectionGeometry.to_dict()
ATTR_METHOD = conv.ATTR_PREFIX + "Method"
ATTR_ANGLE = conv.ATTR_PREFIX + "Angle"
ATTR_KIND = conv.ATTR_PREFIX + "Kind"                    # "DRRSequence", "DRR", ...
ATTR_RESULTS = conv.ATTR_PREFIX + "Results"              # JSON of results.json (table node)
REF_SOURCE_CT = "Xray2XraySourceCT"
REF_SOURCE_CXR = "Xray2XraySourceCXR"

#: Kinds of the inference outputs (``ATTR_KIND``).
KIND_PREDICTED_VIEWS = "PredictedViews"
KIND_PREDICTED_VIEW = "PredictedView"
KIND_VOLUME = "InferenceVolume"
KIND_RESULTS = "InferenceResults"
#: The uncertainty maps: per-voxel std of the volume, per-pixel std of the predicted views;
#: each std node references the output it belongs to (``REF_STD_OF``).
KIND_VOLUME_STD = "InferenceVolumeStd"
KIND_PREDICTED_VIEWS_STD = "PredictedViewsStd"
KIND_PREDICTED_VIEW_STD = "PredictedViewStd"
REF_STD_OF = "Xray2XrayStdOf"

DEFAULT_PIXEL_SPACING = DEFAULT_PIXEL_SPACING_MM

ProgressCallback = Callable[[float, str], Optional[bool]]


class CancelledError(XrayWorldModelError):
    """The user cancelled a running job (the progress callback returned False)."""


def _fmt(value) -> str:
    return "n/a" if value is None else f"{float(value):.4f}"


#: The table's value for a score the trust verdict withholds.
WITHHELD = "withheld"


def _verdictRow(results: dict) -> Tuple[str, str, str]:
    """("Trust verdict", "in distribution" / "OUT OF DISTRIBUTION", the reasons)."""
    trust = results.get("trust") or {}
    if not trust:
        return ("Trust verdict", "n/a", "results written before the trust verdict existed")
    value = "in distribution" if trust.get("in_distribution") else "OUT OF DISTRIBUTION"
    score = trust.get("ood_score")
    basis = (f"OOD score {score:.1f} (threshold {trust.get('ood_threshold'):.1f}); "
             if score is not None else "")
    return ("Trust verdict", value, basis + "; ".join(trust.get("reasons") or []))


def _scoreNote(what: str, scores: dict) -> str:
    if scores.get("forced"):
        return f"{what}; OUT OF DISTRIBUTION, shown only because forced"
    return what


def _scoreRows(scores: dict):
    """Risk and pathology rows: probabilities with honest precision ("> 0.99", never 1.000),
    "withheld" with the reason when the verdict withholds them, "n/a" without heads."""
    from XrayWorldModel.probe import PATHOLOGIES   # a constant; no torch
    withheld = scores.get("withheld")
    rows = []
    risk = scores.get("risk")
    if withheld:
        rows.append(("Cardiovascular risk", WITHHELD, withheld))
    else:
        rows.append(("Cardiovascular risk", format_probability(risk),
                     _scoreNote("event probability (risk head)", scores) if risk is not None
                     else "the model has no risk head"))
    for key, value in (scores.get("risk_details") or {}).items():
        shown = format_probability(value) if key.endswith("probability_at_horizon") else \
            f"{float(value):.3g}"
        rows.append((f"Risk: {key.replace('_', ' ')}", shown, _scoreNote("Cox head", scores)))
    pathologies = scores.get("pathologies")
    for key in (pathologies or PATHOLOGIES):
        label = f"Pathology: {key.replace('_', ' ')}"
        if withheld:
            rows.append((label, WITHHELD, withheld))
        elif pathologies:
            rows.append((label, format_probability(pathologies[key]),
                         _scoreNote("probability (calibrated)" if scores.get("calibrated")
                                    else "probability", scores)))
        else:
            rows.append((label, "n/a", "the model has no pathology heads"))
    if scores.get("disclaimer") and (risk is not None or pathologies or withheld):
        rows.append(("Scores", "demonstration" if "demonstration" in scores["disclaimer"]
                     else "research only", scores["disclaimer"]))
    return rows


def inferenceTableRows(results: dict):
    """Rows (output, value, note) of the results table, from a ``results.json`` dict: the
    trust verdict with its reasons, the risk (and its Cox details) and each pathology
    probability ("withheld" with the reason when the verdict is out of distribution, "n/a"
    for a model without heads, "> 0.99" / "< 0.01" at the ends), what the scores are, the
    consistency score and the model's name, version and SHA256."""
    scores = results.get("scores") or {}
    rows = [_verdictRow(results)] + _scoreRows(scores)
    consistency = results.get("consistency") or {}
    rows.append(("Consistency (NCC)", _fmt(consistency.get("ncc")), consistency.get("reading") or ""))
    model = results.get("model") or {}
    rows.append(("Model name", str(model.get("name") or "unnamed"), model.get("intended_use") or ""))
    rows.append(("Model version", str(model.get("version") or "n/a"), ""))
    rows.append(("Model SHA256", str(model.get("sha256") or "n/a"), model.get("path") or ""))
    return rows


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

    def browserForSequence(self, sequenceNode):
        """The first sequence browser node that plays ``sequenceNode`` (None if none does)."""
        return self.sequencesLogic().GetFirstBrowserNodeForSequenceNode(sequenceNode)

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
        return conv.volumeToVolumeNode(volume, self.scene, name or strip_ct_suffix(Path(path).name))

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
        return ProjectionGeometry(angles=tuple(sorted(angleList(angles))),
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
                       method: str = "", name: str = "DRR", kind: str = "DRRSequence",
                       itemKind: str = "DRR", sourceReference: str = REF_SOURCE_CT):
        """Put rendered DRRs [A, H, W] into a new sequence + browser in the scene (also used
        for predicted views: ``kind``/``itemKind`` tag the nodes, ``sourceReference`` names
        the reference to ``sourceNode``)."""
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
        seq.SetAttribute(ATTR_KIND, kind)
        seq.SetAttribute(ATTR_GEOMETRY, geomJson)
        seq.SetAttribute(ATTR_METHOD, method)
        for a, angle in enumerate(geometry.angles):
            node = vtkMRMLScalarVolumeNode()
            node.SetName(f"{name} {angle:g} deg")
            rg = _drrRadiograph(drrs[a], geometry, angle)
            conv.radiographToVolumeNode(rg, None, node=node,
                                        detectorAffine=geometry.detector_affine(a))
            node.SetAttribute(ATTR_KIND, itemKind)
            node.SetAttribute(ATTR_ANGLE, f"{angle:g}")
            seq.SetDataNodeAtValue(node, f"{angle:g}")

        added = []
        try:
            self.scene.AddNode(seq)
            added.append(seq)
            if sourceNode is not None and sourceNode.GetScene() is self.scene:
                seq.SetNodeReferenceID(sourceReference, sourceNode.GetID())
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
        sh = self._subjectHierarchy()
        item = sh.GetItemByDataNode(node) if sh is not None else 0
        if item:
            sh.RemoveItem(item, False, False)   # the node itself is removed below
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

    def exportDRRs(self, sequenceNode, path, png: bool = False, dicom: bool = False) -> Path:
        """Write a DRR sequence as a stack (NIfTI + JSON sidecar, like ``xray2xray drr``)."""
        from XrayWorldModel.io.drr_stack import write_drr_stack
        drrs, geometry = self.sequenceToDRRs(sequenceNode)
        meta = {"method": sequenceNode.GetAttribute(ATTR_METHOD) or "", "name": sequenceNode.GetName(),
                "source": "3D Slicer, Xray2Xray module"}
        src = sequenceNode.GetNodeReference(REF_SOURCE_CT)
        if src is not None:
            meta["inputs"] = [src.GetName()]
        return write_drr_stack(drrs, geometry, path, meta, png=png, dicom=dicom)

    # ------------------------------------------------------------------ batch
    def generateDRRsForFolder(self, folder, angles, outputFolder=None, pattern: str = "*.nii*",
                              keepInScene: bool = True, **drrArgs) -> Dict[str, object]:
        """DRRs for every CT in ``folder`` matching ``pattern``: returns {file name: sequence
        node} (or the written stack path when ``keepInScene`` is False). With ``outputFolder``
        each stack is also written there (NIfTI + JSON)."""
        results = {}
        for path in _filesMatching(folder, pattern):
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
            self._removeWithDisplay(browser)
            if proxy is not None:
                self._removeWithDisplay(proxy)
        self._removeWithDisplay(sequenceNode)

    # ------------------------------------------------------------------ inference
    @staticmethod
    def radiographForInference(cxrNode):
        """The radiograph node as a :class:`Radiograph`, or a clear :class:`InputError`: no
        node, not a volume, a 3D volume (:class:`NotARadiographError`), NaNs, a lateral view."""
        if cxrNode is None:
            raise InputError("no radiograph node given (got None); select a frontal chest X-ray")
        radiograph = conv.volumeNodeToRadiograph(cxrNode)
        vp = (radiograph.view_position or "").strip().upper()
        # checked here, before anything runs: a radiograph handed to a background job as an
        # image file loses its view position
        if vp in LATERAL_VIEW_POSITIONS:
            raise InputError(f"radiograph '{cxrNode.GetName()}' is a lateral view ({vp}); the model "
                             "takes a frontal (PA or AP) chest radiograph")
        return radiograph

    @staticmethod
    def resolveDevice(device) -> str:
        """"auto"/None -> "cuda" when torch sees a GPU, else "cpu" (imports torch)."""
        from XrayWorldModel.drr import resolve_device
        return str(resolve_device(None if device in (None, "", "auto") else device))

    def runInference(self, cxrNode, model=None, views: Sequence[float] = (90,),
                     volumeSize: int = 128, device: str = "cpu",
                     progressCallback: Optional[ProgressCallback] = None,
                     name: Optional[str] = None, uncertainty: Optional[int] = None,
                     forceScores: bool = False,
                     magnification: Optional[float] = None) -> Dict[str, object]:
        """Run the world model on a frontal radiograph node, in this process.

        ``model``: a registry name, a model file, a training checkpoint, None for the default
        model, or a loaded ``(WorldModel, card)``. ``views``: angles (degrees; 90 = left
        lateral) of the views to predict, may be empty. ``device``: "cpu", "cuda", "auto".
        ``uncertainty``: test-time augmentation passes of the std maps (0: none; None: the
        package's default, as ``xray2xray infer``). ``forceScores``: put the scores in the
        table even when the trust verdict says the input is out of distribution (they are
        then marked so); by default they are "withheld" with the reason. ``magnification``:
        how much the detector magnifies the chest, over what the node's metadata says (a DRR
        made here and a DICOM read by this module carry theirs; otherwise 1.08, a PA chest at
        1800 mm), as ``xray2xray infer --magnification``.

        Returns ``{"volume": scalar volume node of the reconstructed volume (HU, true
        geometry), "views": sequence node of the predicted views, each on its detector plane
        (None when ``views`` is empty), "table": table node (risk, pathology probabilities,
        consistency, model), "volumeStd": the volume's per-voxel standard deviation (HU, the
        volume's grid), "viewsStd": sequence of the views' per-pixel standard deviation (the
        views' detector planes) (both None without uncertainty), "results": the results.json
        dict, "result": the InferenceResult}``. The nodes go under the radiograph's
        subject-hierarchy study.

        Bad input raises :class:`InputError` (a ``ValueError``) before anything runs; any
        failure (or a cancel through ``progressCallback`` returning False, which raises
        :class:`CancelledError`) leaves the scene unchanged.
        """
        radiograph = self.radiographForInference(cxrNode)
        viewAngles = angleList(views, "views", allowEmpty=True)
        volumeSize = checkVolumeSize(volumeSize)
        passes = {} if uncertainty is None else {"uncertainty": uncertaintyPasses(uncertainty)}
        if progressCallback is not None and progressCallback(0.0, "loading the model") is False:
            raise CancelledError("cancelled")
        from XrayWorldModel.infer import run_inference          # torch: only now
        from XrayWorldModel.infer.domain import stated_geometry
        from XrayWorldModel.infer.outputs import results_dict
        radiograph = stated_geometry(radiograph, None, magnification)
        result = run_inference(radiograph, model, viewAngles, volumeSize, self.resolveDevice(device),
                               force_scores=bool(forceScores), **passes)
        if progressCallback is not None and \
                progressCallback(0.9, "adding the outputs to the scene") is False:
            raise CancelledError("cancelled after the model ran; nothing was added")
        inputInfo = {"node": cxrNode.GetName(), "view_position": radiograph.view_position,
                     "shape": [int(n) for n in radiograph.image.shape],
                     "spacing_mm": [float(s) for s in radiograph.spacing],
                     "spacing_is_default": bool(radiograph.spacing_is_default)}
        results = json.loads(json.dumps(results_dict(result, inputInfo), default=_jsonDefault))
        std = result.uncertainty
        outputs = self._addInferenceNodes(result.volume, result.views if viewAngles else None,
                                          result.view_geometry, results, cxrNode,
                                          name or cxrNode.GetName(),
                                          volumeStd=std.volume_std if std is not None else None,
                                          viewsStd=std.views_std if std is not None else None)
        outputs["result"] = result
        if progressCallback is not None:
            progressCallback(1.0, "done")
        return outputs

    def loadInferenceOutputs(self, outDir, sourceNode=None, name: Optional[str] = None) -> Dict[str, object]:
        """Load what ``xray2xray infer CXR --out DIR`` wrote (``volume.nii.gz``,
        ``views.nii.gz`` + sidecar, ``results.json``, and the std maps it names) as the same
        nodes :meth:`runInference` makes; returns ``{"volume", "views", "table", "volumeStd",
        "viewsStd", "results"}``. Everything is read before the scene changes, so a missing or
        broken file leaves the scene unchanged."""
        from XrayWorldModel.io.drr_stack import read_drr_stack
        from XrayWorldModel.io import read_ct
        out = Path(outDir).expanduser()
        if not out.is_dir():
            raise InputError("is not a folder (expected the output folder of xray2xray infer)", out)
        resultsPath = out / "results.json"
        if not resultsPath.is_file():
            raise InputError("holds no results.json: the inference did not finish (or this is "
                             "not an xray2xray infer output folder)", out)
        try:
            results = json.loads(resultsPath.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot be read: {exc}", resultsPath) from None
        if not isinstance(results, dict) or results.get("format") != RESULTS_FORMAT:
            raise InputError(f"is not an xray2xray results file (format {RESULTS_FORMAT!r})", resultsPath)
        volume = read_ct(out / ((results.get("volume") or {}).get("file") or "volume.nii.gz"))
        views = geometry = None
        viewsFile = (results.get("views") or {}).get("file")
        if viewsFile:
            views, geometry, _ = read_drr_stack(out / viewsFile)
        volumeStd, viewsStd = self._readStdFiles(out, results, volume, views)
        if name is None:
            name = sourceNode.GetName() if sourceNode is not None else \
                Path(str((results.get("input") or {}).get("path") or out.name)).name.split(".")[0]
        outputs = self._addInferenceNodes(volume, views, geometry, results, sourceNode, name,
                                          volumeStd=volumeStd, viewsStd=viewsStd)
        return outputs

    @staticmethod
    def _readStdFiles(out: Path, results: dict, volume, views):
        """(volume std, views std) that ``results.json`` names (``std_file``), or None; a std
        map whose grid differs from its output's is refused."""
        from XrayWorldModel.io.drr_stack import read_drr_stack
        from XrayWorldModel.io import read_ct
        volumeStd = viewsStd = None
        name = (results.get("volume") or {}).get("std_file")
        if name:
            volumeStd = read_ct(out / name)
            if volumeStd.shape != volume.shape or not np.allclose(volumeStd.affine, volume.affine,
                                                                  atol=1e-4):
                raise InputError("does not lie on the grid of the volume it belongs to", out / name)
        name = (results.get("views") or {}).get("std_file")
        if name and views is not None:
            viewsStd = read_drr_stack(out / name)[0]
            if viewsStd.shape != views.shape:
                raise InputError(f"holds {viewsStd.shape} pixels for views of {views.shape}", out / name)
        return volumeStd, viewsStd

    def _addInferenceNodes(self, volume, views, geometry, results: dict, sourceNode, name: str,
                           volumeStd=None, viewsStd=None):
        """The three output nodes and the std maps given, all added or (on any error) none."""
        added = []
        try:
            volumeNode = conv.volumeToVolumeNode(volume, self.scene, f"{name} reconstructed volume")
            added.append(volumeNode)
            volumeNode.SetAttribute(ATTR_KIND, KIND_VOLUME)
            seq = None
            if views is not None and len(views):
                seq = self.addDRRSequence(views, geometry, sourceNode=sourceNode, method="world model",
                                          name=f"{name} predicted views", kind=KIND_PREDICTED_VIEWS,
                                          itemKind=KIND_PREDICTED_VIEW, sourceReference=REF_SOURCE_CXR)
                added.append(seq)
            table = self._addResultsTable(results, f"{name} results")
            added.append(table)
            volumeStdNode, seqStd = self._addStdNodes(volumeNode, volumeStd, seq, viewsStd, geometry,
                                                      sourceNode, name, added)
            if sourceNode is not None and sourceNode.GetScene() is self.scene:
                for node in (volumeNode, table, volumeStdNode):
                    if node is not None:
                        node.SetNodeReferenceID(REF_SOURCE_CXR, sourceNode.GetID())
            self._placeInHierarchy(sourceNode, [n for n in (volumeNode, volumeStdNode, table) if n])
        except Exception:
            for node in reversed(added):
                if node.IsA("vtkMRMLSequenceNode"):
                    self.removeDRRSequence(node)
                else:
                    self._removeWithDisplay(node)
            raise
        return {"volume": volumeNode, "views": seq, "table": table, "results": results,
                "volumeStd": volumeStdNode, "viewsStd": seqStd}

    def _addStdNodes(self, volumeNode, volumeStd, viewsNode, viewsStd, geometry, sourceNode,
                     name: str, added: list):
        """The uncertainty maps as nodes beside their outputs, on the same geometry: the
        volume's std as a scalar volume (HU) on the volume's grid, the views' std as a sequence
        on the views' detector planes; each references its output (``REF_STD_OF``)."""
        volumeStdNode = seqStd = None
        if volumeStd is not None:
            volumeStdNode = conv.volumeToVolumeNode(volumeStd, self.scene,
                                                    f"{name} reconstructed volume std (HU)")
            added.append(volumeStdNode)
            volumeStdNode.SetAttribute(ATTR_KIND, KIND_VOLUME_STD)
            volumeStdNode.SetNodeReferenceID(REF_STD_OF, volumeNode.GetID())
        if viewsStd is not None and viewsNode is not None and len(viewsStd):
            seqStd = self.addDRRSequence(viewsStd, geometry, sourceNode=sourceNode,
                                         method="world model, test-time augmentation and two-route std",
                                         name=f"{name} predicted views std",
                                         kind=KIND_PREDICTED_VIEWS_STD, itemKind=KIND_PREDICTED_VIEW_STD,
                                         sourceReference=REF_SOURCE_CXR)
            added.append(seqStd)
            seqStd.SetNodeReferenceID(REF_STD_OF, viewsNode.GetID())
        return volumeStdNode, seqStd

    def _addResultsTable(self, results: dict, name: str):
        import vtk
        from slicer import vtkMRMLTableNode
        rows = inferenceTableRows(results)
        vtable = vtk.vtkTable()
        for c, title in enumerate(("Output", "Value", "Notes")):
            column = vtk.vtkStringArray()
            column.SetName(title)
            column.SetNumberOfValues(len(rows))
            for r, row in enumerate(rows):
                column.SetValue(r, str(row[c]))
            vtable.AddColumn(column)
        table = vtkMRMLTableNode()
        table.SetName(self.scene.GenerateUniqueName(name))
        table.SetAndObserveTable(vtable)
        if hasattr(table, "SetUseColumnTitleAsColumnHeader"):    # Slicer >= 5.0
            table.SetUseColumnTitleAsColumnHeader(True)
        else:  # pragma: no cover - older Slicer
            table.SetUseColumnNameAsColumnHeader(True)
        table.SetAttribute(ATTR_KIND, KIND_RESULTS)
        table.SetAttribute(ATTR_RESULTS, json.dumps(results))
        self.scene.AddNode(table)
        return table

    @staticmethod
    def tableResults(tableNode) -> dict:
        """The full results (as in results.json) stored on an inference table node."""
        text = tableNode.GetAttribute(ATTR_RESULTS) if tableNode is not None else None
        if not text:
            raise InputError("the table was not made by Xray2Xray inference (no results attribute)")
        return json.loads(text)

    def removeInferenceOutputs(self, outputs: Dict[str, object]) -> None:
        """Remove the nodes :meth:`runInference` / :meth:`loadInferenceOutputs` added."""
        for key in ("views", "viewsStd"):
            if outputs.get(key) is not None:
                self.removeDRRSequence(outputs[key])
        for key in ("volume", "volumeStd", "table"):
            if outputs.get(key) is not None:
                self._removeWithDisplay(outputs[key])

    def writeRadiographFile(self, cxrNode, path) -> Path:
        """Write a radiograph node as a 2D image file ``xray2xray infer`` reads (NRRD or MHA,
        by the suffix; pixel spacing kept, and whether it was assumed, so the job estimates the
        scale from anatomy as ``infer`` on the original file would) for a background job.
        Validates the node like :meth:`runInference`. The file holds no view position
        (checked here instead)."""
        from XrayWorldModel.io import write_radiograph
        return write_radiograph(self.radiographForInference(cxrNode), path)

    def runInferenceForFolder(self, folder, model=None, views: Sequence[float] = (90,),
                              volumeSize: int = 128, device: str = "cpu", pattern: str = "*",
                              keepInScene: bool = True, forceScores: bool = False) -> Dict[str, dict]:
        """:meth:`runInference` for every radiograph file in ``folder`` (DICOM, PNG, JPEG, 2D
        NRRD/NIfTI) matching ``pattern``: returns {file name: outputs of runInference}. With
        ``keepInScene=False`` the radiograph and output nodes are removed again and each
        outputs dict keeps only "results" (the results.json dict) and "result".
        ``forceScores``: as :meth:`runInference`."""
        found = {}
        for path in _filesMatching(folder, pattern):
            cxr = self.loadRadiograph(path)
            try:
                outputs = self.runInference(cxr, model=model, views=views, volumeSize=volumeSize,
                                            device=device, forceScores=forceScores)
                if not keepInScene:
                    self.removeInferenceOutputs(outputs)
                    outputs = {"results": outputs["results"], "result": outputs["result"]}
            finally:
                if not keepInScene:
                    self._removeWithDisplay(cxr)
            found[path.name] = outputs
        return found


def _filesMatching(folder, pattern: str):
    """The files (not hidden ones) in ``folder`` matching ``pattern``, sorted; a clear
    :class:`InputError` when the folder is missing or holds none."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError("is not a folder", folder)
    paths = sorted(p for p in folder.glob(pattern) if p.is_file() and not p.name.startswith("."))
    if not paths:
        raise InputError(f"holds no files matching {pattern!r}", folder)
    return paths


def _jsonDefault(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _drrRadiograph(image: np.ndarray, geometry: ProjectionGeometry, angle: float):
    return Radiograph(image=image, spacing=geometry.pixel_spacing,
                      view_position=view_position(angle) or None,
                      metadata={"angle_deg": angle, "magnification": geometry.magnification})

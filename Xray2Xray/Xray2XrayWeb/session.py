"""The web front end's work on one MRML scene, without trame.

Everything that touches data goes through the Slicer module's Qt-free layer
(``Xray2XrayLib``): loading (``loadCT``/``loadRadiograph``), DRRs (``makeGeometry``,
``renderDRRs``, ``addDRRSequence`` -- the three steps of ``generateDRRs``, split so that the
rendering runs in a worker thread while the page stays live), inference (the background job
of ``jobs.inferJob`` on the radiograph written by ``writeRadiographFile``, loaded back with
``loadInferenceOutputs``), saving (``exportDRRs``) and the synthetic chest
(``samples.addSyntheticChest``).

What is added here is what a page served to a browser needs:

* **Security.** The browser names no server path. It uploads a file (at most
  ``maxUploadBytes``; the name is reduced to a plain file name) or picks one of the files
  listed under ``dataDir`` (a choice not in that list, or a link leading out of the folder, is
  refused). Paths given on the command line are the operator's and are trusted.
* **Messages.** Every failure becomes one line naming the file as the user knows it (the
  upload's name, the path under the data folder), never a traceback
  (:class:`WebInputError`; :func:`userMessage`).
* **Downloads.** The DRR stack and the inference outputs as zip files.
"""
from __future__ import annotations

import io
import logging
import os
import re
import shutil
import tempfile
import threading
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from XrayWorldModel.conventions import CT_VOLUME_SUFFIXES
from XrayWorldModel.errors import InputError, NotAVolumeError, UnreadableFileError, XrayWorldModelError

from Xray2XrayLib import Xray2XrayCoreLogic, jobs, samples
from Xray2XrayLib.parameters import angleList, volumeSize as checkVolumeSize

log = logging.getLogger("Xray2XrayWeb")

#: DRR methods (the package's ``XrayWorldModel.drr.METHODS``, which imports torch; the tests
#: check they agree).
DRR_METHODS = ("fast", "exact")
DEVICES = ("auto", "cpu", "cuda")
#: How far ``dataDir`` is searched, and how many files are listed at most.
DATA_DIR_DEPTH = 4
DATA_DIR_MAX_FILES = 2000
KIND_CT, KIND_RADIOGRAPH = "ct", "radiograph"
#: Files read as radiographs only.
RADIOGRAPH_SUFFIXES = (".png", ".jpg", ".jpeg")


class WebInputError(InputError):
    """Bad input from the page: the message is ready to show as it is."""


@dataclass
class LoadedInput:
    """A CT or radiograph node the page offers, with the name the user knows it by."""
    kind: str
    node: object
    label: str
    notes: Tuple[str, ...] = ()      # the readers' warnings (e.g. a pixel spacing assumed)

    @property
    def id(self) -> str:
        return self.node.GetID()


def _firstLine(text: str, limit: int = 300) -> str:
    line = next((l.strip() for l in str(text).splitlines() if l.strip()), "")
    return line[:limit]


def userMessage(exc: BaseException, label: str, path: Optional[Path] = None) -> str:
    """One line for the page: ``label: what is wrong``. The package's errors carry their
    reason; anything else is named by its type and first line, with server paths replaced by
    ``label``. Never a traceback."""
    if isinstance(exc, WebInputError):
        return str(exc)
    if isinstance(exc, InputError):
        reason = exc.reason if exc.path is not None else str(exc)
    elif isinstance(exc, XrayWorldModelError):
        reason = str(exc)
    else:
        reason = f"could not be read ({type(exc).__name__}: {_firstLine(exc)})"
    reason = _firstLine(reason, 500)
    if path is not None:
        reason = reason.replace(str(path), label)
    return f"{label}: {reason}" if not reason.startswith(label) else reason


def safeFileName(name: str, default: str = "upload") -> str:
    """A browser-given file name as a plain name (no folders, no leading dots, only letters,
    digits, ``._-`` and spaces), keeping its suffixes (the readers use them)."""
    base = re.split(r"[\\/]", str(name or ""))[-1]
    base = re.sub(r"[^A-Za-z0-9._ -]", "_", base).strip().lstrip(".")
    return (base or default)[-120:]


def _sizeText(n: float) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.0f} kB"


def _number(value, what: str, kind=float):
    try:
        number = kind(float(value)) if kind is int else float(value)
    except (TypeError, ValueError):
        raise WebInputError(f"{what} must be a number, got {value!r}") from None
    if kind is int and float(value) != number:
        raise WebInputError(f"{what} must be a whole number, got {value!r}")
    return number


def _optionalNumber(value, what: str) -> Optional[float]:
    """An optional field: empty (or None) means "the image's own", else a number."""
    return None if value is None or str(value).strip() == "" else _number(value, what)


class WebSession:
    """One scene's inputs, jobs and outputs (one process serves one scene to every tab).

    ``scene``: the MRML scene (trame-slicer's); ``sequencesLogic``: the sequences logic
    registered with that application (a private one is made otherwise).
    """

    def __init__(self, scene, sequencesLogic=None, dataDir=None, maxUploadBytes: int = 256 * 2**20,
                 device: str = "auto", defaultModel: Optional[str] = None, workDir=None):
        self.core = Xray2XrayCoreLogic(scene, sequencesLogic)
        self.scene = scene
        self.dataDir = Path(dataDir).expanduser().resolve() if dataDir else None
        self.maxUploadBytes = int(maxUploadBytes)
        if device not in DEVICES:
            raise WebInputError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
        self.device = device
        self.defaultModel = defaultModel
        self._ownWorkDir = workDir is None
        self.workDir = Path(workDir) if workDir else Path(tempfile.mkdtemp(prefix="xray2xray-web-"))
        self.inputs: Dict[str, LoadedInput] = {}
        self.models: List[str] = []
        self._counter = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ housekeeping
    def close(self) -> None:
        """Remove the session's temporary files (uploads, job folders)."""
        if self._ownWorkDir:
            shutil.rmtree(self.workDir, ignore_errors=True)

    def _newFolder(self, kind: str) -> Path:
        with self._lock:
            self._counter += 1
            folder = self.workDir / kind / f"{self._counter:04d}"
        folder.mkdir(parents=True, exist_ok=False)
        return folder

    # ------------------------------------------------------------------ inputs
    def _add(self, kind: str, node, label: str, notes=()) -> LoadedInput:
        item = LoadedInput(kind, node, label, tuple(notes))
        self.inputs[item.id] = item
        return item

    def loadPath(self, path, label: Optional[str] = None) -> LoadedInput:
        """Load a CT or a radiograph with the Lib's readers, whichever the file is: a CT
        suffix is read as a CT (a 2D image in it as a radiograph), PNG/JPEG as a radiograph,
        anything else (DICOM, no suffix) as a CT and then as a radiograph. Errors:
        :class:`WebInputError`, one line naming ``label`` (never a server path)."""
        path = Path(path)
        label = label or path.name
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            item = self._loadPath(path, label)
        notes = [userMessage(InputError(str(w.message)), label, path) for w in caught
                 if issubclass(w.category, UserWarning)]
        item.notes = tuple(dict.fromkeys(notes))
        return item

    def _loadPath(self, path: Path, label: str) -> LoadedInput:
        name = safeFileName(label).split(".")[0] or "input"
        lower = path.name.lower()
        try:
            if lower.endswith(RADIOGRAPH_SUFFIXES):
                return self._add(KIND_RADIOGRAPH, self.core.loadRadiograph(path, name=name), label)
            try:
                return self._add(KIND_CT, self.core.loadCT(path, name=name), label)
            except NotAVolumeError:
                pass
            except UnreadableFileError:
                if lower.endswith(CT_VOLUME_SUFFIXES):
                    raise
                try:
                    return self._add(KIND_RADIOGRAPH, self.core.loadRadiograph(path, name=name), label)
                except UnreadableFileError:
                    raise WebInputError(f"{label}: neither a CT nor a radiograph this page reads "
                                        "(CT: NIfTI, NRRD, MetaImage, DICOM; radiograph: DICOM CR/DX, "
                                        "PNG, JPEG)") from None
            return self._add(KIND_RADIOGRAPH, self.core.loadRadiograph(path, name=name), label)
        except Exception as exc:       # noqa: BLE001 - every failure becomes a message
            if not isinstance(exc, XrayWorldModelError):
                log.exception("loading %s", path)
            raise WebInputError(userMessage(exc, label, path)) from None

    def loadSample(self) -> LoadedInput:
        """The synthetic chest (``Xray2XrayLib.samples``)."""
        return self._add(KIND_CT, samples.addSyntheticChest(self.scene), samples.SYNTHETIC_CHEST)

    def checkUploadSize(self, name: str, size) -> None:
        size = _number(size, "file size")
        if size > self.maxUploadBytes:
            raise WebInputError(
                f"{safeFileName(name)}: {_sizeText(size)} is more than the upload limit of "
                f"{_sizeText(self.maxUploadBytes)} (the server's --max-upload-mb); nothing was "
                "loaded")

    def saveUpload(self, name: str, content) -> Path:
        """Write an uploaded file (bytes, or the list of chunks trame sends) into the
        session's folder under a plain name; checks the size first."""
        if isinstance(content, (list, tuple)):
            content = b"".join(content)
        if not isinstance(content, (bytes, bytearray)):
            raise WebInputError(f"{safeFileName(name)}: the upload holds no file content")
        self.checkUploadSize(name, len(content))
        target = self._newFolder("uploads") / safeFileName(name)
        target.write_bytes(content)
        return target

    def loadUpload(self, name: str, content) -> LoadedInput:
        path = self.saveUpload(name, content)
        try:
            return self.loadPath(path, label=safeFileName(name))
        except WebInputError:
            shutil.rmtree(path.parent, ignore_errors=True)
            raise

    def dataDirFiles(self) -> List[str]:
        """Files under ``dataDir`` (relative paths, sorted; hidden files and links leading out
        of the folder left out), at most ``DATA_DIR_MAX_FILES`` of them."""
        if self.dataDir is None:
            return []
        found = []
        for folder, dirs, files in os.walk(self.dataDir):
            depth = len(Path(folder).relative_to(self.dataDir).parts)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and depth < DATA_DIR_DEPTH)
            for f in sorted(files):
                if f.startswith("."):
                    continue
                p = Path(folder) / f
                if self._insideDataDir(p) and p.is_file():
                    found.append(p.relative_to(self.dataDir).as_posix())
                if len(found) >= DATA_DIR_MAX_FILES:
                    return found
        return found

    def _insideDataDir(self, path: Path) -> bool:
        try:
            path.resolve().relative_to(self.dataDir)
            return True
        except (ValueError, OSError):
            return False

    def dataDirPath(self, choice: str) -> Path:
        """The file the page chose from :meth:`dataDirFiles`; anything else is refused."""
        if self.dataDir is None:
            raise WebInputError("this server offers no data folder (start it with --data-dir)")
        if not isinstance(choice, str) or choice not in set(self.dataDirFiles()):
            raise WebInputError(f"{str(choice)[:200]!r} is not one of the files of the data folder")
        path = self.dataDir / choice
        if not self._insideDataDir(path):
            raise WebInputError(f"{choice}: leads out of the data folder")
        return path

    def loadDataDirFile(self, choice: str) -> LoadedInput:
        return self.loadPath(self.dataDirPath(choice), label=choice)

    def inputsOfKind(self, kind: str) -> List[LoadedInput]:
        """Loaded inputs still in the scene (a DRR view counts as a radiograph)."""
        return [i for i in self.inputs.values() if i.kind == kind and i.node.GetScene() is self.scene]

    def node(self, nodeId, kind: str):
        item = self.inputs.get(nodeId or "")
        if item is None or item.kind != kind or item.node.GetScene() is not self.scene:
            what = "CT" if kind == KIND_CT else "radiograph"
            raise WebInputError(f"choose a {what} first (load one under Inputs)")
        return item.node

    # ------------------------------------------------------------------ DRRs
    def drrRequest(self, ctId, angles, rows, columns, pixelSpacing, sdd, sod, method) -> dict:
        """Check the DRR panel's values (in this thread, before anything runs) and return
        what :meth:`renderDRRs` and :meth:`addDRRs` take."""
        ct = self.node(ctId, KIND_CT)
        if method not in DRR_METHODS:
            raise WebInputError(f"method must be one of {', '.join(DRR_METHODS)}, got {method!r}")
        try:
            geometry = self.core.makeGeometry(
                angles, detectorSize=(_number(rows, "detector rows", int), _number(columns, "detector columns", int)),
                pixelSpacing=_number(pixelSpacing, "pixel spacing"), sdd=_number(sdd, "SDD"),
                sod=_number(sod, "SOD"))
        except XrayWorldModelError as exc:
            raise WebInputError(userMessage(exc, "DRR settings")) from None
        return {"ct": ct, "geometry": geometry, "method": method}

    def renderDRRs(self, request: dict, progress: Callable[[float, str], Optional[bool]]):
        """The rendering (a worker thread may run it; the scene is only read). ``progress``
        returning False cancels (``Xray2XrayLib.CancelledError``)."""
        device = None if self.device == "auto" else self.device
        return self.core.renderDRRs(request["ct"], request["geometry"], request["method"], device, progress)

    def addDRRs(self, request: dict, rendered) -> object:
        """Add rendered DRRs to the scene as a sequence (run on the thread that owns the scene)."""
        drrs, geometry = rendered
        ct = request["ct"]
        seq = self.core.addDRRSequence(drrs, geometry, sourceNode=ct, method=request["method"],
                                       name=f"{ct.GetName()} DRR")
        proxy = self.core.browserForSequence(seq).GetProxyNode(seq)
        self._add(KIND_RADIOGRAPH, proxy, f"{seq.GetName()} (the view shown)")
        return seq

    # ------------------------------------------------------------------ inference
    def modelChoices(self) -> List[str]:
        """What the model selector offers ("" is the default model)."""
        choices = [""] + ([self.defaultModel] if self.defaultModel else [])
        return choices + [m for m in self.models if m not in choices]

    def loadModelNames(self, timeout: float = 120) -> List[str]:
        """Names of the registry's models (``xray2xray models list``, as the Slicer module's
        Models section lists them); an empty list when that fails."""
        try:
            result = jobs.modelsJob("list").run(timeout=timeout)
            if result.returncode == 0:
                self.models = [m["name"] for m in jobs.parseModels(result.stdout)]
        except Exception:              # noqa: BLE001 - the default model still works
            log.warning("could not list the models", exc_info=True)
        return self.models

    def inferenceRequest(self, cxrId, model, views, volumeSize, pixelSpacing="",
                         magnification="") -> Tuple[jobs.Job, Path]:
        """The background job for the inference panel's values, and its folder: the
        radiograph is written there (``writeRadiographFile``) and the job writes its outputs
        under ``outputs/``. ``pixelSpacing`` and ``magnification``: what the user knows of the
        image's geometry (empty: the image's own)."""
        cxr = self.node(cxrId, KIND_RADIOGRAPH)
        model = model or ""
        if model not in self.modelChoices():
            raise WebInputError(f"unknown model {str(model)[:200]!r}: choose one the page lists")
        folder = self._newFolder("inference")
        try:
            cxrPath = self.core.writeRadiographFile(cxr, folder / "radiograph.nrrd")
            job = jobs.inferJob(cxrPath, folder / "outputs", model=model or None,
                                views=angleList(views, "views", allowEmpty=True),
                                volumeSize=checkVolumeSize(_number(volumeSize, "volume size", int)),
                                device=self.device,
                                pixelSpacing=_optionalNumber(pixelSpacing, "pixel spacing"),
                                magnification=_optionalNumber(magnification, "magnification"))
        except XrayWorldModelError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise WebInputError(userMessage(exc, "Inference settings")) from None
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        job.name = f"Inference on {self.inputs[cxrId].label}"
        return job, folder

    def jobFailure(self, output: str, returncode: int) -> str:
        """One line for a failed job, from the CLI's own error line when it printed one."""
        return jobs.errorFromOutput(output) or (
            f"the job stopped with exit status {returncode}: {_firstLine(output.strip().splitlines()[-1] if output.strip() else '')}")

    def loadInference(self, job: jobs.Job, cxrId) -> dict:
        """The finished job's outputs as nodes (volume, predicted views, table)."""
        source = self.inputs.get(cxrId or "")
        return self.core.loadInferenceOutputs(job.outputs, sourceNode=source.node if source else None)

    # ------------------------------------------------------------------ results
    @staticmethod
    def tableContent(tableNode) -> Tuple[List[str], List[List[str]]]:
        """Column titles and rows of a table node, as text (whatever the Lib put in it)."""
        table = tableNode.GetTable()
        columns = [table.GetColumn(c).GetName() or f"column {c + 1}" for c in range(table.GetNumberOfColumns())]
        rows = [[table.GetValue(r, c).ToString() for c in range(len(columns))]
                for r in range(table.GetNumberOfRows())]
        return columns, rows

    # ------------------------------------------------------------------ downloads
    @staticmethod
    def _zipFolder(folder: Path) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
            for p in sorted(folder.rglob("*")):
                if p.is_file():
                    z.write(p, p.relative_to(folder).as_posix())
        return buffer.getvalue()

    def drrStackZip(self, sequenceNode) -> Tuple[str, bytes]:
        """The DRR sequence as a stack like ``xray2xray drr`` writes (NIfTI + JSON sidecar +
        PNGs), zipped: (file name, bytes)."""
        name = safeFileName(sequenceNode.GetName(), "drr").replace(" ", "_")
        folder = self._newFolder("downloads")
        try:
            self.core.exportDRRs(sequenceNode, folder / name / f"{name}.nii.gz", png=True)
            return f"{name}.zip", self._zipFolder(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def outputsZip(self, outputs: Path, name: str) -> Tuple[str, bytes]:
        """An inference output folder (views, volume, results.json, PNGs) zipped."""
        name = safeFileName(name, "inference").replace(" ", "_")
        return f"{name}.zip", self._zipFolder(Path(outputs))

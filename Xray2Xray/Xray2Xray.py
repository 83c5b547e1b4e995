"""Xray2Xray: a chest X-ray world model in 3D Slicer.

DRRs from a loaded CT (volume nodes on the physical detector plane, browsable as a
sequence), inference from a loaded chest radiograph, training on a folder of CTs, and a
model registry. The widget is thin: ``Xray2XrayLogic`` exposes the Qt-free
``Xray2XrayLib`` (which the tests run on slicer-core), and long work runs in a background
process running the bundled package's command line.

Nothing heavy is imported here at module load: torch, MONAI, numba and the XrayWorldModel
package are imported (and installed on first use) only when the user asks for work.
"""
import functools
import importlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSequenceNode

try:  # Slicer >= 5.4
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # pragma: no cover - older Slicer
    def _(text):
        return text

    def translate(context, text):
        return text


TORCH_REQUIREMENT = ">=2.1,<3"
DEVICE_CHOICES = ["auto", "cpu", "cuda"]
METHOD_CHOICES = ["fast", "exact"]
CONFIG_CHOICES = ["cpu-small", "paper"]


def sourceCheckoutRoot(moduleFile=__file__):
    """Run from a source checkout, make its XrayWorldModel package importable.

    An installed (or built) extension has the package beside this file, in the same
    scripted-modules folder, which Slicer puts on ``sys.path``. In a source checkout added to
    Slicer's module paths (README, "From source") the package sits one level up, beside this
    module's folder and ``pyproject.toml``: that folder goes first on ``sys.path``, so the
    checkout's package is used (over any other copy installed in Slicer's Python), here and in
    the background processes (their PYTHONPATH names the folder the package was found in).
    Only paths are checked; nothing is imported. Returns the checkout folder, or None."""
    moduleDir = Path(moduleFile).resolve().parent
    root = moduleDir.parent
    if (moduleDir / "XrayWorldModel").is_dir():
        return None                                  # installed layout
    if not ((root / "XrayWorldModel" / "__init__.py").is_file() and (root / "pyproject.toml").is_file()):
        return None                                  # not a checkout
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


SOURCE_CHECKOUT = sourceCheckoutRoot()


#
# Xray2Xray
#
class Xray2Xray(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Xray2Xray")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Image Synthesis")]
        self.parent.dependencies = ["Sequences"]
        self.parent.contributors = ["Xray2Xray developers (SlicerXray2Xray project)"]
        self.parent.helpText = _("""
Chest X-ray world model. <b>DRRs</b>: pick a chest CT and the gantry angles (0 deg PA,
90 deg left lateral, 180 deg AP, 270 deg right lateral) to get digitally reconstructed
radiographs as volume nodes placed on the physical detector plane, browsable as a sequence.
<b>Inference</b>: pick a chest radiograph to get predicted views at other angles, a
reconstructed volume and risk/pathology scores. The results table starts with the trust
verdict: scores are shown only when the radiograph is in the model's domain (its features
near the model's reference cohort, a consistent imagined volume, input checks passed);
otherwise they read "withheld" with the reason. Training on a folder of CTs and DRRs for a
folder run in the background with progress and Cancel.
See the <a href="https://github.com/xray2xray/SlicerXray2Xray#in-3d-slicer">documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Implements the Xray2Xray world model (a model that learns 3D structure from 2D chest X-rays
by predicting how projections change as the viewing angle rotates). DRR rendering, CT and
radiograph I/O and reconstruction come from the bundled XrayWorldModel package. Uses PyTorch
(through the PyTorch extension) and MONAI. Not for clinical use.
""")
        # "synthetic chest (Xray2Xray)" in the Sample Data module, once Slicer has started
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Register "synthetic chest (Xray2Xray)" with the Sample Data module. It is made on this
    machine by the package's phantom when its button is pressed (``Xray2XrayLib.samples``);
    nothing is downloaded. From the console: ``Xray2XrayLib.samples.addSyntheticChest(
    slicer.mrmlScene)``."""
    import SampleData
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="Xray2Xray",
        sampleName="synthetic chest (Xray2Xray)",
        thumbnailFileName=os.path.join(os.path.dirname(__file__), "Resources", "Icons",
                                       "SyntheticChest.png"),
        uris=[], fileNames=[], nodeNames=[],      # nothing to download (lists: SampleDataSource
        customDownloader=loadSyntheticChest)      # checks that they have equal lengths)


def loadSyntheticChest(source=None):
    """The Sample Data button: the synthetic chest as a volume node, shown in the slice views
    (installs the module's dependencies first, as every action of the module does)."""
    with slicer.util.tryWithErrorDisplay(_("Failed to make the synthetic chest."), waitCursor=True):
        Xray2XrayLogic().ensureDependencies()
        from Xray2XrayLib import samples
        node = samples.addSyntheticChest(slicer.mrmlScene)
        slicer.util.setSliceViewerLayers(background=node, fit=True)
        return node


#
# Parameter node
#
@parameterNodeWrapper
class Xray2XrayParameterNode:
    """Every choice of the module, saved with the scene."""

    # DRRs from a CT
    ctVolume: vtkMRMLScalarVolumeNode
    angles: str = "0,90"
    detectorRows: Annotated[int, WithinRange(8, 4096)] = 256
    detectorColumns: Annotated[int, WithinRange(8, 4096)] = 256
    pixelSpacing: Annotated[float, WithinRange(0.01, 20.0)] = 1.6
    sourceDetectorDistance: Annotated[float, WithinRange(100.0, 10000.0)] = 1800.0
    sourceIsocenterDistance: Annotated[float, WithinRange(50.0, 9990.0)] = 1500.0
    method: Annotated[str, Choice(METHOD_CHOICES)] = "fast"
    drrSequence: vtkMRMLSequenceNode
    # Inference from a radiograph
    cxrVolume: vtkMRMLScalarVolumeNode
    modelName: str = ""
    predictedViews: str = "90"
    volumeSize: Annotated[int, WithinRange(16, 512)] = 128
    # what the user knows of the radiograph's geometry, over its header's; 0: the header's
    inferencePixelSpacing: Annotated[float, WithinRange(0.0, 10.0)] = 0.0
    inferenceMagnification: Annotated[float, WithinRange(0.0, 2.0)] = 0.0
    # Folder of CTs and training (background processes)
    batchInputFolder: Path
    batchOutputFolder: Path
    trainingData: str = "phantom:64"
    trainingOutputFolder: Path
    trainingConfig: Annotated[str, Choice(CONFIG_CHOICES)] = "cpu-small"
    trainingSteps: Annotated[int, WithinRange(1, 10000000)] = 500
    resumeTraining: bool = False
    # Shared
    device: Annotated[str, Choice(DEVICE_CHOICES)] = "auto"


def _isUnset(path) -> bool:
    return path is None or str(path) in ("", ".")


#
# Background process runner (Qt)
#
class _JobRunner:
    """Runs one ``Xray2XrayLib.jobs.Job`` in a ``qt.QProcess``: streams its output to a
    callback, polls its progress every second, and cancels by terminating the process."""

    def __init__(self, onOutput, onProgress, onFinished):
        self.onOutput, self.onProgress, self.onFinished = onOutput, onProgress, onFinished
        self.process = None
        self.job = None
        self.output = []
        self.cancelled = False
        self.timer = qt.QTimer()
        self.timer.setInterval(1000)
        self.timer.connect("timeout()", self._poll)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.state() != qt.QProcess.NotRunning

    def start(self, job) -> None:
        if self.running:
            raise RuntimeError(_("Another job is running; cancel it or wait for it to finish."))
        self.job, self.output, self.cancelled = job, [], False
        process = qt.QProcess()
        env = qt.QProcessEnvironment.systemEnvironment()
        for key, value in job.environment.items():
            env.insert(key, value)
        process.setProcessEnvironment(env)
        process.setProcessChannelMode(qt.QProcess.MergedChannels)
        process.connect("readyReadStandardOutput()", self._read)
        process.connect("finished(int,QProcess::ExitStatus)", self._finished)
        process.connect("errorOccurred(QProcess::ProcessError)", self._error)
        self.process = process
        logging.info("Xray2Xray: starting %s", " ".join(job.commandLine))
        process.start(job.program, job.arguments)
        self.timer.start()
        self.onProgress(0.0, _("starting"))

    def cancel(self) -> None:
        if not self.running:
            return
        self.cancelled = True
        self.process.terminate()
        qt.QTimer.singleShot(5000, self._kill)

    def _kill(self):
        if self.running:
            self.process.kill()

    def _read(self):
        data = self.process.readAllStandardOutput()
        text = bytes(data.data()).decode("utf-8", "replace") if hasattr(data, "data") else str(data)
        if text:
            self.output.append(text)
            self.onOutput(text)
            from Xray2XrayLib import jobs
            for line in text.replace("\r", "\n").splitlines():
                fraction = jobs.progressFromLine(line)
                if fraction is not None:
                    self.onProgress(fraction, line.strip()[:80])

    def _poll(self):
        if self.job is not None:
            fraction, text = self.job.progress()
            if fraction is not None or text:
                self.onProgress(fraction, text)

    def _error(self, error):
        if error == qt.QProcess.FailedToStart:
            self.timer.stop()
            self.onFinished(self.job, -1, _("the process failed to start: {program}").format(
                program=self.job.program if self.job else "?"))

    def _finished(self, exitCode, exitStatus):
        self.timer.stop()
        self._poll()
        from Xray2XrayLib import jobs
        text = "".join(self.output)
        if self.cancelled:
            message = _("cancelled")
        elif exitCode == 0 and exitStatus == qt.QProcess.NormalExit:
            message = ""
        else:
            message = jobs.errorFromOutput(text) or _("exit status {code}").format(code=exitCode)
        self.onFinished(self.job, exitCode if not self.cancelled else -1, message)


#
# Xray2XrayWidget
#
class Xray2XrayWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._runner = None
        self._jobSuccess = None     # called with the job when the running job succeeds
        self._jobWorkDir = None     # temporary folder removed when the running job ends

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/Xray2Xray.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = Xray2XrayLogic()
        self._runner = _JobRunner(self._appendLog, self._showProgress, self._jobFinished)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        for button, slot in ((self.ui.generateDRRsButton, self.onGenerateDRRs),
                             (self.ui.exportDRRsButton, self.onExportDRRs),
                             (self.ui.runInferenceButton, self.onRunInference),
                             (self.ui.runBatchButton, self.onRunBatch),
                             (self.ui.trainButton, self.onTrain),
                             (self.ui.cancelButton, self.onCancel),
                             (self.ui.refreshModelsButton, self.onRefreshModels),
                             (self.ui.importModelButton, self.onImportModel),
                             (self.ui.openCacheButton, self.onOpenCache),
                             (self.ui.clearCacheButton, self.onClearCache),
                             (self.ui.installDependenciesButton, self.onInstallDependencies)):
            button.connect("clicked(bool)", slot)
        self.ui.modelsListWidget.connect("itemDoubleClicked(QListWidgetItem*)", self.onModelChosen)

        self.ui.cancelButton.enabled = False
        self.ui.jobProgressBar.setValue(0)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._runner is not None and self._runner.running:
            self._runner.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.ctVolume:
            self._parameterNode.ctVolume = self._firstVolume(singleSlice=False)
        if not self._parameterNode.cxrVolume:
            self._parameterNode.cxrVolume = self._firstVolume(singleSlice=True)

    @staticmethod
    def _firstVolume(singleSlice: bool):
        for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
            if node.IsA("vtkMRMLLabelMapVolumeNode") or node.GetImageData() is None:
                continue
            if (min(node.GetImageData().GetDimensions()) == 1) == singleSlice:
                return node
        return None

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        p = self._parameterNode
        busy = self._runner is not None and self._runner.running
        canDRR = bool(p and p.ctVolume and p.angles.strip())
        self.ui.generateDRRsButton.enabled = canDRR and not busy
        self.ui.generateDRRsButton.toolTip = _("Render DRRs of the CT at the angles") if canDRR \
            else _("Select a CT volume and enter angles")
        self.ui.exportDRRsButton.enabled = bool(p and p.drrSequence)
        self.ui.runInferenceButton.enabled = bool(p and p.cxrVolume) and not busy
        self.ui.runBatchButton.enabled = bool(p and not _isUnset(p.batchInputFolder)
                                              and not _isUnset(p.batchOutputFolder)) and not busy
        self.ui.trainButton.enabled = bool(p and p.trainingData.strip()
                                           and not _isUnset(p.trainingOutputFolder)) and not busy
        self.ui.cancelButton.enabled = busy

    # ------------------------------------------------------------------ DRRs
    def _drrArguments(self) -> dict:
        p = self._parameterNode
        return dict(angles=p.angles, detectorSize=(p.detectorRows, p.detectorColumns),
                    pixelSpacing=p.pixelSpacing, sdd=p.sourceDetectorDistance,
                    sod=p.sourceIsocenterDistance, method=p.method)

    def onGenerateDRRs(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to generate DRRs."), waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            progress = slicer.util.createProgressDialog(
                labelText=_("Rendering DRRs..."), maximum=100, windowTitle=_("Xray2Xray"))
            try:
                def callback(fraction, text):
                    progress.setValue(int(round(100 * fraction)))
                    progress.setLabelText(text)
                    slicer.app.processEvents()
                    return not progress.wasCanceled

                from Xray2XrayLib import CancelledError
                try:
                    seq = self.logic.generateDRRs(p.ctVolume, device=p.device,
                                                  progressCallback=callback, **self._drrArguments())
                except CancelledError:
                    self.ui.statusLabel.text = _("Cancelled; the scene is unchanged.")
                    return
            finally:
                progress.close()
            p.drrSequence = seq
            self._showSequence(seq)
            self.ui.statusLabel.text = _("{n} DRRs in '{name}'").format(
                n=seq.GetNumberOfDataNodes(), name=seq.GetName())

    def _showSequence(self, sequenceNode) -> None:
        browser = self.logic.browserForSequence(sequenceNode)
        if browser is None:
            return
        proxy = browser.GetProxyNode(sequenceNode)
        if proxy is not None:
            slicer.util.setSliceViewerLayers(background=proxy, fit=True)
        sequencesModule = getattr(slicer.modules, "sequences", None)
        for method in ("setToolBarActiveBrowserNode", "showSequenceBrowser"):
            if hasattr(sequencesModule, method):
                getattr(sequencesModule, method)(browser)

    def onExportDRRs(self) -> None:
        p = self._parameterNode
        path = qt.QFileDialog.getSaveFileName(self.parent, _("Save DRR stack"),
                                              f"{p.drrSequence.GetName()}.nii.gz",
                                              _("NIfTI DRR stack (*.nii.gz)"))
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to save the DRR stack."), waitCursor=True):
            out = self.logic.exportDRRs(p.drrSequence, path, png=True)
            self.ui.statusLabel.text = _("Saved {path}").format(path=out)

    # ------------------------------------------------------------------ inference
    def onRunInference(self) -> None:
        """Inference in a background process (``xray2xray infer``): the radiograph node is
        written to a temporary 2D NRRD, the job writes views, volume and results.json next to
        it, and when it finishes they are loaded as nodes under the radiograph's study."""
        p = self._parameterNode

        def makeJob():
            cxrNode = p.cxrVolume
            workDir = Path(tempfile.mkdtemp(prefix="Xray2Xray-infer-", dir=slicer.app.temporaryPath))
            try:
                cxrPath = self.logic.writeRadiographFile(cxrNode, workDir / "radiograph.nrrd")
                job = self.logic.inferJob(cxrPath, workDir / "outputs", model=p.modelName.strip() or None,
                                          views=p.predictedViews, volumeSize=p.volumeSize,
                                          device=p.device,
                                          pixelSpacing=p.inferencePixelSpacing or None,
                                          magnification=p.inferenceMagnification or None)
            except Exception:
                shutil.rmtree(workDir, ignore_errors=True)
                raise

            def loadOutputs(finishedJob):
                source = cxrNode if cxrNode is not None and cxrNode.GetScene() is slicer.mrmlScene else None
                outputs = self.logic.loadInferenceOutputs(finishedJob.outputs, sourceNode=source)
                self._showInferenceOutputs(outputs)

            return job, loadOutputs, workDir

        self._startJob(makeJob)

    def _showInferenceOutputs(self, outputs: dict) -> None:
        volume, views, table = outputs["volume"], outputs["views"], outputs["table"]
        slicer.util.setSliceViewerLayers(background=volume, fit=True)
        if views is not None:
            self._showSequence(views)
        layoutManager = slicer.app.layoutManager()
        if table is not None and layoutManager is not None:
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
            appLogic = slicer.app.applicationLogic()
            appLogic.GetSelectionNode().SetActiveTableID(table.GetID())
            appLogic.PropagateTableSelection()
        ncc = outputs["results"].get("consistency", {}).get("ncc")
        trust = outputs["results"].get("trust") or {}
        withheld = (outputs["results"].get("scores") or {}).get("withheld")
        verdict = (_("scores withheld: {reason}").format(reason=withheld) if withheld else
                   _("in distribution") if trust.get("in_distribution") else
                   _("out of distribution") if trust else _("no verdict"))
        self.ui.statusLabel.text = _("Inference done: '{volume}', {n} predicted view(s), table "
                                     "'{table}' (consistency {ncc}; {verdict})").format(
            volume=volume.GetName(), n=views.GetNumberOfDataNodes() if views is not None else 0,
            table=table.GetName(), ncc="n/a" if ncc is None else f"{ncc:.3f}", verdict=verdict)

    # ------------------------------------------------------------------ background jobs
    def _startJob(self, makeJob) -> None:
        """``makeJob()`` returns a Job, or (job, onSuccess(job), temporary folder)."""
        with slicer.util.tryWithErrorDisplay(_("Could not start the job."), waitCursor=True):
            if not self.logic.ensureDependencies(torch=True):
                return
            made = makeJob()
            job, onSuccess, workDir = made if isinstance(made, tuple) else (made, None, None)
            self.ui.logPlainTextEdit.clear()
            self.ui.jobLabel.text = job.name
            self.ui.jobCollapsibleButton.collapsed = False
            try:
                self._runner.start(job)
            except Exception:
                if workDir is not None:
                    shutil.rmtree(workDir, ignore_errors=True)
                raise
            self._jobSuccess, self._jobWorkDir = onSuccess, workDir
            self._updateButtons()

    def onRunBatch(self) -> None:
        p = self._parameterNode
        self._startJob(lambda: self.logic.drrFolderJob(
            p.batchInputFolder, p.batchOutputFolder, device=p.device, png=True, **self._drrArguments()))

    def onTrain(self) -> None:
        p = self._parameterNode
        self._startJob(lambda: self.logic.trainJob(
            p.trainingData, p.trainingOutputFolder, config=p.trainingConfig, steps=p.trainingSteps,
            device=p.device, resume=p.resumeTraining))

    def onCancel(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            self.ui.jobLabel.text = _("Cancelling...")

    def _appendLog(self, text: str) -> None:
        self.ui.logPlainTextEdit.appendPlainText(text.rstrip("\n"))

    def _showProgress(self, fraction, text: str) -> None:
        if fraction is None:
            self.ui.jobProgressBar.setRange(0, 0)   # busy indicator
        else:
            self.ui.jobProgressBar.setRange(0, 100)
            self.ui.jobProgressBar.setValue(int(round(100 * fraction)))
        if text:
            self.ui.jobProgressBar.setFormat(f"%p% - {text}" if fraction is not None else text)

    def _jobFinished(self, job, exitCode: int, message: str) -> None:
        self.ui.jobProgressBar.setRange(0, 100)
        name = job.name if job is not None else _("Job")
        onSuccess, workDir = self._jobSuccess, self._jobWorkDir
        self._jobSuccess = self._jobWorkDir = None
        if exitCode == 0 and onSuccess is not None:
            try:
                with slicer.util.tryWithErrorDisplay(_("Could not load the results."), waitCursor=True):
                    onSuccess(job)
                    self.ui.jobProgressBar.setValue(100)
                    self.ui.jobLabel.text = _("{name}: done").format(name=name)
            finally:
                if workDir is not None:
                    shutil.rmtree(workDir, ignore_errors=True)
                self._updateButtons()
            return
        if workDir is not None:
            shutil.rmtree(workDir, ignore_errors=True)
        if exitCode == 0:
            self.ui.jobProgressBar.setValue(100)
            self.ui.jobLabel.text = _("{name}: done, output in {out}").format(name=name, out=job.outputs)
        else:
            self.ui.jobLabel.text = _("{name}: {message}").format(name=name, message=message)
            if message != _("cancelled"):
                slicer.util.errorDisplay(_("{name} failed: {message}").format(name=name, message=message),
                                         detailedText="".join(self._runner.output)[-20000:])
        self._updateButtons()

    # ------------------------------------------------------------------ models
    def onRefreshModels(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not list the models."), waitCursor=True):
            from Xray2XrayLib import jobs
            self.ui.modelsListWidget.clear()
            for model in self.logic.listModels():
                self.ui.modelsListWidget.addItem(jobs.modelLabel(model))
            self.ui.modelsCacheLabel.text = _("Cache: {folder}").format(folder=self.logic.modelCacheDir())

    def onModelChosen(self, item) -> None:
        name = item.text().split()[0] if item.text().strip() else ""
        self._parameterNode.modelName = name

    def onImportModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Import model weights"), "",
                                              _("Model files (*.safetensors);;All files (*)"))
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not import the model."), waitCursor=True):
            self.ui.statusLabel.text = self.logic.importModel(path)
            self.onRefreshModels()

    def onOpenCache(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not open the model cache."), waitCursor=True):
            folder = self.logic.modelCacheDir()
            folder.mkdir(parents=True, exist_ok=True)
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))

    def onClearCache(self) -> None:
        folder = self.logic.modelCacheDir()
        if not slicer.util.confirmOkCancelDisplay(
                _("Remove every downloaded and imported model from {folder}?").format(folder=folder)):
            return
        with slicer.util.tryWithErrorDisplay(_("Could not clear the model cache."), waitCursor=True):
            self.ui.statusLabel.text = self.logic.clearModelCache()
            self.onRefreshModels()

    def onInstallDependencies(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not install the dependencies."), waitCursor=True):
            if self.logic.ensureDependencies(torch=True, askConfirmation=False):
                self.ui.statusLabel.text = _("Dependencies are installed.")


#
# Xray2XrayLogic
#
class Xray2XrayLogic(ScriptedLoadableModuleLogic):
    """Everything the module does, callable from the Python console without the GUI.

    The scene work is ``Xray2XrayLib.Xray2XrayCoreLogic`` (Qt-free, tested on slicer-core),
    exposed here rather than re-declared: a public name this class does not define
    (``loadCT``, ``generateDRRs``, ``exportDRRs``, ``runInference``, ...) is looked up on
    :attr:`core`, and the job factories in ``JOBS`` on ``Xray2XrayLib.jobs``, each with its
    own signature and docstring. Those in ``NEEDS_DEPENDENCIES`` install the dependencies
    first. Why not inherit from the core logic: this file is loaded at Slicer's start-up and
    imports nothing heavy there (the Lib needs numpy and the package), and the core logic
    is bound to one scene, which :attr:`core` follows.
    """

    #: Core methods that run torch and co.: they call :meth:`ensureDependencies` first.
    NEEDS_DEPENDENCIES = frozenset({"generateDRRs", "generateDRRsForFolder", "runInference",
                                    "runInferenceForFolder"})
    #: Background-job factories of ``Xray2XrayLib.jobs`` exposed as methods.
    JOBS = frozenset({"drrFolderJob", "inferJob", "trainJob"})

    def __init__(self) -> None:
        self._core = None
        self._dependenciesChecked = False
        ScriptedLoadableModuleLogic.__init__(self)

    def __getattr__(self, name: str):
        # Called only for names not found on the instance or the class.
        if name.startswith("_") or name == "core":
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
        if name in self.JOBS:
            from Xray2XrayLib import jobs
            return getattr(jobs, name)
        try:
            attribute = getattr(self.core, name)
        except AttributeError:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'") from None
        if name not in self.NEEDS_DEPENDENCIES:
            return attribute

        @functools.wraps(attribute)
        def withDependencies(*args, **kwargs):
            self.ensureDependencies()
            return attribute(*args, **kwargs)
        return withDependencies

    def __dir__(self):
        from Xray2XrayLib import Xray2XrayCoreLogic
        exposed = {n for n in dir(Xray2XrayCoreLogic) if not n.startswith("_")} | self.JOBS
        return sorted(set(super().__dir__()) | exposed)

    def getParameterNode(self):
        return Xray2XrayParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------ dependencies
    @staticmethod
    def requirementsPath() -> str:
        return os.path.join(os.path.dirname(__file__), "Resources", "requirements.txt")

    def ensureDependencies(self, torch: bool = True, askConfirmation: bool = True) -> bool:
        """Install what the package needs on first use (never at import): torch through the
        PyTorch extension, the rest through Slicer's ``pip_ensure`` (``slicer.pydeps`` from
        5.11, ``slicer.packaging`` before it was renamed) or ``slicer.util.pip_install`` on
        older Slicer. Like ``pip_ensure``, a declined installation raises RuntimeError; the
        return value is True once everything is in place."""
        if self._dependenciesChecked:
            return True
        if torch:
            self._ensureTorch(askConfirmation)
        self._ensurePipRequirements()
        self._dependenciesChecked = True
        return True

    @staticmethod
    def _ensureTorch(askConfirmation: bool = True) -> None:
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise RuntimeError(_("Xray2Xray needs the PyTorch extension: install 'PyTorch' from "
                                 "the Extensions Manager and restart Slicer."))
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if torchLogic.torchInstalled():
            return
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                _("Xray2Xray needs PyTorch. Download and install it now? This can take several "
                  "minutes."), _("Install PyTorch")):
            raise RuntimeError(_("PyTorch installation was declined; Xray2Xray cannot run "
                                 "without it."))
        torchModule = torchLogic.installTorch(askConfirmation=False,
                                              torchVersionRequirement=TORCH_REQUIREMENT)
        if torchModule is None:
            raise RuntimeError(_("PyTorch could not be installed."))

    @staticmethod
    def _pipEnsureModule():
        """Slicer's module providing ``pip_ensure``, or None on Slicer before 5.10."""
        for name in ("slicer.pydeps", "slicer.packaging"):
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            if hasattr(module, "pip_ensure"):
                return module
        return None

    def _ensurePipRequirements(self) -> None:
        path = self.requirementsPath()
        deps = self._pipEnsureModule()
        if deps is not None:
            # skip_in_testing=False: the self-test needs the packages it then imports.
            deps.pip_ensure(deps.load_requirements(path), requester="Xray2Xray",
                            skip_in_testing=False)
            return
        if self._missingRequirements(path):   # Slicer before pip_ensure existed
            slicer.util.pip_install(["-r", path])

    @staticmethod
    def _missingRequirements(path: str) -> list:
        import importlib.metadata
        missing = []
        try:
            from packaging.requirements import Requirement
        except ImportError:
            Requirement = None
        for line in Path(path).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if Requirement is None:
                missing.append(line)
                continue
            req = Requirement(line)
            try:
                version = importlib.metadata.version(req.name)
            except importlib.metadata.PackageNotFoundError:
                missing.append(line)
                continue
            if req.specifier and not req.specifier.contains(version, prereleases=True):
                missing.append(line)
        return missing

    # ------------------------------------------------------------------ scene work
    @property
    def core(self):
        """The Qt-free logic on Slicer's scene (``Xray2XrayLib.Xray2XrayCoreLogic``)."""
        if self._core is None or self._core.scene is not slicer.mrmlScene:
            from Xray2XrayLib import Xray2XrayCoreLogic
            self._core = Xray2XrayCoreLogic(slicer.mrmlScene)   # finds Slicer's sequences logic
        return self._core

    # ------------------------------------------------------------------ models
    @staticmethod
    def _runModels(action, *args, timeout=600) -> str:
        from Xray2XrayLib import jobs
        result = jobs.modelsJob(action, *args).run(timeout=timeout)
        if result.returncode != 0:
            message = jobs.errorFromOutput(result.stderr + result.stdout) or \
                (result.stderr or result.stdout).strip()[-500:]
            raise RuntimeError(_("xray2xray models {action} failed: {message}").format(
                action=action, message=message))
        return result.stdout

    def listModels(self) -> list:
        """Known models (registry entries and imported files) as dicts, from
        ``xray2xray models list --json``."""
        from Xray2XrayLib import jobs
        return jobs.parseModels(self._runModels("list", timeout=120))

    def importModel(self, path) -> str:
        """Copy a model file into the cache; returns where it went."""
        return self._runModels("import", str(path)).strip()

    @staticmethod
    def modelCacheDir() -> Path:
        """Where models are cached: ``XrayWorldModel.conventions.models_cache_dir()``."""
        from XrayWorldModel.conventions import models_cache_dir
        return models_cache_dir()

    def clearModelCache(self) -> str:
        """Remove every cached model that can be removed (not those shipped in the package)."""
        from Xray2XrayLib import jobs
        names = jobs.removableModels(self.listModels())
        removed = [self._runModels("remove", name).strip() for name in names]
        return _("Removed {n} model(s).").format(n=len(names)) if removed else _("Nothing to remove.")


#
# Xray2XrayTest
#
class Xray2XrayTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Reload and Test): the same path as the pytest suite, on Slicer's
    CTChest sample (DRRs) and on a DRR of a generated phantom chest (inference, with a tiny
    untrained model built by the test, so nothing is downloaded)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_Xray2XrayDRRs()
        self.setUp()
        self.test_Xray2XrayBadInput()
        self.setUp()
        self.test_Xray2XrayInference()

    def test_Xray2XrayDRRs(self):
        import numpy as np
        import SampleData
        from Xray2XrayLib import conversions

        self.delayDisplay("Loading CTChest")
        ct = SampleData.downloadSample("CTChest")
        logic = Xray2XrayLogic()
        self.delayDisplay("Rendering DRRs at 0 and 90 deg")
        seq = logic.generateDRRs(ct, [0, 90], detectorSize=(128, 128), pixelSpacing=3.2)
        self.assertEqual(seq.GetNumberOfDataNodes(), 2)
        iso = conversions.nodeCenterRas(ct)
        pa = conversions.nodeCenterRas(seq.GetDataNodeAtValue("0"))
        lat = conversions.nodeCenterRas(seq.GetDataNodeAtValue("90"))
        np.testing.assert_allclose(pa - iso, [0, 300, 0], atol=1e-3)    # anterior
        np.testing.assert_allclose(lat - iso, [-300, 0, 0], atol=1e-3)  # patient's left
        self.assertIsNotNone(logic.browserForSequence(seq))

        volume = conversions.volumeNodeToVolume(ct)
        back = conversions.volumeToVolumeNode(volume, slicer.mrmlScene, "roundtrip")
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(back), slicer.util.arrayFromVolume(ct))
        np.testing.assert_allclose(conversions.ijkToRas(back), conversions.ijkToRas(ct))
        self.delayDisplay("Test passed")

    def test_Xray2XrayBadInput(self):
        logic = Xray2XrayLogic()
        n = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(ValueError):
            logic.generateDRRs(None, [0])
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), n)
        self.delayDisplay("Test passed")

    @staticmethod
    def _tinyModelFile(path, frontals):
        """A tiny untrained world model saved as a real model file (card with the domain
        statistics of ``frontals``; no probe heads)."""
        import torch
        from XrayWorldModel.infer import domain_reference
        from XrayWorldModel.models import WorldModel
        from XrayWorldModel.config import load_config
        from XrayWorldModel.weights.model_file import save_model_file
        tiny = {"image_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "heads": 2,
                "transition_depth": 1, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2,
                "decoder_channels": 4}
        config = load_config("cpu-small", [f"model.{k}={v}" for k, v in tiny.items()]
                             + ["views.image_size=32"])
        torch.manual_seed(0)
        model = WorldModel(config.model)
        card = {"name": "tiny-selftest", "version": "1", "config": config.to_dict(),
                "domain": domain_reference(frontals(config.views)), "intended_use": "self test"}
        return save_model_file(path, {f"model.{k}": v for k, v in model.state_dict().items()}, card)

    def test_Xray2XrayInference(self):
        import numpy as np
        from Xray2XrayLib import conversions
        from XrayWorldModel.phantom import procedural_chest
        from XrayWorldModel.data.views import render_views

        logic = Xray2XrayLogic()
        logic.ensureDependencies()
        workDir = Path(tempfile.mkdtemp(prefix="Xray2XrayTest-", dir=slicer.app.temporaryPath))
        try:
            self.delayDisplay("A frontal DRR of a phantom chest, and a tiny model")
            phantom = procedural_chest(seed=0, shape=(48, 48, 40), spacing=(7.5, 7.5, 9.0))
            modelPath = str(self._tinyModelFile(workDir / "tiny.safetensors",
                                                lambda views: render_views([phantom], views, [0.0])[:, 0]))
            ct = conversions.volumeToVolumeNode(phantom, slicer.mrmlScene, "phantom chest")
            seq = logic.generateDRRs(ct, [0], detectorSize=(64, 64), pixelSpacing=6.0)
            drr = logic.browserForSequence(seq).GetProxyNode(seq)

            def tableValues(tableNode):
                t = tableNode.GetTable()
                return {t.GetValue(r, 0).ToString(): t.GetValue(r, 1).ToString()
                        for r in range(t.GetNumberOfRows())}

            def check(outputs, volume, viewGeometry, views):
                node = outputs["volume"]
                self.assertEqual(node.GetImageData().GetDimensions(), (32, 32, 32))
                np.testing.assert_allclose(conversions.ijkToRas(node),
                                           conversions.LPS_TO_RAS @ volume.affine, atol=1e-6)
                self.assertEqual(outputs["views"].GetNumberOfDataNodes(), 1)
                view = outputs["views"].GetDataNodeAtValue("90")
                # 90 deg: the detector at the patient's left of the isocentre (RAS origin), -R
                np.testing.assert_allclose(conversions.nodeCenterRas(view),
                                           [-(viewGeometry.sdd - viewGeometry.sod), 0.0, 0.0], atol=1e-3)
                np.testing.assert_allclose(conversions.volumeNodeToRadiograph(view).image, views[0],
                                           rtol=1e-6, atol=1e-6)
                values = tableValues(outputs["table"])
                self.assertEqual(values["Model name"], "tiny-selftest")
                self.assertEqual(values["Cardiovascular risk"], "n/a")   # no probe heads
                # no OOD reference in this card: the verdict is the consistency score's
                ncc = outputs["results"]["consistency"]["ncc"]
                self.assertEqual(values["Trust verdict"],
                                 "in distribution" if ncc >= 0.7 else "OUT OF DISTRIBUTION")
                self.assertAlmostEqual(float(values["Consistency (NCC)"]),
                                       outputs["results"]["consistency"]["ncc"], places=4)

            self.delayDisplay("Inference in Slicer's process")
            out = logic.runInference(drr, model=modelPath, views=[90], volumeSize=32)
            result = out["result"]
            check(out, result.volume, result.view_geometry, result.views)

            self.delayDisplay("Inference in a background process, as the widget runs it")
            cxrPath = logic.writeRadiographFile(drr, workDir / "radiograph.nrrd")
            job = logic.inferJob(cxrPath, workDir / "outputs", model=modelPath, views=[90],
                                 volumeSize=32, device="cpu")
            completed = job.run(timeout=600)
            self.assertEqual(completed.returncode, 0, completed.stderr[-2000:])
            self.assertEqual(job.progress()[0], 1.0)
            loaded = logic.loadInferenceOutputs(job.outputs, sourceNode=drr)
            from XrayWorldModel.io.drr_stack import read_drr_stack
            from XrayWorldModel.io import read_ct
            views, geometry, _ = read_drr_stack(job.outputs / "views.nii.gz")
            check(loaded, read_ct(job.outputs / "volume.nii.gz"), geometry, views)

            self.delayDisplay("Bad input: a clear error, the scene unchanged")
            n = slicer.mrmlScene.GetNumberOfNodes()
            for bad in (None, ct):
                with self.assertRaises(ValueError):
                    logic.runInference(bad, model=modelPath)
            with self.assertRaises(ValueError):
                logic.runInference(drr, model=str(workDir / "missing.safetensors"))
            self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), n)
        finally:
            shutil.rmtree(workDir, ignore_errors=True)
        self.delayDisplay("Test passed")

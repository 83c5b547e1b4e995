"""The page of ``xray2xray web``: the Slicer module's panels around real Slicer views.

Views (trame-slicer, rendered on the server, VTK with Mesa when there is no GPU): a 3D view
and the axial, coronal and sagittal slice views of the CT or the reconstructed volume (view
group 0), and an "X-ray" slice view (group 1) turned into the plane of the radiograph or DRR
it shows, which is drawn in the 3D view where the detector was.

Panels: *Inputs* (command line, upload, ``--data-dir``, the synthetic chest), *DRRs* (angles,
detector, spacing, SDD/SOD, method), *Inference* (model, views, volume size), *Job*
(progress and Cancel), *Views* (the sequence slider), *Results* (the table) and *Save*
(downloads). All work goes through :class:`.session.WebSession`; long work runs off the
event loop (DRRs in a worker thread, inference in a background process), so the page stays
live and Cancel is answered at once.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
import traceback

from XrayWorldModel.web import build_web_parser, check_web_args, is_loopback
from XrayWorldModel.errors import XrayWorldModelError

from Xray2XrayLib import CancelledError, jobs

from .session import DRR_METHODS, KIND_CT, KIND_RADIOGRAPH, WebSession, userMessage

log = logging.getLogger("Xray2XrayWeb")

XRAY_VIEW = "Xray"
VIEW_GROUP_VOLUME, VIEW_GROUP_XRAY = 0, 1
DRAWER_WIDTH = 440


def _defaults():
    from XrayWorldModel.conventions import DEFAULT_DETECTOR, DEFAULT_PIXEL_SPACING_MM
    from XrayWorldModel.geometry import DEFAULT_SDD, DEFAULT_SOD
    return {"drr_angles": "0,90", "drr_rows": DEFAULT_DETECTOR[0], "drr_cols": DEFAULT_DETECTOR[1],
            "drr_spacing": DEFAULT_PIXEL_SPACING_MM, "drr_sdd": DEFAULT_SDD, "drr_sod": DEFAULT_SOD,
            "drr_method": DRR_METHODS[0], "inf_model": "", "inf_views": "90", "inf_volume": 128,
            "inf_pixel_spacing": "", "inf_magnification": ""}


class Xray2XrayWebApp:
    """The trame application: one MRML scene (trame-slicer's ``SlicerApp``), one session."""

    def __init__(self, options, server=None, started: float = None):
        self.started = time.monotonic() if started is None else started
        from trame.app import get_server
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories
        from slicer import vtkSlicerSequencesLogic

        self.options = options
        self.server = get_server(server, client_type="vue3")
        self.state, self.ctrl = self.server.state, self.server.controller
        self.slicer = SlicerApp()
        register_rca_factories(self.slicer.view_manager, self.server)
        self.sequencesLogic = self.slicer.register_module_logic(vtkSlicerSequencesLogic())
        self.session = WebSession(self.slicer.scene, self.sequencesLogic, dataDir=options.data_dir,
                                  maxUploadBytes=int(options.max_upload_mb * 2**20),
                                  device=options.device, defaultModel=options.model)
        self.layout = LayoutManager(self.slicer.scene, self.slicer.view_manager, self.server)
        self.layout.register_layout("Xray2Xray", self._layout())
        self.layout.set_layout("Xray2Xray")
        self.browser = None            # the sequence browser the slider drives
        self.sequence = None
        self.shownVolume = None
        self.outputs = {}              # last inference: nodes, and its output folder
        self._cancel = None            # set while a job runs: asks it to stop
        self._process = None           # the inference process, while it runs
        self._tasks = set()            # jobs running on the event loop
        self._initState()
        self._buildUi()
        self._bind()

    # ------------------------------------------------------------------ layout and views
    @staticmethod
    def _layout():
        from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition, ViewProps, ViewType
        xray = ViewLayoutDefinition(XRAY_VIEW, ViewType.SLICE_VIEW,
                                    ViewProps(label="X-ray", orientation="Coronal", color="#9F7FE0",
                                              group=VIEW_GROUP_XRAY))
        return Layout(LayoutDirection.Horizontal, [
            Layout(LayoutDirection.Vertical, [ViewLayoutDefinition.threed_view(), xray]),
            Layout(LayoutDirection.Vertical, [ViewLayoutDefinition.axial_view(),
                                              ViewLayoutDefinition.coronal_view(),
                                              ViewLayoutDefinition.sagittal_view()]),
        ])

    def _view(self, name):
        return self.slicer.view_manager.get_view(name)

    def _renderAll(self):
        for view in self.slicer.view_manager.get_views():
            view.schedule_render()

    def showVolume(self, node) -> None:
        """A CT or reconstructed volume in the axial/coronal/sagittal views and in 3D."""
        if node is None:
            return
        dm = self.slicer.display_manager
        if self.shownVolume is not None and self.shownVolume is not node and self.shownVolume.GetScene():
            dm.hide_volume(self.shownVolume, VIEW_GROUP_VOLUME)
        dm.show_volume(node, view_group=VIEW_GROUP_VOLUME, do_reset_views=True)
        self.shownVolume = node
        self._apply3dMode()
        self._placeCamera(node)
        self.state.volume_id = node.GetID()
        self._renderAll()

    def _apply3dMode(self, **_) -> None:
        """The volume in 3D: volume rendering, or (cheaper) its three slice planes. Rendering
        runs on the server and blocks it while it draws; Mesa's software OpenGL takes seconds
        a frame for volume rendering of a CT, so without a GPU the planes are the default."""
        node = self.shownVolume
        on = bool(self.state.volume_rendering)
        if node is not None and node.GetScene() is not None:
            display = self.slicer.volume_rendering.get_vr_display_node(node)
            if display is not None:
                display.SetVisibility(on)
        for view in self.slicer.view_manager.get_slice_views(VIEW_GROUP_VOLUME):
            view.set_visible_in_3d(not on)
        for view in self.slicer.view_manager.get_threed_views(VIEW_GROUP_VOLUME):
            view_node = view.get_view_node()
            if view_node is not None:
                view_node.SetVolumeRenderingOversamplingFactor(1.0)
        self._renderAll()

    def _softwareRendering(self) -> bool:
        """Whether VTK draws with a software OpenGL (Mesa llvmpipe and the like)."""
        views = self.slicer.view_manager.get_threed_views()
        if not views:
            return True
        try:
            window = views[0].render_window()
            window.Render()
            capabilities = (window.ReportCapabilities() or "").lower()
        except Exception:              # noqa: BLE001 - assume the slow case
            return True
        return not capabilities or any(s in capabilities for s in ("llvmpipe", "softpipe", "swiftshader", "software rasterizer"))

    def _placeCamera(self, node) -> None:
        """Look at the volume from the front, the patient's right and above, so that a
        detector in front (0 deg) or at the left (90 deg) is seen beside the chest."""
        threeD = self.slicer.view_manager.get_threed_views(VIEW_GROUP_VOLUME)
        camera = threeD[0].get_camera_node() if threeD else None
        if camera is None:
            return
        bounds = [0.0] * 6
        node.GetRASBounds(bounds)
        center = [(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2]
        distance = 4.0 * max(bounds[1] - bounds[0], bounds[3] - bounds[2], bounds[5] - bounds[4], 100.0)
        direction = (0.55, 0.75, 0.37)          # R, A, S
        camera.SetFocalPoint(*center)
        camera.SetPosition(*[c + distance * d for c, d in zip(center, direction)])
        camera.SetViewUp(0.0, 0.0, 1.0)
        threeD[0].reset_camera()                 # fit what is shown, keeping the direction

    def showRadiograph(self, node) -> None:
        """A single-slice node (radiograph, DRR, predicted view) in the X-ray view, the view
        turned into its plane and that plane drawn in the 3D view."""
        view = self._view(XRAY_VIEW)
        if view is None or node is None:
            return
        view.set_background_volume_id(node.GetID())
        logic = self.slicer.app_logic.GetSliceLogic(view.get_view_node())
        if logic is not None:
            logic.RotateSliceToLowestVolumeAxes(True)
        view.fit_view_to_content()
        view.set_visible_in_3d(True)
        for threeD in self.slicer.view_manager.get_threed_views(VIEW_GROUP_VOLUME):
            threeD.reset_camera()                # the volume and the detector plane
        self._renderAll()

    # ------------------------------------------------------------------ state
    def _initState(self):
        s = self.state
        s.update(_defaults())
        s.update({
            "error_message": "", "status_message": "Starting...", "busy_loading": False,
            "ct_items": [], "ct_id": None, "cxr_items": [], "cxr_id": None,
            "volume_items": [], "volume_id": None,
            "data_files": self.session.dataDirFiles(), "data_file": None,
            "has_data_dir": self.session.dataDir is not None,
            "upload_limit_bytes": self.session.maxUploadBytes,
            "upload_limit_text": f"{self.options.max_upload_mb:g} MB",
            "drr_methods": list(DRR_METHODS),
            "model_items": self._modelItems(),
            "job_running": False, "job_name": "", "job_progress": 0, "job_indeterminate": False,
            "job_text": "", "job_cancelling": False,
            "seq_items": [], "seq_id": None, "seq_labels": [], "seq_index": 0, "seq_max": 0,
            "seq_shown": "", "volume_rendering": not self._softwareRendering(),
            "table_title": "", "table_columns": [], "table_rows": [],
            "drr_zip_name": "", "outputs_zip_name": "",
            "server_info": self._serverInfo(),
        })

    def _serverInfo(self) -> str:
        o = self.options
        where = "this machine only" if is_loopback(o.host) else f"{o.host}: every machine that can reach it"
        return (f"Listening on {where}. Uploads up to {o.max_upload_mb:g} MB. "
                + ("Files under the data folder can be opened." if o.data_dir else
                   "No server folder is open to the page (--data-dir)."))

    def _modelItems(self):
        return [{"title": name or "default model", "value": name} for name in self.session.modelChoices()]

    def _refreshInputs(self):
        s = self.state
        s.ct_items = [{"title": i.label, "value": i.id} for i in self.session.inputsOfKind(KIND_CT)]
        s.cxr_items = [{"title": i.label, "value": i.id} for i in self.session.inputsOfKind(KIND_RADIOGRAPH)]
        volumes = [{"title": i.label, "value": i.id} for i in self.session.inputsOfKind(KIND_CT)]
        if self.outputs.get("volume") is not None:
            volumes.append({"title": self.outputs["volume"].GetName(), "value": self.outputs["volume"].GetID()})
        s.volume_items = volumes
        ids = {i["value"] for i in s.ct_items}
        if s.ct_id not in ids:
            s.ct_id = s.ct_items[-1]["value"] if s.ct_items else None
        ids = {i["value"] for i in s.cxr_items}
        if s.cxr_id not in ids:
            s.cxr_id = s.cxr_items[-1]["value"] if s.cxr_items else None

    def _error(self, message: str):
        self.state.error_message = message
        self.state.status_message = ""

    def _status(self, message: str):
        self.state.status_message = message
        self.state.error_message = ""

    def _guard(self, what: str, fn, *args):
        """Run ``fn``; any failure becomes one line on the page (and a log entry), never a
        traceback."""
        try:
            return fn(*args)
        except XrayWorldModelError as exc:
            self._error(userMessage(exc, what))
        except Exception as exc:       # noqa: BLE001
            log.error("%s failed:\n%s", what, traceback.format_exc())
            self._error(f"{what} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
        return None

    # ------------------------------------------------------------------ inputs
    def _added(self, item, verb="Loaded"):
        self._refreshInputs()
        node = item.node
        if item.kind == KIND_CT:
            self.state.ct_id = item.id
            self.showVolume(node)
            dims = node.GetImageData().GetDimensions()
            self._status(f"{verb} {item.label}: a CT of {dims[0]}x{dims[1]}x{dims[2]} voxels")
        else:
            self.state.cxr_id = item.id
            self.showRadiograph(node)
            dims = node.GetImageData().GetDimensions()
            self._status(f"{verb} {item.label}: a radiograph of {dims[0]}x{dims[1]} pixels")
        if item.notes:
            self.state.status_message += ". Note: " + " ".join(item.notes)
        self.state.flush()

    def loadStartInputs(self):
        """The command line's --ct, --cxr and --sample (trusted paths)."""
        for path in self.options.ct + self.options.cxr:
            item = self._guard(os.path.basename(path), self.session.loadPath, path, os.path.basename(str(path).rstrip("/")))
            if item is not None:
                self._added(item)
        if self.options.sample:
            item = self._guard("synthetic chest", self.session.loadSample)
            if item is not None:
                self._added(item, "Made")
        if not self.session.inputs and not self.state.error_message:
            self._status("Load a CT or a radiograph under Inputs.")

    def onSample(self):
        item = self._guard("synthetic chest", self.session.loadSample)
        if item is not None:
            self._added(item, "Made")

    def onUploadRefused(self, name, size):
        self._guard(str(name), self.session.checkUploadSize, str(name), size)

    def onUpload(self, files):
        if not files:
            return
        from trame.app.file_upload import ClientFile
        for f in files if isinstance(files, list) else [files]:
            upload = ClientFile(f)
            name = upload.name or "upload"
            try:        # the size the browser declares, before the content is looked at
                self.session.checkUploadSize(name, upload.size or 0)
            except XrayWorldModelError as exc:
                return self._error(str(exc))
            item = self._guard(name, self.session.loadUpload, name, upload.content)
            if item is None:
                return
            self._added(item, "Uploaded")

    def onOpenDataFile(self):
        choice = self.state.data_file
        item = self._guard(str(choice), self.session.loadDataDirFile, choice)
        if item is not None:
            self._added(item, "Opened")

    def onCtChosen(self, ct_id, **_):
        item = self.session.inputs.get(ct_id or "")
        if item is not None and item.node is not self.shownVolume:
            self.showVolume(item.node)

    def onCxrChosen(self, cxr_id, **_):
        item = self.session.inputs.get(cxr_id or "")
        if item is not None:
            self.showRadiograph(item.node)

    def onVolumeChosen(self, volume_id, **_):
        node = self.slicer.scene.GetNodeByID(volume_id) if volume_id else None
        if node is not None and node is not self.shownVolume:
            self.showVolume(node)

    # ------------------------------------------------------------------ jobs
    def _jobStart(self, name: str):
        s = self.state
        with s:
            s.job_running, s.job_name, s.job_progress, s.job_text = True, name, 0, "starting"
            s.job_indeterminate, s.job_cancelling = False, False
            self._status(f"{name}: running")

    def _jobProgress(self, fraction, text):
        s = self.state
        if fraction is None:
            s.job_indeterminate = True
        else:
            s.job_indeterminate, s.job_progress = False, int(round(100 * fraction))
        if text:
            s.job_text = text
        s.flush()

    def _jobEnd(self):
        s = self.state
        s.job_running, s.job_cancelling, s.job_indeterminate = False, False, False
        self._cancel, self._process = None, None

    def onCancel(self):
        if self._cancel is not None:
            self.state.job_cancelling = True
            self.state.job_text = "cancelling..."
            self._cancel()

    def _claim(self, what: str, makeRequest, *args):
        """Check a job's values and mark the job as running, or say (on the page, now) why
        not: another job runs, or a value is wrong."""
        with self.state:
            if self.state.job_running:
                self._error("A job is running: wait for it or cancel it.")
                return None
            made = self._guard(what, makeRequest, *args)
            if made is not None:
                self.state.job_running = True
            return made

    async def runDRRs(self):
        s = self.state
        request = self._claim("DRRs", self.session.drrRequest, s.ct_id, s.drr_angles, s.drr_rows,
                              s.drr_cols, s.drr_spacing, s.drr_sdd, s.drr_sod, s.drr_method)
        if request is None:
            return
        n = request["geometry"].n_angles
        self._jobStart(f"DRRs at {n} angle{'s' if n != 1 else ''}")
        stop = threading.Event()
        self._cancel = stop.set
        latest = {"fraction": 0.0, "text": "preparing the CT"}

        def progress(fraction, text):
            latest.update(fraction=fraction, text=text)
            return not stop.is_set()

        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, self.session.renderDRRs, request, progress)
        try:
            while not future.done():
                await asyncio.wait([future], timeout=0.3)
                with self.state:
                    self._jobProgress(latest["fraction"], latest["text"])
            rendered = future.result()
        except CancelledError:
            with self.state:
                self._jobEnd()
                self._status("DRRs cancelled; the scene is unchanged.")
            return
        except Exception as exc:       # noqa: BLE001
            with self.state:
                self._jobEnd()
                self._guard("DRRs", self._raise, exc)
            return
        with self.state:
            seq = self._guard("DRRs", self.session.addDRRs, request, rendered)
            self._jobEnd()
            if seq is not None:
                self._refreshInputs()
                self.showSequence(seq)
                s.drr_zip_name = f"{seq.GetName().replace(' ', '_')}.zip"
                self._status(f"{seq.GetNumberOfDataNodes()} DRRs in '{seq.GetName()}'")

    @staticmethod
    def _raise(exc):
        raise exc           # re-raised inside _guard, which turns it into one line

    async def runInference(self):
        s = self.state
        made = self._claim("Inference", self.session.inferenceRequest, s.cxr_id, s.inf_model,
                           s.inf_views, s.inf_volume, s.inf_pixel_spacing, s.inf_magnification)
        if made is None:
            return
        job, folder = made
        cxrId = s.cxr_id
        self._jobStart(job.name)
        cancelled = {"yes": False}
        output = []
        try:
            proc = await asyncio.create_subprocess_exec(
                *job.commandLine, env=job.fullEnvironment(), stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            with self.state:
                self._jobEnd()
                self._error(f"Inference could not start: {exc}")
            return
        self._process = proc

        def cancel():
            cancelled["yes"] = True
            if proc.returncode is None:
                proc.terminate()
        self._cancel = cancel

        async def read():
            while True:
                line = await proc.stdout.readline()
                if not line:
                    return
                text = line.decode("utf-8", "replace")
                output.append(text)
                for part in text.replace("\r", "\n").splitlines():
                    fraction = jobs.progressFromLine(part)
                    if fraction is not None:
                        with self.state:
                            self._jobProgress(fraction, part.strip()[:80])

        reader = asyncio.ensure_future(read())
        started = time.monotonic()
        while proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), timeout=0.5)
            except asyncio.TimeoutError:
                pass
            fraction, text = job.progress()
            with self.state:
                if not s.job_cancelling:
                    self._jobProgress(fraction, f"{text} ({time.monotonic() - started:.0f} s)")
            if cancelled["yes"] and proc.returncode is None:
                await self._stopProcess(proc)
        await reader
        with self.state:
            self._jobEnd()
            if cancelled["yes"]:
                self._status("Inference cancelled; the scene is unchanged.")
            elif proc.returncode != 0:
                self._error("Inference failed: " + self.session.jobFailure("".join(output), proc.returncode))
            else:
                outputs = self._guard("Inference outputs", self.session.loadInference, job, cxrId)
                if outputs is not None:
                    self.showInference(outputs, job.outputs)

    @staticmethod
    async def _stopProcess(proc, grace: float = 5.0):
        try:
            await asyncio.wait_for(proc.wait(), timeout=grace)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()

    # ------------------------------------------------------------------ results
    def showSequence(self, seq):
        browser = self.session.core.browserForSequence(seq)
        if browser is None:
            return
        self.browser, self.sequence = browser, seq
        n = seq.GetNumberOfDataNodes()
        unit = seq.GetIndexUnit() or ""
        s = self.state
        items = [i for i in s.seq_items if i["value"] != seq.GetID()]
        s.seq_items = items + [{"title": seq.GetName(), "value": seq.GetID()}]
        s.seq_id = seq.GetID()
        s.seq_labels = [f"{seq.GetNthIndexValue(i)} {unit}".strip() for i in range(n)]
        s.seq_max = max(n - 1, 0)
        s.seq_index = int(browser.GetSelectedItemNumber())
        self._showItem()

    def onSequenceChosen(self, seq_id, **_):
        seq = self.slicer.scene.GetNodeByID(seq_id) if seq_id else None
        if seq is not None and seq is not self.sequence:
            self.showSequence(seq)

    def onSequenceIndex(self, seq_index, **_):
        if self.browser is None or self.sequence is None:
            return
        index = max(0, min(int(seq_index or 0), self.sequence.GetNumberOfDataNodes() - 1))
        if index != self.browser.GetSelectedItemNumber():
            self.browser.SetSelectedItemNumber(index)
            self.sequencesLogic.UpdateProxyNodesFromSequences(self.browser)
        self._showItem()

    def _showItem(self):
        """The browser's current item in the X-ray view; its label confirms it on the page."""
        index = int(self.browser.GetSelectedItemNumber())
        self.showRadiograph(self.browser.GetProxyNode(self.sequence))
        labels = self.state.seq_labels or []
        self.state.seq_shown = labels[index] if 0 <= index < len(labels) else ""

    def showInference(self, outputs: dict, folder):
        self.outputs = dict(outputs, folder=folder)
        s = self.state
        self._refreshInputs()
        self.showVolume(outputs["volume"])
        if outputs.get("views") is not None:
            self.showSequence(outputs["views"])
        columns, rows = self.session.tableContent(outputs["table"])
        s.table_title, s.table_columns, s.table_rows = outputs["table"].GetName(), columns, rows
        s.outputs_zip_name = f"{outputs['volume'].GetName().replace(' ', '_')}_outputs.zip"
        ncc = (outputs.get("results") or {}).get("consistency", {}).get("ncc")
        self._status(f"Inference done: '{outputs['volume'].GetName()}', table '{s.table_title}'"
                     + ("" if ncc is None else f" (consistency {ncc:.3f})"))

    # ------------------------------------------------------------------ downloads
    def downloadDRRs(self):
        seq = None
        for item in self.state.seq_items:
            node = self.slicer.scene.GetNodeByID(item["value"])
            if node is not None and node.GetAttribute("Xray2Xray.Kind") == "DRRSequence":
                seq = node
        if self.sequence is not None and self.sequence.GetAttribute("Xray2Xray.Kind") == "DRRSequence":
            seq = self.sequence
        if seq is None:
            return self._error("No DRRs to save: generate them first.")
        made = self._guard("Save DRRs", self.session.drrStackZip, seq)
        return self.server.protocol.addAttachment(made[1]) if made else None

    def downloadOutputs(self):
        if not self.outputs.get("folder"):
            return self._error("No inference outputs to save: run inference first.")
        made = self._guard("Save outputs", self.session.outputsZip, self.outputs["folder"],
                           self.outputs["volume"].GetName())
        return self.server.protocol.addAttachment(made[1]) if made else None

    # ------------------------------------------------------------------ wiring
    def _safe(self, what: str, fn):
        """``fn`` as a page callback: whatever it raises ends as one line on the page (and the
        traceback in the server's log), never as a trace sent to the browser."""
        def report(exc):
            log.error("%s failed:\n%s", what, traceback.format_exc())
            with self.state:
                if self._cancel is None:
                    self.state.job_running = False
                self._error(f"{what} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")

        if asyncio.iscoroutinefunction(fn):
            async def wrapped(*args, **kwargs):
                try:
                    return await fn(*args, **kwargs)
                except Exception as exc:   # noqa: BLE001
                    report(exc)
        else:
            def wrapped(*args, **kwargs):
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:   # noqa: BLE001
                    report(exc)
        return wrapped

    def _inBackground(self, what: str, job):
        """A trigger that starts ``job`` and returns at once: the server answers a browser's
        messages one after the other, so a trigger that waited for a job would hold back
        Cancel and everything else until the job ends."""
        def start():
            task = asyncio.ensure_future(self._safe(what, job)())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return start

    def _bind(self):
        for name, what, fn in (("sample", "Synthetic chest", self.onSample),
                               ("upload", "Upload", self.onUpload),
                               ("upload_refused", "Upload", self.onUploadRefused),
                               ("open_data_file", "Open", self.onOpenDataFile),
                               ("run_drrs", "DRRs", self._inBackground("DRRs", self.runDRRs)),
                               ("run_inference", "Inference", self._inBackground("Inference", self.runInference)),
                               ("cancel_job", "Cancel", self.onCancel),
                               ("download_drrs", "Save DRRs", self.downloadDRRs),
                               ("download_outputs", "Save outputs", self.downloadOutputs)):
            self.server.trigger(name)(self._safe(what, fn))
        for key, fn in (("ct_id", self.onCtChosen), ("cxr_id", self.onCxrChosen),
                        ("volume_id", self.onVolumeChosen), ("seq_id", self.onSequenceChosen),
                        ("volume_rendering", self._apply3dMode),
                        ("seq_index", self.onSequenceIndex)):
            self.state.change(key)(self._safe("Showing it", fn))
        self.ctrl.on_server_ready.add(self._onReady)

    def _onReady(self, **_):
        log.info("serving %.1f s after start", time.monotonic() - self.started)

        async def start():
            await asyncio.sleep(0)
            with self.state:
                self.loadStartInputs()
            log.info("inputs loaded %.1f s after start", time.monotonic() - self.started)
            loop = asyncio.get_running_loop()
            names = await loop.run_in_executor(None, self.session.loadModelNames)
            if names:
                with self.state:
                    self.state.model_items = self._modelItems()
        asyncio.ensure_future(start())

    # ------------------------------------------------------------------ page
    def _buildUi(self):
        from trame.widgets import html
        from trame.widgets import vuetify3 as v3
        from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout

        with SinglePageWithDrawerLayout(self.server, width=DRAWER_WIDTH) as ui:
            self.ui = ui
            ui.title.set_text("Xray2Xray")
            with ui.toolbar:
                v3.VSpacer()
                html.Div("{{ server_info }}", classes="text-caption mr-4", id="server-info")
            with ui.drawer:
                with html.Div(classes="pa-2", style="font-size: 0.9rem"):
                    v3.VAlert(v_if="error_message", type="error", density="compact", closable=True,
                              text=("error_message",), id="error-message", classes="mb-2",
                              **{"click:close": "error_message = ''"})
                    v3.VAlert(v_if="status_message", type="info", density="compact", variant="tonal",
                              text=("status_message",), id="status-message", classes="mb-2")
                    self._inputsPanel(v3, html)
                    self._drrPanel(v3, html)
                    self._inferencePanel(v3, html)
                    self._jobPanel(v3, html)
                    self._viewsPanel(v3, html)
                    self._resultsPanel(v3, html)
            with ui.content:
                with html.Div(id="views", style="height: 100%; width: 100%"):
                    self.layout.initialize_layout_grid(ui)

    @staticmethod
    def _section(v3, title):
        return v3.VCard(title=title, variant="outlined", density="compact", classes="mb-2")

    def _inputsPanel(self, v3, html):
        with self._section(v3, "Inputs"):
            with v3.VCardText():
                v3.VFileInput(
                    id="upload-input", label=("`Upload a CT or radiograph (at most ${upload_limit_text})`",),
                    density="compact", hide_details=True, prepend_icon="mdi-upload", show_size=True,
                    disabled=("job_running",),
                    change=("(f => f && f.size > upload_limit_bytes ? trigger('upload_refused', [f.name, f.size]) "
                            ": trigger('upload', [$event.target.files]))($event.target.files[0])"))
                with html.Div(v_if="has_data_dir", classes="d-flex align-center mt-2"):
                    v3.VSelect(id="data-file", label="File in the data folder", items=("data_files",),
                               v_model=("data_file",), density="compact", hide_details=True)
                    v3.VBtn("Open", id="open-data-file", click="trigger('open_data_file')",
                            disabled=("!data_file || job_running",), classes="ml-2", size="small")
                v3.VBtn("Synthetic chest", id="load-sample", click="trigger('sample')", size="small",
                        classes="mt-2", prepend_icon="mdi-human", disabled=("job_running",))

    def _drrPanel(self, v3, html):
        with self._section(v3, "DRRs from a CT"):
            with v3.VCardText():
                v3.VSelect(id="ct-select", label="CT", items=("ct_items",), v_model=("ct_id",),
                           density="compact", hide_details=True)
                v3.VTextField(id="drr-angles", label="Angles (deg; 0 PA, 90 left lateral)",
                              v_model=("drr_angles",), density="compact", hide_details=True, classes="mt-2")
                with html.Div(classes="d-flex mt-2"):
                    v3.VTextField(id="drr-rows", label="Rows", v_model=("drr_rows",), type="number",
                                  density="compact", hide_details=True, classes="mr-1")
                    v3.VTextField(id="drr-cols", label="Columns", v_model=("drr_cols",), type="number",
                                  density="compact", hide_details=True, classes="mr-1")
                    v3.VTextField(id="drr-spacing", label="Pixel (mm)", v_model=("drr_spacing",),
                                  type="number", density="compact", hide_details=True)
                with html.Div(classes="d-flex mt-2"):
                    v3.VTextField(id="drr-sdd", label="SDD (mm)", v_model=("drr_sdd",), type="number",
                                  density="compact", hide_details=True, classes="mr-1")
                    v3.VTextField(id="drr-sod", label="SOD (mm)", v_model=("drr_sod",), type="number",
                                  density="compact", hide_details=True, classes="mr-1")
                    v3.VSelect(id="drr-method", label="Method", items=("drr_methods",),
                               v_model=("drr_method",), density="compact", hide_details=True)
                v3.VBtn("Generate DRRs", id="generate-drrs", click="trigger('run_drrs')", color="primary",
                        size="small", classes="mt-2", disabled=("!ct_id || job_running",))

    def _inferencePanel(self, v3, html):
        with self._section(v3, "Inference from a radiograph"):
            with v3.VCardText():
                v3.VSelect(id="cxr-select", label="Radiograph", items=("cxr_items",), v_model=("cxr_id",),
                           density="compact", hide_details=True)
                v3.VSelect(id="inf-model", label="Model", items=("model_items",), v_model=("inf_model",),
                           density="compact", hide_details=True, classes="mt-2")
                with html.Div(classes="d-flex mt-2"):
                    v3.VTextField(id="inf-views", label="Views (deg)", v_model=("inf_views",),
                                  density="compact", hide_details=True, classes="mr-1")
                    v3.VTextField(id="inf-volume", label="Volume size", v_model=("inf_volume",),
                                  type="number", density="compact", hide_details=True)
                with html.Div(classes="d-flex mt-2"):
                    v3.VTextField(id="inf-pixel-spacing", label="Pixel spacing (mm)",
                                  v_model=("inf_pixel_spacing",), placeholder="from the image",
                                  persistent_placeholder=True, density="compact", hide_details=True,
                                  classes="mr-1")
                    v3.VTextField(id="inf-magnification", label="Magnification",
                                  v_model=("inf_magnification",), placeholder="from the image",
                                  persistent_placeholder=True, density="compact", hide_details=True)
                v3.VBtn("Run inference", id="run-inference", click="trigger('run_inference')",
                        color="primary", size="small", classes="mt-2", disabled=("!cxr_id || job_running",))

    def _jobPanel(self, v3, html):
        with self._section(v3, "Background job"):
            with v3.VCardText():
                html.Div("{{ job_running ? job_name : 'No job running.' }}", id="job-name")
                v3.VProgressLinear(model_value=("job_progress",), indeterminate=("job_indeterminate",),
                                   height=8, color="primary", classes="my-1", id="job-progress",
                                   active=("job_running",))
                html.Div("{{ job_running ? job_text : '' }}", classes="text-caption", id="job-text")
                v3.VBtn("Cancel", id="cancel-job", click="trigger('cancel_job')", size="small",
                        color="error", disabled=("!job_running || job_cancelling",), classes="mt-1")

    def _viewsPanel(self, v3, html):
        with self._section(v3, "Views"):
            with v3.VCardText():
                v3.VSelect(id="volume-select", label="Volume shown", items=("volume_items",),
                           v_model=("volume_id",), density="compact", hide_details=True)
                v3.VCheckbox(id="volume-rendering", v_model=("volume_rendering",), density="compact",
                             hide_details=True, label="Volume rendering in 3D (slow without a GPU)")
                v3.VSelect(id="seq-select", label="Sequence in the X-ray view", items=("seq_items",),
                           v_model=("seq_id",), density="compact", hide_details=True, classes="mt-2")
                with html.Div(classes="d-flex align-center mt-2", v_if="seq_labels.length"):
                    v3.VSlider(id="seq-slider", v_model=("seq_index",), min=0, max=("seq_max",), step=1,
                               hide_details=True, density="compact", classes="mr-2")
                    html.Span("{{ seq_shown }}", id="seq-label", style="min-width: 5em")

    def _resultsPanel(self, v3, html):
        with self._section(v3, "Results"):
            with v3.VCardText():
                html.Div("{{ table_title || 'Run inference to get the results table.' }}",
                         classes="text-caption", id="table-title")
                with v3.VTable(density="compact", id="results-table", v_if="table_rows.length",
                               classes="text-caption"):
                    with html.Thead():
                        with html.Tr():
                            html.Th("{{ c }}", v_for="(c, i) in table_columns", key="i")
                    with html.Tbody():
                        with html.Tr(v_for="(row, r) in table_rows", key="r"):
                            # long notes (a withheld score's reason) in three lines, all of
                            # it on hover
                            with html.Td(v_for="(cell, c) in row", key="c",
                                         style="word-break: break-word; vertical-align: top"):
                                html.Div("{{ cell }}", title=("cell",), style=(
                                    "c == 2 ? 'display: -webkit-box; -webkit-line-clamp: 3; "
                                    "-webkit-box-orient: vertical; overflow: hidden' : ''",))
                with html.Div(classes="d-flex mt-2"):
                    v3.VBtn("Save DRR stack", id="save-drrs", size="small", classes="mr-2",
                            disabled=("!drr_zip_name",), prepend_icon="mdi-download",
                            click="utils.download(drr_zip_name, trigger('download_drrs'), 'application/zip')")
                    v3.VBtn("Save outputs", id="save-outputs", size="small", prepend_icon="mdi-download",
                            disabled=("!outputs_zip_name",),
                            click="utils.download(outputs_zip_name, trigger('download_outputs'), 'application/zip')")

    # ------------------------------------------------------------------ life cycle
    def shutdown(self):
        """Stop a running job and remove the session's temporary files."""
        proc = self._process
        if proc is not None and proc.returncode is None:
            try:
                proc.terminate()
            except ProcessLookupError:
                pass
        self.session.close()


class _ClientGone(logging.Filter):
    """A browser tab closed while an answer was on its way: one line, not a traceback."""

    def filter(self, record):
        if record.exc_info and isinstance(record.exc_info[1], ConnectionResetError):
            return False
        message = record.getMessage()
        if "ClientConnectionResetError" in message and "Traceback" not in message:
            record.msg, record.args = "a browser closed its connection", ()
            record.levelno, record.levelname = logging.INFO, "INFO"
            return True
        return "Cannot write to closing transport" not in message and message != "Exception raised"


def main(argv=None) -> int:
    parser = build_web_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="xray2xray web: %(message)s")
    log.setLevel(logging.INFO)
    for name in ("wslink.protocol", "asyncio"):
        logging.getLogger(name).addFilter(_ClientGone())
    try:
        check_web_args(args)
    except XrayWorldModelError as exc:
        print(f"xray2xray web: error: {exc}", file=sys.stderr)
        return 2
    # trame reads sys.argv itself: it gets nothing of ours
    sys.argv = sys.argv[:1]
    started = time.monotonic()
    app = Xray2XrayWebApp(args, started=started)
    log.info("page built %.1f s after start", time.monotonic() - started)
    try:          # aiohttp stops the server on SIGINT and SIGTERM (its own handlers)
        app.server.start(host=args.host, port=args.port, open_browser=args.open_browser,
                         timeout=0, show_connection_info=True)
    except KeyboardInterrupt:
        pass
    finally:
        app.shutdown()
        log.info("stopped after %.0f s", time.monotonic() - started)
    return 0

"""``xray2xray web``: the Slicer module's workflow in a browser, on trame-slicer.

Two parts:

* **Session and launcher** (fast, any environment with slicer-core): the web front end's
  work without trame -- inputs and their security rules (upload limit, nothing outside
  ``--data-dir``, plain file names, one-line messages), DRR and inference requests, the
  results table, the downloads -- and the ``xray2xray web`` launcher (options, the checkout
  lookup, the loopback default).
* **In a real browser** (``slow``): ``xray2xray web --ct ../shared/data/chest_ct.nii.gz``
  started on a free port, driven by Playwright with Debian's ``chromium`` (no browser
  download): first view, loopback-only binding, DRRs at 0 and 90 deg seen in the X-ray view
  (pixel statistics of the screenshots), Cancel of long jobs, inference on the real CR with
  its table, the downloads, the upload limit, bad files, a path outside the data folder, and
  a clean stop. These need trame-slicer, whose ``standalone`` extra pins slicer-core 5.11:
  ``.ci/run`` runs them in a second virtualenv, ``.venv-web`` (README, "In a web browser").

Screenshots and measurements (time from launch to the first view, peak memory) go to
``Testing/artifacts/web/`` (git-ignored; CI keeps them as artefacts).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core provides the MRML layer")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not slicer-core", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "Xray2Xray"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

from XrayWorldModel import web as launcher  # noqa: E402
from XrayWorldModel.cli import main as cli_main  # noqa: E402
from Xray2XrayWeb import session as web_session  # noqa: E402
from Xray2XrayWeb.session import WebInputError, WebSession  # noqa: E402

ARTIFACTS = REPO / "Testing" / "artifacts" / "web"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
PNG_RADIOGRAPH = REPO / "docs" / "images" / "real_ct_drr_000.png"


# ============================================================================= session
@pytest.fixture
def session(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    shutil.copy(PNG_RADIOGRAPH, data / "sub" / "frontal.png")
    (data / "notes.txt").write_text("not an image\n")
    (data / ".hidden.png").write_bytes(PNG_RADIOGRAPH.read_bytes())
    outside = tmp_path / "outside.png"
    shutil.copy(PNG_RADIOGRAPH, outside)
    (data / "link-out.png").symlink_to(outside)
    s = WebSession(slicer.vtkMRMLScene(), dataDir=data, maxUploadBytes=100_000,
                   workDir=tmp_path / "work")
    yield s
    s.close()


def test_methods_are_the_packages():
    from XrayWorldModel.drr import METHODS
    assert web_session.DRR_METHODS == tuple(METHODS)


def test_data_dir_offers_its_files_and_nothing_else(session, tmp_path):
    assert session.dataDirFiles() == ["notes.txt", "sub/frontal.png"]   # no hidden file, no link out
    assert session.dataDirPath("sub/frontal.png") == session.dataDir / "sub" / "frontal.png"
    for bad in ("../outside.png", str(tmp_path / "outside.png"), "/etc/passwd", "link-out.png",
                "sub/../../outside.png", "", None, ["sub/frontal.png"]):
        with pytest.raises(WebInputError, match="not one of the files of the data folder"):
            session.dataDirPath(bad)
    item = session.loadDataDirFile("sub/frontal.png")
    assert item.kind == "radiograph" and item.label == "sub/frontal.png"
    no_dir = WebSession(slicer.vtkMRMLScene(), workDir=tmp_path / "w2")
    assert no_dir.dataDirFiles() == []
    with pytest.raises(WebInputError, match="--data-dir"):
        no_dir.dataDirPath("notes.txt")


def test_uploads_are_limited_and_named_plainly(session):
    content = PNG_RADIOGRAPH.read_bytes()
    assert len(content) < session.maxUploadBytes
    item = session.loadUpload("../../etc/evil name?.png", content)
    assert item.kind == "radiograph" and item.label == "evil name_.png"
    assert item.node.GetScene() is session.scene
    saved = list((session.workDir / "uploads").rglob("*.png"))
    assert [p.name for p in saved] == ["evil name_.png"]
    assert all(session.workDir in p.parents for p in saved)
    with pytest.raises(WebInputError, match=r"big\.nii\.gz: 195 kB is more than the upload limit of 98 kB"):
        session.loadUpload("big.nii.gz", b"\0" * 200_000)
    with pytest.raises(WebInputError, match="more than the upload limit"):
        session.checkUploadSize("big.dcm", 10**9)           # refused before anything is sent
    assert session.loadUpload("chunks.png", [content[:1000], content[1000:]]).kind == "radiograph"
    assert web_session.safeFileName("..\\..\\a.nii.gz") == "a.nii.gz"
    assert web_session.safeFileName("") == "upload" and web_session.safeFileName("...") == "upload"


@pytest.mark.parametrize("name, content, expected", [
    ("broken.nii.gz", b"not a nifti at all", "broken.nii.gz: "),
    ("notes.md", b"# hello\n", "notes.md: neither a CT nor a radiograph this page reads"),
    ("picture.png", b"\x89PNG\r\n\x1a\n garbage", "picture.png: "),
    ("slice.dcm", b"\0" * 128 + b"DICM" + b"\0" * 64, "slice.dcm: "),
])
def test_a_bad_file_gets_one_line_naming_it(session, name, content, expected):
    with pytest.raises(WebInputError) as info:
        session.loadUpload(name, content)
    message = str(info.value)
    assert message.startswith(expected), message
    assert "\n" not in message and "Traceback" not in message
    assert str(session.workDir) not in message, "a server path in the message"
    assert not list((session.workDir / "uploads").rglob(name)), "the refused file is kept"


def test_ct_drrs_table_and_downloads(session, tmp_path):
    from Xray2XrayLib import CancelledError
    sample = session.loadSample()
    assert sample.kind == "ct" and sample.label == "synthetic chest (Xray2Xray)"
    with pytest.raises(WebInputError, match="choose a CT first"):
        session.drrRequest("nope", "0", 32, 32, 8, 1800, 1500, "fast")
    with pytest.raises(WebInputError, match="DRR settings: .*angles"):
        session.drrRequest(sample.id, "0,x", 32, 32, 8, 1800, 1500, "fast")
    with pytest.raises(WebInputError, match="detector rows must be a whole number"):
        session.drrRequest(sample.id, "0", "32.5", 32, 8, 1800, 1500, "fast")
    with pytest.raises(WebInputError, match="method must be one of fast, exact"):
        session.drrRequest(sample.id, "0", 32, 32, 8, 1800, 1500, "magic")
    request = session.drrRequest(sample.id, "90,0", "32", "32", "8", "1800", "1500", "fast")
    n = session.scene.GetNumberOfNodes()
    with pytest.raises(CancelledError):
        session.renderDRRs(request, lambda fraction, text: False)
    assert session.scene.GetNumberOfNodes() == n, "a cancelled render changed the scene"
    seen = []
    rendered = session.renderDRRs(request, lambda f, t: seen.append(f) or True)
    assert seen[-1] == 1.0
    seq = session.addDRRs(request, rendered)
    assert seq.GetNumberOfDataNodes() == 2 and seq.GetNthIndexValue(0) == "0"
    proxy = [i for i in session.inputsOfKind("radiograph")]
    assert len(proxy) == 1 and proxy[0].label.endswith("(the view shown)")
    name, data = session.drrStackZip(seq)
    assert name == "SyntheticChest_DRR.zip"
    files = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
    assert {"SyntheticChest_DRR/SyntheticChest_DRR.nii.gz", "SyntheticChest_DRR/SyntheticChest_DRR.json"} <= files
    assert sum(f.endswith(".png") for f in files) == 2
    # a table node, read back as text whatever its rows are
    import vtk
    from slicer import vtkMRMLTableNode
    table = vtk.vtkTable()
    for title, values in (("Output", ["Consistency (NCC)", "Cardiovascular risk"]),
                          ("Value", ["0.8123", "withheld"])):
        column = vtk.vtkStringArray()
        column.SetName(title)
        for v in values:
            column.InsertNextValue(v)
        table.AddColumn(column)
    node = vtkMRMLTableNode()
    node.SetAndObserveTable(table)
    assert WebSession.tableContent(node) == (["Output", "Value"],
                                             [["Consistency (NCC)", "0.8123"], ["Cardiovascular risk", "withheld"]])


def test_inference_request_checks_before_anything_runs(session):
    radiograph = session.loadUpload("frontal.png", PNG_RADIOGRAPH.read_bytes())
    with pytest.raises(WebInputError, match="choose a radiograph first"):
        session.inferenceRequest(None, "", "90", 64)
    with pytest.raises(WebInputError, match="unknown model '/etc/passwd'"):
        session.inferenceRequest(radiograph.id, "/etc/passwd", "90", 64)
    with pytest.raises(WebInputError, match="Inference settings: volumeSize must be"):
        session.inferenceRequest(radiograph.id, "", "90", 8)
    session.models = ["xray2xray-demo"]
    job, folder = session.inferenceRequest(radiograph.id, "xray2xray-demo", "90,270", "64")
    assert job.name == "Inference on frontal.png"
    assert (folder / "radiograph.nrrd").is_file() and job.outputs == folder / "outputs"
    args = job.arguments
    assert args[args.index("--model") + 1] == "xray2xray-demo"
    assert args[args.index("--views") + 1] == "90,270" and args[args.index("--volume-size") + 1] == "64"
    assert "--pixel-spacing" not in args and "--magnification" not in args   # empty: the image's
    stated, _ = session.inferenceRequest(radiograph.id, "", "90", "64", "0.2", " 1.16 ")
    assert stated.arguments[-4:] == ["--pixel-spacing", "0.2", "--magnification", "1.16"]
    for spacing, mag, says in (("-1", "", "pixel spacing must be a positive"),
                               ("", "1.0", "magnification lies above 1"), ("x", "", "must be a number")):
        with pytest.raises(WebInputError, match=says):
            session.inferenceRequest(radiograph.id, "", "90", "64", spacing, mag)
    assert session.jobFailure("x\nxray2xray: error: bad radiograph\n", 2) == "bad radiograph"


# ============================================================================= launcher
def _parse(argv):
    return launcher.build_web_parser().parse_args(argv)


def test_defaults_are_safe():
    args = _parse([])
    assert args.host == "127.0.0.1" and launcher.is_loopback(args.host)
    assert args.data_dir is None and args.max_upload_mb == launcher.DEFAULT_MAX_UPLOAD_MB
    assert not launcher.is_loopback("0.0.0.0") and launcher.is_loopback("::1")


def test_options_reach_the_front_end_unchanged(tmp_path):
    argv = ["--ct", "a.nii.gz", "--ct", "b dir", "--cxr", "c.dcm", "--sample", "--data-dir", str(tmp_path),
            "--model", "xray2xray-demo", "--device", "cpu", "--host", "0.0.0.0", "--port", "0",
            "--max-upload-mb", "1.5", "--open-browser"]
    args = _parse(argv)
    assert vars(_parse(launcher.web_argv(args))) == vars(args)
    command = launcher.web_command(args)
    assert command[:3] == [sys.executable, "-m", "Xray2XrayWeb"]
    env = launcher.web_environment(launcher.web_app_dir())
    assert env["PYTHONPATH"].split(os.pathsep)[:2] == [str(MODULE_DIR), str(REPO)]


@pytest.mark.parametrize("argv, message", [
    (["--ct", "/no/such/ct.nii.gz"], "no such CT file or folder"),
    (["--cxr", "/no/such.dcm"], "no such radiograph file or folder"),
    (["--data-dir", "/no/such/folder"], "--data-dir is not a folder"),
    (["--port", "70000"], "--port must be in 0..65535"),
    (["--max-upload-mb", "0"], "--max-upload-mb must be positive"),
])
def test_bad_options_get_one_line(argv, message, capsys):
    assert cli_main(["web"] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_without_the_web_extra_it_says_what_to_install(monkeypatch, capsys):
    real = launcher.importlib.util.find_spec
    monkeypatch.setattr(launcher.importlib.util, "find_spec",
                        lambda name, *a: None if name == "trame_slicer" else real(name, *a))
    assert cli_main(["web"]) == 2
    assert 'pip install -e ".[web]"' in capsys.readouterr().err


def test_outside_a_checkout_it_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(launcher, "__file__", str(tmp_path / "site-packages" / "XrayWorldModel" / "web.py"))
    assert cli_main(["web"]) == 2
    assert "runs from a source checkout" in capsys.readouterr().err


def test_the_front_end_is_not_part_of_the_extension():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert "Xray2XrayWeb/" not in cmake.replace("The web front end (Xray2XrayWeb)", "")


# ============================================================================= in a browser
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int):
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids += [int(k) for k in task.read_text().split()]
        except OSError:
            pass
    return kids


def _tree(pid: int):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += _children(p)
    return out


def _status_kb(pid: int, key: str):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _role(cmdline: str) -> str:
    if "-m Xray2XrayWeb" in cmdline:
        return "web_app"
    if "XrayWorldModel.cli infer" in cmdline:
        return "inference_job"
    if "XrayWorldModel.cli models" in cmdline:
        return "models_list"
    if "-m XrayWorldModel web" in cmdline:
        return "launcher"
    return "other"


class PeakMemory(threading.Thread):
    """Peak resident memory of the server's processes, sampled every 0.2 s while it runs:
    per role (the launcher, the web app, its background jobs; VmHWM) and of all of them
    together (the largest sum of VmRSS seen). A job's process between fork and exec still
    shows the web app's command line and memory: it is left out."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peaks, self.total, self._halt = pid, {}, 0, threading.Event()

    def run(self):
        while not self._halt.is_set():
            total, web_app = 0, None
            for p in _tree(self.pid):
                role = _role(_cmdline(p))
                if role == "web_app":
                    if web_app is not None:
                        continue                  # a fork about to exec a job
                    web_app = p
                hwm, rss = _status_kb(p, "VmHWM"), _status_kb(p, "VmRSS")
                if hwm:
                    self.peaks[role] = max(self.peaks.get(role, 0), hwm)
                total += rss or 0
            self.total = max(self.total, total)
            self._halt.wait(0.2)

    def stop(self):
        self._halt.set()
        self.join(5)

    def summary(self) -> dict:
        out = {f"{role}_mb": round(kb / 1024) for role, kb in sorted(self.peaks.items())}
        out["all_processes_together_mb"] = round(self.total / 1024)
        return out


def _listening(port: int):
    """Local addresses listening on ``port`` (IPv4 and IPv6), from /proc/net."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:
                if len(address) == 8:
                    found.append(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]))
                else:
                    raw = bytes.fromhex(address)
                    found.append(socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))))
    return found


def _gray(png: bytes) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)


def _not_blank(png: bytes) -> dict:
    g = _gray(png)
    inner = g[g.shape[0] // 8: -g.shape[0] // 8, g.shape[1] // 8: -g.shape[1] // 8]
    return {"std": float(inner.std()), "mean": float(inner.mean()),
            "lit": float((inner > 40).mean()), "levels": int(len(np.unique(inner.astype(int))))}


@pytest.fixture(scope="module")
def web(shared_data, tmp_path_factory):
    """``xray2xray web`` on a free port with the real CT, the shared data folder and a 2 MB
    upload limit, and a headless chromium page on it; stopped at the end (the last test
    checks that it stops cleanly)."""
    pytest.importorskip("trame_slicer", reason="trame-slicer is not installed here; .ci/run runs "
                        "the browser tests in .venv-web (pip install -e '.[web,webtest]')")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the webtest extra)")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Debian's chromium is not installed ({CHROMIUM}; apt-get install chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_factory.mktemp("web-server")
    port = _free_port()
    env = dict(os.environ, TMPDIR=str(tmp), PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "XrayWorldModel", "web", "--ct", str(shared_data / "chest_ct.nii.gz"),
               "--data-dir", str(shared_data), "--port", str(port), "--max-upload-mb", "2",
               "--device", "cpu"]
    log = open(ARTIFACTS / "server.log", "w")
    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    memory = PeakMemory(proc.pid)
    memory.start()
    metrics = {"command": " ".join(["xray2xray"] + command[3:])}
    pw = sync_api.sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
    page = browser.new_page(viewport={"width": 1500, "height": 1000}, accept_downloads=True)
    state = {"proc": proc, "port": port, "page": page, "tmp": tmp, "metrics": metrics,
             "started": started, "memory": memory, "log": ARTIFACTS / "server.log"}
    try:
        deadline = time.monotonic() + 120
        while not _listening(port):
            assert proc.poll() is None, (ARTIFACTS / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the server did not listen within 120 s"
            time.sleep(0.2)
        page.goto(f"http://127.0.0.1:{port}/")
        metrics["launch_to_page_s"] = round(time.monotonic() - started, 1)
        yield state
    finally:
        browser.close()
        pw.stop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        memory.stop()
        metrics["peak_rss"] = memory.summary()
        log.close()
        (ARTIFACTS / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def _text(page, selector: str) -> str:
    element = page.query_selector(selector)
    return element.inner_text() if element else ""


def _wait_text(page, selector: str, needle: str, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = _text(page, selector)
        if needle in text:
            return text
        error = _text(page, "#error-message")
        assert not error or needle in error, f"waiting for {needle!r} in {selector}, got the error {error!r}"
        time.sleep(0.25)
    raise AssertionError(f"{needle!r} did not appear in {selector} within {timeout} s "
                         f"(it shows {_text(page, selector)!r})")


def _view(page, index: int):
    """The views in layout order: 3D, X-ray, axial, coronal, sagittal."""
    return page.locator(".remote-controlled-area").nth(index)


def _settled(page, index: int, differs_from: bytes = None, timeout: float = 90.0,
             path: str = None) -> bytes:
    """A screenshot of view ``index`` once its picture has settled (two frames in a row
    alike) and, with ``differs_from``, once it is not that picture any more (rendering on
    the server's CPU takes a few seconds)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        png = _view(page, index).screenshot()
        gray = _gray(png)
        changed = differs_from is None or np.abs(gray - _gray(differs_from)).mean() > 3
        if changed and last is not None and np.abs(gray - last).mean() < 0.5:
            if path:
                Path(path).write_bytes(png)
            return png
        assert time.monotonic() < deadline, f"view {index} did not settle on a new picture"
        last = gray
        time.sleep(0.5)


def _set(page, key: str, value):
    page.evaluate("([k, v]) => window.trame.state.set(k, v)", [key, value])


def _choose(page, select_id: str, option: str):
    page.locator(f"#{select_id}").locator("xpath=ancestor::div[contains(@class, 'v-field')][1]").click()
    page.locator(".v-overlay--active .v-list-item", has_text=option).first.click()


def _no_traceback(page):
    assert "Traceback" not in page.content()


@pytest.mark.slow
def test_first_view_and_loopback_only(web):
    page, metrics = web["page"], web["metrics"]
    _wait_text(page, "#status-message", "Loaded chest_ct.nii.gz: a CT of 512x512x133 voxels")
    deadline = time.monotonic() + 60
    while True:                                   # the CT drawn in the axial view
        stats = _not_blank(_view(page, 2).screenshot())
        if stats["std"] > 20 and stats["lit"] > 0.2:
            break
        assert time.monotonic() < deadline, f"the axial view stays blank: {stats}"
        time.sleep(0.25)
    metrics["launch_to_first_view_s"] = round(time.monotonic() - web["started"], 1)
    page.screenshot(path=str(ARTIFACTS / "01_ct_loaded.png"))
    assert _listening(web["port"]) == ["127.0.0.1"]
    assert "this machine only" in _text(page, "#server-info")


@pytest.mark.slow
def test_drrs_at_0_and_90_deg_are_seen(web):
    page, metrics = web["page"], web["metrics"]
    _choose(page, "ct-select", "chest_ct.nii.gz")
    page.fill("#drr-angles", "0,90")
    t = time.monotonic()
    page.click("#generate-drrs")
    _wait_text(page, "#status-message", "2 DRRs in 'chest_ct DRR'", timeout=240)
    metrics["drr_0_90_s"] = round(time.monotonic() - t, 1)
    _wait_text(page, "#seq-label", "0 deg")
    shots = {"0 deg": _settled(page, 1, path=str(ARTIFACTS / "02_drr_000.png"))}
    three_d = {"0 deg": _settled(page, 0, path=str(ARTIFACTS / "02_3d_000.png"))}
    _set(page, "seq_index", 1)                   # the sequence slider
    _wait_text(page, "#seq-label", "90 deg")
    shots["90 deg"] = _settled(page, 1, differs_from=shots["0 deg"], path=str(ARTIFACTS / "02_drr_090.png"))
    for label, png in shots.items():
        stats = _not_blank(png)
        assert stats["std"] > 20 and stats["lit"] > 0.3 and stats["levels"] > 50, (label, stats)
    difference = np.abs(_gray(shots["0 deg"]) - _gray(shots["90 deg"])).mean()
    assert difference > 10, f"the 0 and 90 deg views look the same ({difference:.1f})"
    # the 3D view shows the volume and the detector plane, which moves with the angle
    three_d["90 deg"] = _settled(page, 0, differs_from=three_d["0 deg"], path=str(ARTIFACTS / "02_3d_090.png"))
    assert all(_not_blank(png)["std"] > 15 for png in three_d.values())
    page.screenshot(path=str(ARTIFACTS / "02_page_drrs.png"))
    _no_traceback(page)


@pytest.mark.slow
def test_cancel_stops_a_long_job_and_the_page_recovers(web):
    page = web["page"]
    # DRRs: a worker thread, stopped between chunks of angles (exact method: ~0.5 s an angle)
    nodes = page.evaluate("() => window.trame.state.get('seq_items').length")
    page.fill("#drr-angles", ",".join(f"{a * 7.5:g}" for a in range(48)))
    _choose(page, "drr-method", "exact")
    page.click("#generate-drrs")
    _wait_text(page, "#job-text", "rendered 8 of 48", timeout=120)   # under way, with progress
    page.click("#cancel-job")
    _wait_text(page, "#status-message", "DRRs cancelled; the scene is unchanged.", timeout=60)
    assert page.is_enabled("#generate-drrs")
    assert page.evaluate("() => window.trame.state.get('seq_items').length") == nodes
    _choose(page, "drr-method", "fast")
    # inference: a background process, cancelled and gone
    _choose(page, "data-file", "chest_cr_pa.dcm")
    page.click("#open-data-file")
    _wait_text(page, "#status-message", "Opened chest_cr_pa.dcm: a radiograph of 1841x1955 pixels")
    page.fill("#inf-volume", "256")
    page.click("#run-inference")
    _wait_text(page, "#job-name", "Inference on chest_cr_pa.dcm")
    deadline = time.monotonic() + 30
    while not any(" infer " in _cmdline(p) for p in _tree(web["proc"].pid)):
        assert time.monotonic() < deadline, "no inference process started"
        time.sleep(0.2)
    page.click("#cancel-job")
    _wait_text(page, "#status-message", "Inference cancelled; the scene is unchanged.", timeout=60)
    assert not any(" infer " in _cmdline(p) for p in _tree(web["proc"].pid)), "the job process lives on"
    assert _text(page, "#job-name") == "No job running."
    assert page.is_enabled("#run-inference") and page.is_enabled("#generate-drrs")
    page.fill("#drr-angles", "0,90")


@pytest.mark.slow
def test_inference_on_the_real_radiograph(web):
    page, metrics = web["page"], web["metrics"]
    _choose(page, "cxr-select", "chest_cr_pa.dcm")
    page.fill("#inf-volume", "128")
    t = time.monotonic()
    page.click("#run-inference")
    _wait_text(page, "#status-message", "Inference done", timeout=300)
    metrics["inference_s"] = round(time.monotonic() - t, 1)
    rows = page.evaluate("() => Array.from(document.querySelectorAll('#results-table tbody tr'))"
                         ".map(r => Array.from(r.cells).map(c => c.innerText.trim()))")
    table = {r[0]: r[1:] for r in rows}
    value, _ = table["Consistency (NCC)"]
    assert 0.0 < float(value) <= 1.0
    scores = [k for k in table if k == "Cardiovascular risk" or k.startswith("Pathology: ")]
    assert len(scores) == 6
    for key in scores:
        value, note = table[key]
        if value.startswith("withheld"):
            assert note, f"{key}: withheld without a reason"
        else:
            assert 0.0 < float(value) < 1.0, (key, value)
    # the predicted view in the X-ray view, the volume in the slice views
    _wait_text(page, "#seq-label", "90 deg")
    assert _not_blank(_settled(page, 1, path=str(ARTIFACTS / "03_predicted_090.png")))["std"] > 5
    assert _not_blank(_settled(page, 3, path=str(ARTIFACTS / "03_volume_coronal.png")))["std"] > 5
    page.screenshot(path=str(ARTIFACTS / "03_page_inference.png"))
    # the picture for README: the CT and its lateral DRR, with the results beside them
    before = [_view(page, i).screenshot() for i in (0, 2)]
    _choose(page, "seq-select", "chest_ct DRR")
    _set(page, "seq_index", 1)
    _wait_text(page, "#seq-label", "90 deg")
    _choose(page, "volume-select", "chest_ct.nii.gz")
    _settled(page, 2, differs_from=before[1])     # the CT back in the slice views
    _settled(page, 0, differs_from=before[0])     # and in 3D
    _settled(page, 1)
    page.evaluate("() => document.querySelector('#results-table').scrollIntoView()")
    page.screenshot(path=str(ARTIFACTS / "web_drr_inference.png"))
    _no_traceback(page)


@pytest.mark.slow
def test_saving_the_drr_stack_and_the_outputs(web):
    page = web["page"]
    with page.expect_download() as info:
        page.click("#save-drrs")
    path = info.value.path()
    names = zipfile.ZipFile(path).namelist()
    assert info.value.suggested_filename == "chest_ct_DRR.zip"
    assert {"chest_ct_DRR/chest_ct_DRR.nii.gz", "chest_ct_DRR/chest_ct_DRR.json"} <= set(names)
    with page.expect_download() as info:
        page.click("#save-outputs")
    names = set(zipfile.ZipFile(info.value.path()).namelist())
    assert {"results.json", "volume.nii.gz", "views.nii.gz"} <= names
    results = json.loads(zipfile.ZipFile(info.value.path()).read("results.json"))
    assert results["format"] == "xray2xray-results"


@pytest.mark.slow
def test_uploads_bad_files_and_paths_outside_the_data_folder(web, tmp_path):
    page = web["page"]
    # over the limit: refused in the page before it is sent, with the limit named
    _set(page, "error_message", "")
    page.set_input_files("#upload-input", str(web_session_path("chest_cr_pa.dcm", web)))
    error = _wait_text(page, "#error-message", "upload limit")
    assert "chest_cr_pa.dcm: 6.9 MB is more than the upload limit of 2.0 MB" in error
    # a file that is no image: one line naming it
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file\n" * 10)
    _set(page, "error_message", "")
    page.set_input_files("#upload-input", str(bad))
    error = _wait_text(page, "#error-message", "broken.nii.gz: ")
    assert "\n" not in error.strip()
    page.screenshot(path=str(ARTIFACTS / "04_bad_file.png"))
    _no_traceback(page)
    # a good one within the limit
    _set(page, "error_message", "")
    page.set_input_files("#upload-input", str(PNG_RADIOGRAPH))
    _wait_text(page, "#status-message", "Uploaded real_ct_drr_000.png: a radiograph of 256x256 pixels")
    # a server path the page never offered, sent as if chosen
    _set(page, "error_message", "")
    _set(page, "data_file", "/etc/passwd")
    page.evaluate("() => window.trame.trigger('open_data_file')")
    _wait_text(page, "#error-message", "'/etc/passwd' is not one of the files of the data folder")
    _set(page, "error_message", "")
    _set(page, "data_file", "../../../etc/passwd")
    page.evaluate("() => window.trame.trigger('open_data_file')")
    _wait_text(page, "#error-message", "is not one of the files of the data folder")
    _no_traceback(page)


def web_session_path(name: str, web) -> Path:
    return Path(web["proc"].args[web["proc"].args.index("--data-dir") + 1]) / name


@pytest.mark.slow
def test_the_server_stops_cleanly(web):
    proc, tmp = web["proc"], web["tmp"]
    tree = _tree(proc.pid)
    proc.send_signal(signal.SIGTERM)              # to the launcher: passed on to the front end
    assert proc.wait(timeout=60) == 0
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{p}").exists() and _status_kb(p, "VmRSS") for p in tree):
        assert time.monotonic() < deadline, "a process of the server lives on"
        time.sleep(0.2)
    log = web["log"].read_text()
    assert "Traceback" not in log, log[-3000:]
    assert not list(tmp.glob("xray2xray-web-*")), "the session's temporary files are left"
    assert not _listening(web["port"])

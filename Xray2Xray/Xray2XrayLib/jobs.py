"""Background jobs of the Slicer module, described without Qt.

Long work (a folder of CTs to DRR stacks, inference, training, the model registry) runs in a separate
Python process running the package's own command line, ``python -m XrayWorldModel.cli ...``,
so Slicer's UI never freezes and Cancel is a plain process kill (the DRR and training
commands resume where they stopped when run again). A :class:`Job` holds the command line and
knows how to measure its progress from what the process writes to disk (finished DRR
sidecars, the training log), because the CLI draws progress bars only on a terminal.

The widget runs a :class:`Job` with ``qt.QProcess``; scripts and tests can use
:meth:`Job.run` (``subprocess``). Nothing here imports torch.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from XrayWorldModel.conventions import CT_VOLUME_SUFFIXES, check_stated_geometry, uncertainty_passes
from XrayWorldModel.errors import InputError

from .parameters import angleList, volumeSize as checkVolumeSize

DEVICES = ("auto", "cpu", "cuda")

#: ``xray2xray models`` sub-commands used by the models section. The registry
#: (``XrayWorldModel.weights``) is reached through the CLI only, never imported here.
MODELS_COMMANDS: Dict[str, Tuple[str, ...]] = {
    "list": ("models", "list", "--json"),    # JSON list of {name, version, cached, path, ...}
    "fetch": ("models", "fetch"),            # + NAME
    "import": ("models", "import"),          # + FILE
    "remove": ("models", "remove"),          # + NAME
    "path": ("models", "path"),              # [+ NAME]
}


# ----------------------------------------------------------------------------- environment
def packageParentDir() -> Path:
    """The folder holding the ``XrayWorldModel`` package (put on the child's PYTHONPATH)."""
    spec = importlib.util.find_spec("XrayWorldModel")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the XrayWorldModel package cannot be found on sys.path")
    return Path(list(spec.submodule_search_locations)[0]).resolve().parent


def pythonExecutable() -> str:
    """Slicer's ``PythonSlicer`` when running inside Slicer, else this interpreter."""
    exe = Path(sys.executable)
    if not exe.stem.lower().startswith("slicer"):   # plain Python, or PythonSlicer itself
        return sys.executable
    found = shutil.which("PythonSlicer")             # SlicerApp-real is no Python interpreter
    if found:
        return found
    candidate = exe.parent / ("PythonSlicer.exe" if os.name == "nt" else "PythonSlicer")
    return str(candidate) if candidate.exists() else sys.executable


def childEnvironment(device: str = "auto", threads: Optional[int] = None) -> Dict[str, str]:
    """Variables to add for a job process: the package on PYTHONPATH, unbuffered output."""
    env = {"PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
    parent = str(packageParentDir())
    old = os.environ.get("PYTHONPATH", "")
    env["PYTHONPATH"] = parent + (os.pathsep + old if old else "")
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    if threads:
        env["OMP_NUM_THREADS"] = str(int(threads))
    return env


def checkDevice(device: str) -> str:
    device = (device or "auto").strip().lower()
    if device not in DEVICES and not re.fullmatch(r"cuda:\d+", device):
        raise InputError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {device!r}")
    return device


# ----------------------------------------------------------------------------- jobs
@dataclass
class Job:
    """One background process: ``program arguments...`` plus extra environment variables.

    ``progress()`` returns (fraction in 0..1 or None when unknown, short text). ``outputs``
    names what the job writes (a folder or run directory) for the widget to open or load.
    """

    name: str
    arguments: List[str]
    program: str = field(default_factory=pythonExecutable)
    environment: Dict[str, str] = field(default_factory=dict)
    outputs: Optional[Path] = None
    progressProbe: Optional[Callable[[], Tuple[Optional[float], str]]] = None

    @property
    def commandLine(self) -> List[str]:
        return [self.program] + list(self.arguments)

    def progress(self) -> Tuple[Optional[float], str]:
        if self.progressProbe is None:
            return None, ""
        try:
            return self.progressProbe()
        except (OSError, ValueError):   # a file half-written at this instant
            return None, ""

    def fullEnvironment(self) -> Dict[str, str]:
        env = dict(os.environ)
        env.update(self.environment)
        return env

    def run(self, timeout: Optional[float] = None) -> subprocess.CompletedProcess:
        """Run to completion (scripts, tests): stdout and stderr captured as text."""
        return subprocess.run(self.commandLine, env=self.fullEnvironment(), capture_output=True,
                              text=True, timeout=timeout)


def cliArguments(*args: str) -> List[str]:
    return ["-m", "XrayWorldModel.cli"] + [str(a) for a in args]


def listCTs(folder) -> List[Path]:
    """CT files (NIfTI, NRRD, MetaImage) and DICOM series folders directly inside ``folder``."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError("is not a folder", folder)
    found = []
    for p in sorted(folder.iterdir()):
        name = p.name.lower()
        if p.is_file() and name.endswith(CT_VOLUME_SUFFIXES):
            found.append(p)
        elif p.is_dir() and any(c.is_file() for c in p.iterdir()):
            found.append(p)   # a DICOM series folder; the reader says if it is not one
    if not found:
        raise InputError("holds no CT files (.nii.gz, .nii, .nrrd, .mha, .mhd) or DICOM "
                         "series folders", folder)
    return found


def _completeStacks(outFolder: Path) -> int:
    n = 0
    for side in outFolder.glob("*.json"):
        try:
            if json.loads(side.read_text()).get("complete") is True:
                n += 1
        except (OSError, ValueError):
            continue
    return n


def drrFolderJob(inputFolder, outputFolder, angles,
                 detectorSize=(256, 256), pixelSpacing: float = 1.6, sdd: float = 1800.0,
                 sod: float = 1500.0, method: str = "fast", device: str = "auto",
                 png: bool = False) -> Job:
    """DRR stacks for every CT in ``inputFolder`` written to ``outputFolder`` (resumable).
    ``angles``: degrees, a list or text ("0,90"), in the order the stacks will hold them."""
    cts = listCTs(inputFolder)
    angles = angleList(angles, distinct=False)   # as ``xray2xray drr --angles`` takes them
    out = Path(outputFolder).expanduser()
    device = checkDevice(device)
    rows, cols = (int(v) for v in (detectorSize if len(detectorSize) == 2 else (detectorSize[0],) * 2))
    args = cliArguments("drr", *map(str, cts), "--out", str(out),
                        "--angles", ",".join(f"{float(a):g}" for a in angles),
                        "--detector", str(rows), str(cols), "--pixel-spacing", f"{float(pixelSpacing):g}",
                        "--sdd", f"{float(sdd):g}", "--sod", f"{float(sod):g}",
                        "--method", method, "--device", device)
    if len(cts) == 1:   # the CLI takes an existing folder as "write NAME.nii.gz in it"
        out.mkdir(parents=True, exist_ok=True)
    if png:
        args.append("--png")
    total = len(cts)

    def probe():
        done = _completeStacks(out) if out.is_dir() else 0
        return min(done, total) / total, f"{min(done, total)} of {total} CTs"

    return Job(name=f"DRRs for {total} CT{'s' if total != 1 else ''}", arguments=args,
               environment=childEnvironment(device), outputs=out, progressProbe=probe)


def _presetSteps(config: str) -> Optional[int]:
    path = Path(config)
    if not path.exists():
        path = packageParentDir() / "XrayWorldModel" / "configs" / f"{config}.json"
    try:
        return int(json.loads(path.read_text())["optim"]["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _lastStep(metrics: Path) -> int:
    step = 0
    if not metrics.exists():
        return 0
    with open(metrics, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 65536))
        tail = fh.read().decode("utf-8", "replace").splitlines()
    for line in tail:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            step = max(step, rec["step"])
    return step


def trainJob(dataSource, outDir, config: str = "cpu-small", steps: Optional[int] = None,
             device: str = "auto", resume: bool = False, overrides: Sequence[str] = ()) -> Job:
    """Train the world model on a CT folder / CSV manifest / ``phantom:N`` into ``outDir``."""
    device = checkDevice(device)
    src = str(dataSource)
    if not src.startswith("phantom:") and not Path(src).expanduser().exists():
        raise InputError("training data not found (a CT folder, a CSV manifest or phantom:N)", src)
    out = Path(outDir).expanduser()
    ov = [f"data.source={src}", f"run.out_dir={out}", f"run.device={device}"]
    if steps is not None:
        if int(steps) < 1:
            raise InputError(f"steps must be at least 1, got {steps}")
        ov.append(f"optim.steps={int(steps)}")
    ov += list(overrides)
    args = cliArguments("train", "--config", config, *ov)
    if resume:
        args.append("--resume")
    total = int(steps) if steps is not None else _presetSteps(config)

    def probe():
        step = _lastStep(out / "metrics.jsonl")
        if not total:
            return None, f"step {step}"
        return min(step, total) / total, f"step {step} of {total}"

    return Job(name="Training", arguments=args, environment=childEnvironment(device),
               outputs=out, progressProbe=probe)


INFER_OUTPUTS = ("views.nii.gz", "volume.nii.gz", "results.json")


def resolveAutoDevice() -> str:
    """What "auto" means for ``xray2xray infer`` (which takes cpu or cuda): "cuda" when
    torch sees a GPU, else "cpu". Imports torch, so it is called only for "auto"."""
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def inferJob(cxrPath, outDir, model=None, views=(90,), volumeSize: int = 128,
             device: str = "cpu", uncertainty: Optional[int] = None,
             pixelSpacing: Optional[float] = None, magnification: Optional[float] = None) -> Job:
    """``xray2xray infer CXR --out DIR``: predicted views, reconstructed volume, their std
    maps and ``results.json`` for one radiograph file (DICOM, PNG, JPEG, 2D
    NRRD/NIfTI/MHA), loaded afterwards with ``Xray2XrayCoreLogic.loadInferenceOutputs(outDir)``.
    ``views``: angles (degrees, a list or text "90,270") checked like
    ``Xray2XrayCoreLogic.runInference`` does; ``uncertainty``: ``--uncertainty N`` (0: no std
    maps; None: the CLI's default). ``pixelSpacing`` (mm at the detector) and
    ``magnification``: what the user knows of the image's geometry, over its header's
    (``--pixel-spacing``, ``--magnification``; None: the header's).

    Progress: the CLI prints nothing while the model runs, so the fraction is unknown (None)
    until the output files appear; ``results.json`` is written last and means done (a
    results.json already in ``outDir`` before the job counts only once it is rewritten).
    """
    cxr = Path(cxrPath).expanduser()
    if not cxr.is_file():
        raise InputError("no such radiograph file", cxr)
    device = checkDevice(device)
    if device == "auto":
        device = resolveAutoDevice()
    angles = angleList(views, "views", allowEmpty=True)
    volumeSize = checkVolumeSize(volumeSize)
    check_stated_geometry(pixelSpacing, magnification)
    out = Path(outDir).expanduser()
    args = cliArguments("infer", str(cxr), "--out", str(out),
                        "--views", ",".join(f"{a:g}" for a in angles),
                        "--volume-size", str(volumeSize), "--device", device)
    if uncertainty is not None:
        args += ["--uncertainty", str(uncertainty_passes(uncertainty))]
    if model:
        args += ["--model", str(model)]
    if pixelSpacing is not None:
        args += ["--pixel-spacing", f"{float(pixelSpacing):g}"]
    if magnification is not None:
        args += ["--magnification", f"{float(magnification):g}"]

    def stamp(path: Path):
        try:
            return path.stat().st_mtime_ns
        except OSError:
            return None

    before = {name: stamp(out / name) for name in INFER_OUTPUTS}

    def fresh(name: str) -> bool:
        now = stamp(out / name)
        return now is not None and now != before[name]

    def probe():
        if fresh("results.json"):
            return 1.0, "results written"
        if fresh("volume.nii.gz"):
            return 0.95, "writing the results"
        if fresh("views.nii.gz"):
            return 0.9, "writing the predicted views and volume"
        return None, "running the model"

    return Job(name=f"Inference on {cxr.name}", arguments=args,
               environment=childEnvironment(device), outputs=out, progressProbe=probe)


def modelsJob(action: str, *args: str) -> Job:
    """An ``xray2xray models ...`` command: list (JSON), fetch NAME, import FILE, remove NAME,
    path [NAME]."""
    if action not in MODELS_COMMANDS:
        raise InputError(f"unknown models action {action!r}; one of {', '.join(MODELS_COMMANDS)}")
    return Job(name=f"models {action}", arguments=cliArguments(*MODELS_COMMANDS[action], *args),
               environment=childEnvironment("cpu"))


def parseModels(stdout: str) -> List[dict]:
    """The JSON of ``xray2xray models list --json`` as a list of dicts."""
    text = stdout.strip()
    start = text.find("[")
    if start < 0:
        raise InputError("unexpected output from 'xray2xray models list --json': "
                         f"{text[:200]!r}")
    data = json.loads(text[start:])
    if not isinstance(data, list):
        raise InputError("'xray2xray models list --json' did not print a list")
    return [m for m in data if isinstance(m, dict) and m.get("name")]


def modelLabel(model: dict) -> str:
    """One line for the models list: name first (the widget takes the first word)."""
    state = "cached" if model.get("cached") else "not downloaded"
    desc = str((model.get("card") or {}).get("description", ""))
    text = f"{model['name']}  {model.get('version', '')}  [{model.get('source', '')}, {state}]"
    return f"{text}  {desc}".rstrip()


def removableModels(models: Sequence[dict]) -> List[str]:
    """Names of cached models that can be removed (not the ones shipped in the package)."""
    names = []
    for m in models:
        if m.get("cached") and m.get("source") != "package" and m["name"] not in names:
            names.append(m["name"])
    return names


# ----------------------------------------------------------------------------- output lines
_ERROR = re.compile(r"^xray2xray: error: (.*)$")
_TQDM = re.compile(r"(\d{1,3})%\|")
#: The CLI's plain progress line when its stderr is a pipe, as it is under Slicer:
#: ``xray2xray: DRR (fast) 72/360 views (20%), 13.9 views/s, ETA 21 s``.
_PROGRESS_LINE = re.compile(r"^xray2xray: .*\b\d+/\d+ \S+ \((\d{1,3})%\)")


def errorFromOutput(text: str) -> Optional[str]:
    """The CLI's one-line error (``xray2xray: error: ...``) in a job's output, if any."""
    for line in reversed(text.splitlines()):
        m = _ERROR.match(line.strip())
        if m:
            return m.group(1)
    return None


def progressFromLine(line: str) -> Optional[float]:
    """A fraction from a progress line of the child: the CLI's plain line (what it prints
    into a pipe) or a tqdm bar (``42%|``, what it draws on a terminal)."""
    m = _PROGRESS_LINE.match(line.strip()) or _TQDM.search(line)
    return None if m is None else min(int(m.group(1)), 100) / 100.0

"""``xray2xray web``: the Slicer module's workflow in a web browser.

The web front end is not part of this package. It is ``Xray2XrayWeb``, a sibling of the
Slicer module's ``Xray2XrayLib`` in the checkout's ``Xray2Xray/`` folder: it runs the same
Qt-free Slicer layer (MRML scenes, nodes, sequences) on trame-slicer, so it sits above the
package like the Slicer module does, and the package never imports it (the layer rule of
``Testing/test_architecture.py``).

This module is the one place where the package names it: ``xray2xray web`` checks its
arguments, finds the front end in the checkout this package was installed from
(``pip install -e ".[web]"``: ``<checkout>/Xray2Xray/Xray2XrayWeb``), and runs it as a
separate process, ``python -m Xray2XrayWeb ...`` with that folder on ``PYTHONPATH`` -- the
mirror image of the Slicer module running ``python -m XrayWorldModel.cli`` for its background
jobs. The options are defined once, here (``add_web_arguments``), and the front end parses
the same ones.

Security defaults: the server listens on 127.0.0.1 unless ``--host`` says otherwise; the
browser can open only files it uploads (at most ``--max-upload-mb``) and files under
``--data-dir``; paths given here on the command line are trusted (they are the operator's).
"""
from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import List

from .console import EXIT_INTERRUPTED, emit
from .errors import FileNotFoundInputError, InputError

#: The front end's module (run with ``python -m``) and the folder of the checkout holding it.
WEB_APP_MODULE = "Xray2XrayWeb"
SLICER_LAYER_FOLDER = "Xray2Xray"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MAX_UPLOAD_MB = 256.0
DEVICES = ("auto", "cpu", "cuda")
WEB_EXTRA_HINT = ('install the web extra from the checkout: pip install -e ".[web]" '
                  "(README, \"In a web browser\")")


DESCRIPTION = ("Serve the Xray2Xray Slicer module's workflow in a web browser (trame-slicer): "
               "load a CT or a radiograph, render DRRs placed where the detector was, run "
               "inference in the background, see the volume, the predicted views and the "
               "results table, and download them. Needs a source checkout with the web extra.")


def add_web_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``xray2xray web`` (shared by the launcher and the front end)."""
    inputs = p.add_argument_group("inputs loaded at start")
    inputs.add_argument("--ct", action="append", default=[], metavar="PATH",
                        help="a chest CT (NIfTI, NRRD, MHA/MHD or a DICOM series folder); repeatable")
    inputs.add_argument("--cxr", action="append", default=[], metavar="PATH",
                        help="a chest radiograph (DICOM CR/DX, PNG, JPEG, 2D NRRD/NIfTI); repeatable")
    inputs.add_argument("--sample", action="store_true",
                        help="the synthetic chest (the package's phantom; nothing is downloaded)")
    inputs.add_argument("--data-dir", metavar="DIR", default=None,
                        help="a folder whose files the browser may open (nothing else on this "
                             "machine is offered to it)")
    work = p.add_argument_group("work")
    work.add_argument("--model", default=None, metavar="NAME_OR_FILE",
                      help="the model inference uses by default (a registry name or a model "
                           "file); the page offers this and the registry's models")
    work.add_argument("--device", default="auto", choices=DEVICES,
                      help="where DRRs and inference run (default: auto, CUDA when available)")
    server = p.add_argument_group("server")
    server.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}: this machine only; "
                             "0.0.0.0 exposes the page, without any login, to every machine "
                             "that can reach this one)")
    server.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port to listen on (default {DEFAULT_PORT}; 0: any free port)")
    server.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, metavar="MB",
                        help=f"largest file the browser may upload (default {DEFAULT_MAX_UPLOAD_MB:g} MB)")
    server.add_argument("--open-browser", action="store_true",
                        help="open the page in this machine's web browser")
    return p


def build_web_parser(prog: str = "xray2xray web") -> argparse.ArgumentParser:
    """A stand-alone parser with the options above (the front end's ``python -m``)."""
    return add_web_arguments(argparse.ArgumentParser(prog=prog, description=DESCRIPTION))


def add_web_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("web", help="the Slicer module's workflow in a web browser "
                              "(trame-slicer; needs the [web] extra)", description=DESCRIPTION)
    add_web_arguments(p)
    p.set_defaults(func=run_web)
    return p


def web_argv(args) -> List[str]:
    """``args`` (parsed by :func:`add_web_arguments`) back as a command line."""
    argv: List[str] = []
    for path in args.ct:
        argv += ["--ct", str(path)]
    for path in args.cxr:
        argv += ["--cxr", str(path)]
    if args.sample:
        argv.append("--sample")
    if args.data_dir is not None:
        argv += ["--data-dir", str(args.data_dir)]
    if args.model is not None:
        argv += ["--model", str(args.model)]
    argv += ["--device", args.device, "--host", args.host, "--port", str(args.port),
             "--max-upload-mb", f"{args.max_upload_mb:g}"]
    if args.open_browser:
        argv.append("--open-browser")
    return argv


def check_web_args(args) -> None:
    """Clear errors for what can be checked before anything starts."""
    for what, paths in (("CT", args.ct), ("radiograph", args.cxr)):
        for path in paths:
            if not Path(path).expanduser().exists():
                raise FileNotFoundInputError(f"no such {what} file or folder", path)
    if args.data_dir is not None and not Path(args.data_dir).expanduser().is_dir():
        raise FileNotFoundInputError("--data-dir is not a folder", args.data_dir)
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be in 0..65535, got {args.port}")
    if not args.max_upload_mb > 0:
        raise InputError(f"--max-upload-mb must be positive, got {args.max_upload_mb:g}")
    if not str(args.host).strip():
        raise InputError("--host is empty")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def web_app_dir() -> Path:
    """The checkout folder holding the front end (``<checkout>/Xray2Xray``)."""
    folder = Path(__file__).resolve().parent.parent / SLICER_LAYER_FOLDER
    if not (folder / WEB_APP_MODULE / "__main__.py").is_file():
        raise InputError(f"the web front end ({SLICER_LAYER_FOLDER}/{WEB_APP_MODULE}) is not beside "
                         f"this XrayWorldModel package ({Path(__file__).resolve().parent}): "
                         "xray2xray web runs from a source checkout; " + WEB_EXTRA_HINT)
    return folder


def web_command(args) -> List[str]:
    """The front end's command line (``python -m Xray2XrayWeb ...``)."""
    return [sys.executable, "-m", WEB_APP_MODULE] + web_argv(args)


def web_environment(app_dir: Path) -> dict:
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parent.parent)
    old = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join([str(app_dir), package_parent] + ([old] if old else []))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_web(args) -> int:
    check_web_args(args)
    app_dir = web_app_dir()
    if importlib.util.find_spec("trame_slicer") is None:
        raise InputError("xray2xray web needs trame-slicer, which is not installed: " + WEB_EXTRA_HINT)
    if not is_loopback(args.host):
        emit(f"xray2xray web: warning: listening on {args.host}: anyone who can reach this "
             "machine can use the page (there is no login)")
    proc = subprocess.Popen(web_command(args), env=web_environment(app_dir))
    forward = lambda signum, frame: proc.send_signal(signum)   # noqa: E731
    previous = signal.signal(signal.SIGTERM, forward)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        # Ctrl-C in a terminal reaches the front end too; a SIGINT sent to this process alone
        # is passed on
        try:
            return proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)

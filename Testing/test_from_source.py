"""Running the Slicer module from a source checkout (README, "From source"): Slicer gets the
checkout's ``Xray2Xray/`` folder as a module path, and the module itself makes the
checkout's ``XrayWorldModel`` package importable (``Xray2Xray.sourceCheckoutRoot``).

The function is taken from the real module file. One test runs it in a fresh interpreter in
which the package is *not* importable otherwise (the editable install's finder removed), as
in a Slicer whose Python never saw ``pip install``.
"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("slicer", reason="slicer-core provides the MRML layer the module file imports")
from slicer_module import load_module_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODULE_FILE = REPO / "Xray2Xray" / "Xray2Xray.py"


@pytest.fixture
def module(monkeypatch):
    return load_module_file(monkeypatch)


def _touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_module_finds_this_checkout(module):
    assert module.SOURCE_CHECKOUT == REPO
    assert str(REPO) in sys.path


def test_checkout_layout_puts_the_checkouts_package_first(module, monkeypatch, tmp_path):
    """A checkout elsewhere: its package wins over any other copy (here: this repository's,
    installed in the test environment)."""
    root = tmp_path / "SlicerXray2Xray"
    module_file = _touch(root / "Xray2Xray" / "Xray2Xray.py")
    _touch(root / "XrayWorldModel" / "__init__.py", "WHERE = 'the other checkout'\n")
    _touch(root / "pyproject.toml")
    assert module.sourceCheckoutRoot(module_file) == root
    assert sys.path[0] == str(root)
    monkeypatch.delitem(sys.modules, "XrayWorldModel")
    importlib.invalidate_caches()
    spec = importlib.util.find_spec("XrayWorldModel")
    assert Path(spec.origin) == root / "XrayWorldModel" / "__init__.py"
    # a second call (the module reloaded) does not add it again
    assert module.sourceCheckoutRoot(module_file) == root
    assert sys.path.count(str(root)) == 1


def test_installed_layout_changes_nothing(module, tmp_path):
    """An installed extension: the package sits beside the module file (one scripted-modules
    folder, which Slicer already has on sys.path), even with a checkout-like folder above."""
    scripted = tmp_path / "lib" / "Slicer-5.13" / "qt-scripted-modules"
    module_file = _touch(scripted / "Xray2Xray.py")
    _touch(scripted / "XrayWorldModel" / "__init__.py")
    _touch(tmp_path / "lib" / "Slicer-5.13" / "XrayWorldModel" / "__init__.py")
    _touch(tmp_path / "lib" / "Slicer-5.13" / "pyproject.toml")
    before = list(sys.path)
    assert module.sourceCheckoutRoot(module_file) is None
    assert sys.path == before


@pytest.mark.parametrize("missing", ["package", "pyproject.toml"])
def test_not_a_checkout_changes_nothing(module, tmp_path, missing):
    module_file = _touch(tmp_path / "Xray2Xray" / "Xray2Xray.py")
    if missing != "package":
        _touch(tmp_path / "XrayWorldModel" / "__init__.py")
    if missing != "pyproject.toml":
        _touch(tmp_path / "pyproject.toml")
    before = list(sys.path)
    assert module.sourceCheckoutRoot(module_file) is None
    assert sys.path == before


_FRESH_SLICER_PYTHON = r"""
import ast, importlib, importlib.util, json, sys
from pathlib import Path
module_file = Path(sys.argv[1])
# a Python that never saw `pip install -e .`: no editable finder, the checkout not on sys.path
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != module_file.parents[1]]
importlib.invalidate_caches()
before = importlib.util.find_spec("XrayWorldModel")
# what Slicer does with an additional module path: the module folder on sys.path ...
sys.path.insert(0, str(module_file.parent))
# ... and what the module file runs at import (the function, taken from the real file)
tree = ast.parse(module_file.read_text())
source = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "sourceCheckoutRoot"]
namespace = {"Path": Path, "sys": sys, "__file__": str(module_file)}
exec(compile(ast.Module(body=source, type_ignores=[]), str(module_file), "exec"), namespace)
root = namespace["sourceCheckoutRoot"](str(module_file))
import XrayWorldModel
from XrayWorldModel.cli import build_parser
from Xray2XrayLib import jobs
print(json.dumps({"before": before is not None, "root": str(root),
                  "package": XrayWorldModel.__file__,
                  "child_pythonpath": jobs.childEnvironment("cpu")["PYTHONPATH"],
                  "commands": sorted(build_parser()._subparsers._group_actions[0].choices)}))
"""


def test_a_fresh_slicer_python_imports_the_checkouts_package(tmp_path):
    script = tmp_path / "fresh.py"
    script.write_text(_FRESH_SLICER_PYTHON)
    out = subprocess.run([sys.executable, str(script), str(MODULE_FILE)], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["before"] is False, "the package was importable before the module ran"
    assert found["root"] == str(REPO)
    assert Path(found["package"]) == REPO / "XrayWorldModel" / "__init__.py"
    # the background jobs (python -m XrayWorldModel.cli ...) get the checkout on PYTHONPATH
    assert found["child_pythonpath"].split(":")[0] == str(REPO)
    assert {"drr", "infer", "web"} <= set(found["commands"])

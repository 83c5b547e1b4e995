"""Static checks of the Slicer extension: layout, CMake lists, metadata, UI file, icons, and
that the module file imports nothing heavy at load time.

These need no Slicer and no Qt: the module file (Xray2Xray/Xray2Xray.py) imports ``qt`` and
``slicer.ScriptedLoadableModule``, which slicer-core lacks, so it is checked by reading its
syntax tree rather than by importing it.
"""
import ast
import fnmatch
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "Xray2Xray"
MODULE_FILE = MODULE_DIR / "Xray2Xray.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "Xray2Xray.ui"
HEAVY = ("torch", "monai", "numba", "XrayWorldModel", "Xray2XrayLib", "SimpleITK", "pydicom",
         "skimage", "scipy", "safetensors", "numpy")
CACHE_PARTS = ("__pycache__",)
CACHE_SUFFIXES = (".pyc", ".nbi", ".nbc")


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs Python 3.11+ or tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _load_time_imports(tree: ast.Module):
    """Modules imported when the file is imported: module level, and inside top-level
    if/try/with blocks and class bodies (which run at import), not inside functions."""
    found = []

    def visit(body):
        for node in body:
            if isinstance(node, ast.Import):
                found.extend((a.name, node.lineno) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                found.append((("." * node.level) + (node.module or ""), node.lineno))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    visit(getattr(node, field, []) or [])
    visit(tree.body)
    return found


def _is_heavy(name: str) -> bool:
    return any(name == h or name.startswith(h + ".") for h in HEAVY)


# ----------------------------------------------------------------------------- module file
def test_module_file_imports_nothing_heavy_at_load_time():
    imports = _load_time_imports(_tree(MODULE_FILE))
    assert any(name == "slicer" for name, _ in imports)   # the walk sees real imports
    heavy = [f"{name} (line {line})" for name, line in imports if _is_heavy(name)]
    assert not heavy, f"Xray2Xray.py imports at load time: {heavy}"


def test_lib_imports_nothing_heavy_at_load_time():
    for path in sorted((MODULE_DIR / "Xray2XrayLib").glob("*.py")):
        names = [n for n, _ in _load_time_imports(_tree(path))]
        bad = [n for n in names if _is_heavy(n) and not n.startswith(("XrayWorldModel", "numpy"))]
        bad += [n for n in names if n.startswith(("XrayWorldModel.drr", "XrayWorldModel.io",
                                                  "XrayWorldModel.models", "XrayWorldModel.train",
                                                  "XrayWorldModel.weights"))]
        bad += [n for n in names if n in ("qt", "ctk") or n.startswith(("qt.", "slicer.util"))]
        assert not bad, f"{path.name} imports at load time: {bad}"


def _classes(tree):
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}


def _only_forwards_to_core(function: ast.FunctionDef) -> bool:
    """A method whose body, but for its docstring and a dependency check, is one
    ``return self.core.NAME(...)``."""
    body = [st for st in function.body if not (
        isinstance(st, ast.Expr) and (isinstance(st.value, ast.Constant)
                                      or ast.unparse(st.value) == "self.ensureDependencies()"))]
    return len(body) == 1 and isinstance(body[0], ast.Return) and body[0].value is not None \
        and ast.unparse(body[0].value).startswith("self.core.")


def test_module_classes_and_metadata():
    tree = _tree(MODULE_FILE)
    classes = _classes(tree)
    bases = {name: [ast.unparse(b) for b in c.bases] for name, c in classes.items()}
    assert bases["Xray2Xray"] == ["ScriptedLoadableModule"]
    assert bases["Xray2XrayWidget"][0] == "ScriptedLoadableModuleWidget"
    assert bases["Xray2XrayLogic"] == ["ScriptedLoadableModuleLogic"]
    assert bases["Xray2XrayTest"] == ["ScriptedLoadableModuleTest"]
    assert [ast.unparse(d) for d in classes["Xray2XrayParameterNode"].decorator_list] == \
        ["parameterNodeWrapper"]
    assigned = {ast.unparse(t) for node in ast.walk(classes["Xray2Xray"])
                if isinstance(node, ast.Assign) for t in node.targets}
    for field in ("title", "categories", "dependencies", "contributors", "helpText",
                  "acknowledgementText"):
        assert f"self.parent.{field}" in assigned, f"module sets no {field}"
    # the logic exposes the Lib's core logic (its behaviour: test_slicer_lib.py) instead of
    # forwarding its methods one by one
    logic = classes["Xray2XrayLogic"]
    methods = {n.name for n in logic.body if isinstance(n, ast.FunctionDef)}
    assert {"__getattr__", "ensureDependencies", "getParameterNode"} <= methods
    forwarders = [n.name for n in logic.body
                  if isinstance(n, ast.FunctionDef) and _only_forwards_to_core(n)]
    assert not forwarders, f"methods that only forward to the core logic: {forwarders}"
    tests = {n.name for n in classes["Xray2XrayTest"].body if isinstance(n, ast.FunctionDef)}
    assert "runTest" in tests and any(t.startswith("test_") for t in tests)


# ----------------------------------------------------------------------------- UI file
def _ui():
    return ET.parse(UI_FILE).getroot()


def _parameters():
    cls = _classes(_tree(MODULE_FILE))["Xray2XrayParameterNode"]
    return {n.target.id: ast.unparse(n.annotation) for n in cls.body if isinstance(n, ast.AnnAssign)}


def test_ui_is_designer_xml():
    root = _ui()
    assert root.tag == "ui" and root.get("version") == "4.0"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    qt_classes = {c for c in used if c.startswith("Q")}
    assert used - qt_classes <= declared, f"undeclared custom widgets: {used - qt_classes - declared}"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names"
    # node selectors get the scene
    selectors = {w.get("name") for w in root.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    connected = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    assert selectors and selectors <= connected


def test_every_ui_name_the_widget_uses_exists():
    names = {w.get("name") for w in _ui().iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))
    assert used, "the widget uses no self.ui names?"
    assert used <= names, f"missing in the .ui: {sorted(used - names)}"


def test_ui_parameter_bindings_match_the_parameter_node():
    params = _parameters()
    widget_for = {
        "int": {"QSpinBox", "QSlider"}, "float": {"QDoubleSpinBox", "ctkSliderWidget"},
        "bool": {"QCheckBox"}, "str": {"QLineEdit"}, "Path": {"ctkPathLineEdit", "ctkDirectoryButton"},
    }
    bound = {}
    for w in _ui().iter("widget"):
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = w.get("class")
    assert set(bound) <= set(params), f"bound to unknown parameters: {set(bound) - set(params)}"
    assert set(params) == set(bound), f"parameters without a widget: {set(params) - set(bound)}"
    for name, cls in bound.items():
        ann = params[name]
        if ann.startswith("vtkMRML"):
            assert cls == "qMRMLNodeComboBox", name
        elif "Choice(" in ann:
            assert cls == "QComboBox", name
        else:
            base = re.sub(r"Annotated\[(\w+),.*\]", r"\1", ann)
            assert cls in widget_for[base], f"{name}: {ann} bound to {cls}"


# ----------------------------------------------------------------------------- CMake
def _module_cmake():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    return text.replace("${MODULE_NAME}", "Xray2Xray")


def _listed(text: str, variable: str):
    m = re.search(r"set\(%s\s+(.*?)\)" % variable, text, re.S)
    assert m, f"no set({variable} ...)"
    return {t for t in m.group(1).split() if not t.startswith("#")}


def test_every_module_file_is_listed_in_cmake():
    text = _module_cmake()
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    listed = _listed(text, "MODULE_PYTHON_SCRIPTS") | _listed(text, "MODULE_PYTHON_RESOURCES")
    files = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*")
             if p.is_file() and not any(part in CACHE_PARTS for part in p.parts)
             and p.suffix not in CACHE_SUFFIXES and p.name != "CMakeLists.txt"}
    assert files == listed, (f"not listed: {sorted(files - listed)}; "
                             f"listed but missing: {sorted(listed - files)}")


def _package_files():
    """Every file `pip install` ships of XrayWorldModel: all .py plus the package data."""
    pkg = REPO / "XrayWorldModel"
    patterns = _pyproject().get("tool", {}).get("setuptools", {}).get("package-data", {}).get("XrayWorldModel", [])
    files = set()
    for p in pkg.rglob("*"):
        if not p.is_file() or any(part in CACHE_PARTS for part in p.parts) or p.suffix in CACHE_SUFFIXES:
            continue
        rel = p.relative_to(pkg).as_posix()
        if p.suffix == ".py" or any(fnmatch.fnmatch(rel, pat) for pat in patterns):
            files.add("XrayWorldModel/" + rel)
    return files


def _emulate_bundle_globs():
    """What the module CMake bundles: its GLOB_RECURSE and FILTERs, evaluated in Python."""
    text = _module_cmake()
    glob = re.search(r"file\(GLOB_RECURSE XWM_FILES .*?\$\{XWM_SOURCE_DIR\}/(\S+)\s*\)", text, re.S)
    assert glob, "the bundled package is not globbed"
    files = [p.relative_to(REPO).as_posix() for p in REPO.glob(glob.group(1).replace("/*", "/**/*"))
             if p.is_file()]
    lists = {"XWM_FILES": files}
    for line in text.splitlines():
        m = re.match(r"\s*set\((XWM_\w+) \$\{(XWM_\w+)\}\)", line)
        if m:
            lists[m.group(1)] = list(lists[m.group(2)])
        m = re.match(r'\s*list\(FILTER (XWM_\w+) (INCLUDE|EXCLUDE) REGEX "(.*)"\)', line)
        if m:
            rx = re.compile(m.group(3).replace("\\\\", "\\"))
            keep = m.group(2) == "INCLUDE"
            lists[m.group(1)] = [f for f in lists[m.group(1)] if bool(rx.search(f)) == keep]
    return set(lists["XWM_PYTHON_SCRIPTS"]), set(lists["XWM_PYTHON_RESOURCES"])


def test_every_package_file_is_bundled_by_cmake():
    scripts, resources = _emulate_bundle_globs()
    wanted = _package_files()
    py = {f for f in wanted if f.endswith(".py")}
    assert py and py <= scripts, f"not bundled: {sorted(py - scripts)}"
    data = wanted - py
    assert data <= resources, f"package data not bundled: {sorted(data - resources)}"
    assert not {f for f in scripts | resources if "__pycache__" in f or f.endswith(CACHE_SUFFIXES)}
    text = _module_cmake()
    assert 'SCRIPTS "${XWM_PYTHON_SCRIPTS}"' in text and "XWM_PYTHON_RESOURCES}" in text


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_bundle_globs_agree_with_cmake(tmp_path):
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    block = text[text.index("set(XWM_SOURCE_DIR"):text.index("ctkMacroCompilePythonScript(")]
    block = block.replace(" CONFIGURE_DEPENDS", "")      # project-mode only
    script = tmp_path / "bundle.cmake"
    script.write_text(f'set(CMAKE_CURRENT_SOURCE_DIR "{MODULE_DIR.as_posix()}")\n{block}\n'
                      'foreach(f ${XWM_PYTHON_SCRIPTS})\n message("S ${f}")\nendforeach()\n'
                      'foreach(f ${XWM_PYTHON_RESOURCES})\n message("R ${f}")\nendforeach()\n')
    out = subprocess.run(["cmake", "-P", str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = [l.split(" ", 1) for l in out.stderr.splitlines() if l[:2] in ("S ", "R ")]
    scripts = {f for k, f in lines if k == "S"}
    resources = {f for k, f in lines if k == "R"}
    assert (scripts, resources) == _emulate_bundle_globs()


EXTENSION_FIELDS = ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL",
                    "SCREENSHOTURLS", "DEPENDS", "BUILD_SUBDIRECTORY", "STATUS", "ENABLED")


def test_top_level_cmake_has_every_extension_field():
    text = (REPO / "CMakeLists.txt").read_text()
    fields = dict(re.findall(r'set\(EXTENSION_(\w+)\s+"?(.*?)"?\)', text))
    for f in EXTENSION_FIELDS:
        assert fields.get(f, "").strip(), f"EXTENSION_{f} is missing or empty"
    assert "PyTorch" in fields["DEPENDS"].split()
    assert fields["HOMEPAGE"].startswith("https://") and fields["ICONURL"].startswith("https://")
    assert fields["ICONURL"].endswith("/Xray2Xray.png")
    for url in fields["SCREENSHOTURLS"].split():
        rel = url.split("/main/", 1)[-1]
        assert (REPO / rel).is_file(), f"screenshot {url} is not in the repository"
    assert len(fields["DESCRIPTION"]) > 60
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                 "add_subdirectory(Xray2Xray)", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
                 "include(${Slicer_EXTENSION_CPACK})"):
        assert line in text


@pytest.mark.parametrize("path", ["Xray2Xray.png", "Xray2Xray/Resources/Icons/Xray2Xray.png"])
def test_icons_are_128_png(path):
    from PIL import Image
    with Image.open(REPO / path) as im:
        assert im.format == "PNG" and im.size == (128, 128)


def test_requirements_match_the_package():
    """Slicer's requirements are the package's dependencies, less torch (PyTorch extension)
    and what Slicer ships (numpy, SimpleITK)."""
    deps = _pyproject()["project"]["dependencies"]

    def key(req):
        return re.split(r"[<>=!~ \[]", req, 1)[0].strip().lower()

    reqs = [l.split("#", 1)[0].strip() for l in
            (MODULE_DIR / "Resources" / "requirements.txt").read_text().splitlines()]
    reqs = [r for r in reqs if r]
    assert "torch" not in {key(r) for r in reqs}
    expected = {key(d): d.replace(" ", "") for d in deps if key(d) not in ("torch", "numpy", "simpleitk")}
    got = {key(r): r.replace(" ", "") for r in reqs}
    assert got == expected

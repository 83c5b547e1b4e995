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
#: Folders under Xray2Xray/ that are not part of the Slicer extension: the web front end
#: (``xray2xray web``, README "In a web browser") reuses Xray2XrayLib but ships with the
#: package's ``[web]`` extra, not with the extension.
NOT_IN_EXTENSION = ("Xray2XrayWeb",)

#: The current extension template's first line (Slicer main,
#: Utilities/Templates/Extensions/Default/CMakeLists.txt, since 2026-06 "Raise minimum CMake
#: version floor to 3.28").
TEMPLATE_CMAKE_MINIMUM = "cmake_minimum_required(VERSION 3.28.0...3.28.0 FATAL_ERROR)"

#: Extension fields of the current template; the category, tier and build revision moved to
#: the Extensions Index entry (docs/extensions-index/Xray2Xray.json) in Slicer 5.8's switch
#: from .s4ext to .json, and must not be set here as well.
EXTENSION_FIELDS = ("HOMEPAGE", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS",
                    "DEPENDS")
MOVED_TO_THE_INDEX = ("CATEGORY", "BUILD_SUBDIRECTORY", "ENABLED", "STATUS")


def _module_cmake():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    return text.replace("${MODULE_NAME}", "Xray2Xray")


def _listed(text: str, variable: str):
    m = re.search(r"set\(%s\s+(.*?)\)" % variable, text, re.S)
    assert m, f"no set({variable} ...)"
    return [t for t in m.group(1).split() if not t.startswith("#")]


def _module_files():
    """Files of the module folder that belong to the extension (the web front end does not)."""
    return {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*")
            if p.is_file() and not any(part in CACHE_PARTS for part in p.parts)
            and p.suffix not in CACHE_SUFFIXES and p.name != "CMakeLists.txt"
            and p.relative_to(MODULE_DIR).parts[0] not in NOT_IN_EXTENSION}


def test_every_module_file_is_listed_in_cmake_once():
    text = _module_cmake()
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    listed = _listed(text, "MODULE_PYTHON_SCRIPTS") + _listed(text, "MODULE_PYTHON_RESOURCES")
    assert len(listed) == len(set(listed)), f"listed twice: {sorted(f for f in listed if listed.count(f) > 1)}"
    files = _module_files()
    assert files == set(listed), (f"not listed: {sorted(files - set(listed))}; "
                                  f"listed but missing: {sorted(set(listed) - files)}")


def _package_files():
    """Every file `pip install` ships of XrayWorldModel: all .py plus the package data."""
    pkg = REPO / "XrayWorldModel"
    patterns = _package_data_patterns()
    files = set()
    for p in pkg.rglob("*"):
        if not p.is_file() or any(part in CACHE_PARTS for part in p.parts) or p.suffix in CACHE_SUFFIXES:
            continue
        rel = p.relative_to(pkg).as_posix()
        if p.suffix == ".py" or any(fnmatch.fnmatch(rel, pat) for pat in patterns):
            files.add("XrayWorldModel/" + rel)
    return files


def _package_data_patterns():
    return _pyproject().get("tool", {}).get("setuptools", {}).get("package-data", {}).get("XrayWorldModel", [])


def test_cmake_resource_globs_are_the_package_data_patterns():
    """The extension ships the data files pip ships: the same patterns, in the same order."""
    text = _module_cmake()
    m = re.search(r"file\(GLOB XWM_PYTHON_RESOURCES RELATIVE \$\{XWM_SOURCE_DIR\} CONFIGURE_DEPENDS"
                  r"(.*?)\)", text, re.S)
    assert m, "the package's data files are not globbed into XWM_PYTHON_RESOURCES"
    globs = [g.replace("${XWM_SOURCE_DIR}/", "") for g in m.group(1).split()]
    assert globs == _package_data_patterns()


def _cmake():
    exe = shutil.which("cmake")
    if exe is None:
        pytest.skip("cmake is not installed (the test extra installs it)")
    return exe


def _cmake_package_globs(tmp_path):
    """The package's scripts and resources as cmake evaluates the module's globs."""
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    block = text[text.index("set(XWM_NAME"):text.index("ctkMacroCompilePythonScript(")]
    block = block.replace(" CONFIGURE_DEPENDS", "")      # project mode only
    script = tmp_path / "bundle.cmake"
    script.write_text(f'set(CMAKE_CURRENT_SOURCE_DIR "{MODULE_DIR.as_posix()}")\n{block}\n'
                      'foreach(f ${XWM_PYTHON_SCRIPTS})\n message("S ${f}")\nendforeach()\n'
                      'foreach(f ${XWM_PYTHON_RESOURCES})\n message("R ${f}")\nendforeach()\n')
    out = subprocess.run([_cmake(), "-P", str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = [line.split(" ", 1) for line in out.stderr.splitlines() if line[:2] in ("S ", "R ")]
    return ({"XrayWorldModel/" + f for k, f in lines if k == "S"},
            {"XrayWorldModel/" + f for k, f in lines if k == "R"})


def test_cmake_bundles_exactly_what_pip_ships(tmp_path):
    scripts, resources = _cmake_package_globs(tmp_path)
    wanted = _package_files()
    py = {f for f in wanted if f.endswith(".py")}
    assert py and scripts == py, (f"not bundled: {sorted(py - scripts)}; "
                                  f"bundled but not shipped by pip: {sorted(scripts - py)}")
    assert resources == wanted - py
    assert not {f for f in scripts | resources if "__pycache__" in f or f.endswith(CACHE_SUFFIXES)}


# A stand-in for a Slicer build tree, just enough to configure, build and install the
# extension without Slicer: the directory variables SlicerConfig.cmake sets, and the two
# macros the extension calls, with the copy and install behaviour of Slicer's
# slicerMacroBuildScriptedModule (CMake/SlicerMacroBuildScriptedModule.cmake: files must exist,
# copied to <build>/<qt-scripted-modules>, NO_INSTALL_SUBDIR unless WITH_SUBDIR) and CTK's
# ctkMacroCompilePythonScript (CMake/ctkMacroCompilePythonScript.cmake: SCRIPTS and RESOURCES
# relative to SOURCE_DIR copied under DESTINATION_DIR, which is installed as a directory into
# INSTALL_DIR, or its content with NO_INSTALL_SUBDIR). Files are copied at configure time
# here, at build time in Slicer: the installed result is the same.
_STUB_CONFIG = r"""
set(Slicer_FOUND 1)
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/Empty.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/Empty.cmake")
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-5.13/qt-scripted-modules")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")
"""
_STUB_USE = r"""
macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(MY "NO_INSTALL_SUBDIR"
    "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "ctkMacroCompilePythonScript: unknown arguments ${MY_UNPARSED_ARGUMENTS}")
  endif()
  foreach(var TARGET_NAME SCRIPTS DESTINATION_DIR INSTALL_DIR)
    if(NOT DEFINED MY_${var})
      message(FATAL_ERROR "${var} is mandatory")
    endif()
  endforeach()
  if(NOT DEFINED MY_SOURCE_DIR)
    set(MY_SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
  endif()
  foreach(file ${MY_SCRIPTS} ${MY_RESOURCES})
    if(NOT EXISTS "${MY_SOURCE_DIR}/${file}")
      message(FATAL_ERROR "${MY_TARGET_NAME}: no such file ${MY_SOURCE_DIR}/${file}")
    endif()
    configure_file("${MY_SOURCE_DIR}/${file}" "${MY_DESTINATION_DIR}/${file}" COPYONLY)
    file(APPEND "${CMAKE_BINARY_DIR}/stub-copies.txt" "${MY_TARGET_NAME}|${MY_DESTINATION_DIR}/${file}\n")
  endforeach()
  set(_dir "${MY_DESTINATION_DIR}")
  if(MY_NO_INSTALL_SUBDIR)
    set(_dir "${MY_DESTINATION_DIR}/")
  endif()
  install(DIRECTORY "${_dir}" DESTINATION "${MY_INSTALL_DIR}" COMPONENT RuntimeLibraries
    USE_SOURCE_PERMISSIONS)
  file(APPEND "${CMAKE_BINARY_DIR}/stub-installs.txt" "${MY_TARGET_NAME}|${_dir}|${MY_INSTALL_DIR}\n")
endmacro()

macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): ${MY_SLICER_UNPARSED_ARGUMENTS}")
  endif()
  set(_no_install_subdir NO_INSTALL_SUBDIR)
  set(_subdir "")
  if(MY_SLICER_WITH_SUBDIR)
    get_filename_component(_subdir ${CMAKE_CURRENT_SOURCE_DIR} NAME)
    set(_subdir "/${_subdir}")
    set(_no_install_subdir "")
  endif()
  ctkMacroCompilePythonScript(
    TARGET_NAME ${MY_SLICER_NAME}
    SCRIPTS "${MY_SLICER_SCRIPTS}"
    RESOURCES "${MY_SLICER_RESOURCES}"
    DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}${_subdir}
    INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}
    ${_no_install_subdir})
endmacro()

function(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT" "" ${ARGN})
  file(APPEND "${CMAKE_BINARY_DIR}/stub-unittests.txt" "${MY_SCRIPT}\n")
endfunction()
"""


@pytest.fixture(scope="module")
def installed_extension(tmp_path_factory):
    """Configure, build and install the extension against the stand-in Slicer; returns
    (build folder, install prefix)."""
    cmake = _cmake()
    root = tmp_path_factory.mktemp("cmake")
    stub, build, prefix = root / "slicer-stub", root / "build", root / "install"
    stub.mkdir()
    (stub / "SlicerConfig.cmake").write_text(_STUB_CONFIG)
    (stub / "UseSlicer.cmake").write_text(_STUB_USE)
    (stub / "Empty.cmake").write_text("")
    run = dict(capture_output=True, text=True, timeout=300)
    out = subprocess.run([cmake, "-S", str(REPO), "-B", str(build), f"-DSlicer_DIR={stub}",
                          "-DBUILD_TESTING=ON"], **run)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for step in ([cmake, "--build", str(build)], [cmake, "--install", str(build), "--prefix", str(prefix)]):
        out = subprocess.run(step, **run)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return build, prefix


def test_extension_configures_and_installs_every_file_in_its_place(installed_extension):
    build, prefix = installed_extension
    scripted = prefix / "lib" / "Slicer-5.13" / "qt-scripted-modules"
    installed = {p.relative_to(scripted).as_posix() for p in scripted.rglob("*")
                 if p.is_file() and not any(part in CACHE_PARTS for part in p.parts)}
    assert installed == _module_files() | _package_files()
    assert {p.relative_to(prefix).parts[:3] for p in prefix.rglob("*") if p.is_file()} == \
        {("lib", "Slicer-5.13", "qt-scripted-modules")}, "files installed outside the scripted modules"
    # the package: every file copied once, into its own folder, which its one install rule
    # installs as a folder (not the whole scripted-modules folder)
    copies = [line.split("|") for line in (build / "stub-copies.txt").read_text().splitlines()]
    targets = [dest for _, dest in copies]
    assert len(targets) == len(set(targets)), "a file is copied twice"
    package_dir = (build / "lib" / "Slicer-5.13" / "qt-scripted-modules" / "XrayWorldModel").as_posix()
    assert {dest[len(package_dir) + 1:] for name, dest in copies if name == "XrayWorldModel"} == \
        {f.split("/", 1)[1] for f in _package_files()}
    rules = [line.split("|") for line in (build / "stub-installs.txt").read_text().splitlines()]
    assert [r for r in rules if r[0] == "XrayWorldModel"] == \
        [["XrayWorldModel", package_dir, "lib/Slicer-5.13/qt-scripted-modules"]]
    assert (build / "stub-unittests.txt").read_text().split() == ["Xray2Xray.py"]


def test_top_level_cmake_follows_the_current_template():
    text = (REPO / "CMakeLists.txt").read_text()
    assert text.splitlines()[0] == TEMPLATE_CMAKE_MINIMUM
    assert re.search(r"^project\(Xray2Xray\)$", text, re.M)
    fields = dict(re.findall(r'set\(EXTENSION_(\w+)\s+"([^"]*)"\)', text))
    assert set(fields) == set(re.findall(r"set\(EXTENSION_(\w+)", text)), "unquoted EXTENSION_ value"
    for f in EXTENSION_FIELDS:
        assert fields.get(f, "").strip(), f"EXTENSION_{f} is missing or empty"
    moved = [f for f in MOVED_TO_THE_INDEX if f in fields]
    assert not moved, f"set in the index entry instead: {moved}"
    assert fields["DEPENDS"].split() == ["PyTorch"]
    assert fields["HOMEPAGE"].startswith("https://") and fields["ICONURL"].startswith("https://")
    assert fields["ICONURL"].endswith("/Xray2Xray.png")
    # contributors: "Name (Organization)", comma separated (the extension description spec)
    for contributor in re.split(r",\s*(?![^()]*\))", fields["CONTRIBUTORS"]):
        assert re.fullmatch(r"[^()]+ \([^()]+\)", contributor), contributor
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

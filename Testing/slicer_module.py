"""Import the real ``Xray2Xray.py`` on slicer-core, with stand-ins for what only a Slicer
application has (qt, the scripted-module base classes, the parameter-node wrapper)."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1] / "Xray2Xray"


def load_module_file(monkeypatch, module_file: Path = MODULE_DIR / "Xray2Xray.py"):
    """Import ``module_file`` (the real module file unless a test copies it elsewhere).
    ``sys.path`` is restored afterwards (the module adds a source checkout to it)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    qt = types.ModuleType("qt")
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget",
                 "ScriptedLoadableModuleTest", "ScriptedLoadableModuleLogic"):
        setattr(scripted, name, type(name, (), {"__init__": lambda self, parent=None: None}))
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.Choice = wrapper.WithinRange = lambda *args: None
    for name, module in (("qt", qt), ("slicer.ScriptedLoadableModule", scripted),
                         ("slicer.parameterNodeWrapper", wrapper)):
        monkeypatch.setitem(sys.modules, name, module)
    if str(module_file.parent) not in sys.path:
        monkeypatch.syspath_prepend(str(module_file.parent))
    spec = importlib.util.spec_from_file_location("Xray2Xray", module_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

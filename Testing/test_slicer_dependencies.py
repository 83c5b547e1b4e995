"""How the Slicer module installs its dependencies, run for real on slicer-core with the
Slicer-only pieces (the PyTorch extension, ``pip_ensure``, dialogs) replaced by recorders.

``pip_ensure`` below behaves like Slicer's own in the one respect that broke the self-test:
in testing mode it installs nothing unless called with ``skip_in_testing=False``.
"""
from __future__ import annotations

import sys
import types

import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core provides the MRML layer")
from slicer_module import load_module_file  # noqa: E402


class Recorder:
    def __init__(self, testing: bool, torch_installed: bool = False):
        self.calls, self.testing, self.torch_installed = [], testing, torch_installed
        self.installed = False

    def pytorch_utils(self, module):
        recorder = self

        class PyTorchUtilsLogic:
            def torchInstalled(self):
                return recorder.torch_installed

            def installTorch(self, askConfirmation, torchVersionRequirement):
                recorder.calls.append(("installTorch", askConfirmation, torchVersionRequirement))
                return types.ModuleType("torch")

        module.PyTorchUtilsLogic = PyTorchUtilsLogic
        return module

    def pydeps(self, module):
        def pip_ensure(requirements, requester=None, skip_in_testing=True, **kwargs):
            self.calls.append(("pip_ensure", list(requirements), requester, skip_in_testing))
            if skip_in_testing and self.testing:
                return None                      # what Slicer does in testing mode
            self.installed = True
            return None

        module.load_requirements = lambda path: [f"requirements of {path}"]
        module.pip_ensure = pip_ensure
        return module


@pytest.fixture
def module(monkeypatch):
    return load_module_file(monkeypatch)


def _install(monkeypatch, recorder, confirm=True, pydeps=True):
    monkeypatch.setitem(sys.modules, "PyTorchUtils",
                        recorder.pytorch_utils(types.ModuleType("PyTorchUtils")))
    if pydeps:
        monkeypatch.setitem(sys.modules, "slicer.pydeps", recorder.pydeps(types.ModuleType("slicer.pydeps")))
    else:
        monkeypatch.setitem(sys.modules, "slicer.pydeps", None)
        monkeypatch.setitem(sys.modules, "slicer.packaging", None)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda *a, **k: confirm, raising=False)
    monkeypatch.setattr(slicer.util, "pip_install",
                        lambda args: recorder.calls.append(("pip_install", list(args))), raising=False)


@pytest.mark.parametrize("testing", [False, True], ids=["interactive", "self-test"])
def test_dependencies_install_torch_then_the_requirements(module, monkeypatch, testing):
    """Torch through the PyTorch extension, then the requirements through pip_ensure, which
    must install even while Slicer runs its self-test (testingEnabled())."""
    recorder = Recorder(testing)
    _install(monkeypatch, recorder)
    logic = module.Xray2XrayLogic()
    assert logic.ensureDependencies() is True
    path = logic.requirementsPath()
    assert recorder.calls == [("installTorch", False, module.TORCH_REQUIREMENT),
                              ("pip_ensure", [f"requirements of {path}"], "Xray2Xray", False)]
    assert recorder.installed
    logic.ensureDependencies()                   # once per session
    assert len(recorder.calls) == 2


def test_declining_torch_raises_like_pip_ensure_and_installs_nothing(module, monkeypatch):
    recorder = Recorder(testing=False)
    _install(monkeypatch, recorder, confirm=False)
    logic = module.Xray2XrayLogic()
    with pytest.raises(RuntimeError, match="declined"):
        logic.ensureDependencies()
    assert recorder.calls == []
    assert not logic._dependenciesChecked


def test_slicer_without_pip_ensure_falls_back_to_pip_install(module, monkeypatch):
    recorder = Recorder(testing=False, torch_installed=True)
    _install(monkeypatch, recorder, pydeps=False)
    logic = module.Xray2XrayLogic()
    monkeypatch.setattr(logic, "_missingRequirements", lambda path: ["monai>=1.3"])
    logic.ensureDependencies()
    assert recorder.calls == [("pip_install", ["-r", logic.requirementsPath()])]

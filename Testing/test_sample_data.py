"""The "synthetic chest (Xray2Xray)" entry of Slicer's Sample Data module: registered when
Slicer has started, made locally by the package's phantom (nothing downloaded), and the same
volume the web front end's "synthetic chest" gives.

Runs the real module file on slicer-core; Sample Data and the application object are
recorders that keep the real API's contract (``SampleDataSource`` rejects lists of unequal
length, as Slicer's does).
"""
import contextlib
import sys
import types
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core provides the MRML layer")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not slicer-core", allow_module_level=True)
from slicer_module import load_module_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class SampleDataRecorder:
    def __init__(self):
        self.sources = []
        recorder = self

        class SampleDataLogic:
            @staticmethod
            def registerCustomSampleDataSource(category="Custom", sampleName=None, uris=None,
                                               fileNames=None, nodeNames=None,
                                               customDownloader=None, thumbnailFileName=None,
                                               loadFileTypes=None, loadFiles=None,
                                               loadFileProperties={}, checksums=None,
                                               loadFileType=None):
                # Slicer's SampleDataSource: a list of URIs needs lists of the same length
                assert isinstance(uris, (list, tuple)), "uris must be a list (len() is taken)"
                assert len(uris) == len(fileNames) == len(nodeNames), "unequal lengths"
                recorder.sources.append(dict(category=category, sampleName=sampleName, uris=uris,
                                             customDownloader=customDownloader,
                                             thumbnailFileName=thumbnailFileName))

        self.module = types.ModuleType("SampleData")
        self.module.SampleDataLogic = SampleDataLogic


@pytest.fixture
def module(monkeypatch):
    return load_module_file(monkeypatch)


def test_registered_once_slicer_has_started(module, monkeypatch):
    connected = []
    app = types.SimpleNamespace(connect=lambda signal, slot: connected.append((signal, slot)))
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.setattr(module.ScriptedLoadableModule, "__init__",
                        lambda self, parent: setattr(self, "parent", parent))
    module.Xray2Xray(types.SimpleNamespace())
    assert connected == [("startupCompleted()", module.registerSampleData)]


def test_the_entry_names_a_local_generator_and_a_thumbnail(module, monkeypatch):
    from Xray2XrayLib import samples
    recorder = SampleDataRecorder()
    monkeypatch.setitem(sys.modules, "SampleData", recorder.module)
    module.registerSampleData()
    [source] = recorder.sources
    assert source["category"] == samples.SAMPLE_CATEGORY == "Xray2Xray"
    assert source["sampleName"] == samples.SYNTHETIC_CHEST == "synthetic chest (Xray2Xray)"
    assert source["uris"] == [], "nothing to download"
    assert source["customDownloader"] is module.loadSyntheticChest
    thumbnail = Path(source["thumbnailFileName"])
    assert thumbnail == REPO / "Xray2Xray" / "Resources" / "Icons" / samples.SYNTHETIC_CHEST_THUMBNAIL
    from PIL import Image
    with Image.open(thumbnail) as image:
        assert image.format == "PNG" and image.size == (128, 128)


def test_the_button_adds_the_phantom_to_the_scene(module, monkeypatch):
    from Xray2XrayLib import conversions as conv
    from Xray2XrayLib import samples
    from XrayWorldModel.phantom import procedural_chest
    scene = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    calls = []
    monkeypatch.setattr(module.Xray2XrayLogic, "ensureDependencies",
                        lambda self, **kw: calls.append(("ensureDependencies", kw)) or True)
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers",
                        lambda **kw: calls.append(("setSliceViewerLayers", kw)), raising=False)

    @contextlib.contextmanager
    def tryWithErrorDisplay(message=None, show=True, waitCursor=False):
        yield                                              # errors propagate to the test

    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", tryWithErrorDisplay, raising=False)
    node = module.loadSyntheticChest(source=object())
    assert node is not None and node.GetScene() is scene
    assert node.GetName() == samples.SYNTHETIC_CHEST_NODE
    assert calls[0] == ("ensureDependencies", {})
    assert calls[1] == ("setSliceViewerLayers", {"background": node, "fit": True})
    phantom = procedural_chest(seed=samples.SYNTHETIC_CHEST_SEED)
    volume = conv.volumeNodeToVolume(node)
    np.testing.assert_array_equal(volume.array, phantom.array)
    np.testing.assert_allclose(volume.affine, phantom.affine, atol=1e-9)
    assert node.GetImageData().GetDimensions() == (128, 128, 96)
    # a second press: another node, not a name clash
    again = module.loadSyntheticChest()
    assert again.GetName() != node.GetName()

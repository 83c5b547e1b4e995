"""Every command of the ``xray2xray`` CLI on a generated corpus of bad inputs.

Each case must end with exit status 2 and exactly one stderr line, ``xray2xray: error:``,
that names the file (or the option) at fault, with no traceback; it must leave nothing
behind (the corpus folder is the same before and after); and it must fail *before* any
heavy work. That last point is a stage marker, not a clock: the heavy entry points (DRR
rendering, FDK, model loading, the trainer, the study, building a phantom) are replaced by
functions that raise :class:`HeavyWorkReached`, so a case that gets that far fails loudly.

The commands run in-process through :func:`XrayWorldModel.cli.main` (the entry point of
the ``xray2xray`` script) with file-descriptor capture, so raw lines that ITK or GDCM print
from C++ would be seen too; the corpus is built once per module.
"""
from __future__ import annotations

import gzip
import json
import os
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.uid import generate_uid

from test_io import make_cr, write_ct_series
from test_train import TINY
from XrayWorldModel.io import write_volume
from XrayWorldModel.volume import Volume

MR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.4"
DRR_ARGS = ["--angles", "0", "--detector", "16", "16", "--pixel-spacing", "20"]


class HeavyWorkReached(Exception):
    """Raised by a stand-in for a heavy entry point: the command got past its checks."""


#: (module, attribute) of every heavy entry point a command may reach.
HEAVY = [
    ("XrayWorldModel.drr.render", "render_drr"),
    ("XrayWorldModel.drr.render.DRRRenderer", "render"),
    ("XrayWorldModel.recon.reconstruct", "fdk"),
    ("XrayWorldModel.infer.pipeline", "load_inference_model"),
    ("XrayWorldModel.infer.demo", "load_inference_model"),
    ("XrayWorldModel.weights.loading", "load_world_model"),
    ("XrayWorldModel.probe.run", "load_world_model"),
    ("XrayWorldModel.train.evaluate", "load_world_model"),
    ("XrayWorldModel.train.evaluate", "evaluate_checkpoint"),
    ("XrayWorldModel.train.trainer.Trainer", "__init__"),
    ("XrayWorldModel.study.run", "run_study"),
    ("XrayWorldModel.phantom.variants", "chest_volume"),   # phantom.cli imports these when
    ("XrayWorldModel.phantom.cohort", "write_cohort"),     # it runs, from their modules
]


def _owner(dotted: str):
    import importlib
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for name in parts[k:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def _import_every_module() -> None:
    """Import the whole package first: a module imported for the first time while a stand-in
    is in place would keep it (``from .pipeline import load_inference_model`` binds the
    stand-in), and later tests would meet it."""
    import importlib
    import pkgutil

    import XrayWorldModel
    for info in pkgutil.walk_packages(XrayWorldModel.__path__, "XrayWorldModel."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)


@pytest.fixture
def guarded(monkeypatch):
    """The heavy entry points raise :class:`HeavyWorkReached` for the test's duration."""
    _import_every_module()
    for where, name in HEAVY:
        def stand_in(*args, _name=f"{where}.{name}", **kwargs):
            raise HeavyWorkReached(f"{_name} was reached: the command did not fail before "
                                   "heavy work")
        monkeypatch.setattr(_owner(where), name, stand_in)


# ------------------------------------------------------------------------------ the corpus
def _duplicate_slice_series(folder: Path) -> None:
    """A series with two copies of one slice (same series UID and position)."""
    write_ct_series(folder, np.zeros((8, 8, 4), np.float32), desc="dup")
    ds = pydicom.dcmread(folder / "dup_001.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(folder / "dup_001_copy.dcm")


def _multiframe_mr(path: Path, frames: int = 6, size: int = 16) -> None:
    """A multi-frame MR image (like pydicom's emri_small.dcm), written with pydicom."""
    ds = make_cr(path, np.zeros((size, size), np.uint16), modality="MR", view=None,
                 pixel_spacing=(1.5, 1.5))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MR_SOP_CLASS
    ds.NumberOfFrames = frames
    ds.SliceThickness = 3.0
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    pixels = np.arange(frames * size * size, dtype=np.uint16).reshape(frames, size, size) % 4096
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def _zero_spacing_nifti(path: Path) -> None:
    """A NIfTI with zero pixdim and neither qform nor sform (ITK would assume 1 mm)."""
    tmp = path.with_name("plain_for_zero.nii")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16)), str(tmp))
    raw = bytearray(tmp.read_bytes())
    tmp.unlink()
    raw[80:92] = struct.pack("<3f", 0.0, 0.0, 0.0)
    raw[252:256] = struct.pack("<hh", 0, 0)
    path.write_bytes(gzip.compress(bytes(raw)))


def _zero_spacing_mha(path: Path) -> None:
    tmp = path.with_name("plain_for_zero.mha")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16)), str(tmp), False)
    raw = tmp.read_bytes()
    tmp.unlink()
    path.write_bytes(raw.replace(b"ElementSpacing = 1 1 1", b"ElementSpacing = 1 0 1"))


def _images(d: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (256, 256), dtype=np.uint8)).save(d / "noise.png")
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(d / "tiny.png")
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(d / "blank.png")
    y, x = np.mgrid[0:128, 0:128]
    photo = np.stack([x * 2, np.full_like(x, 40), 255 - y * 2], -1).astype(np.uint8)
    Image.fromarray(photo).save(d / "photo.png")


def build_corpus(d: Path) -> None:
    (d / "empty.dcm").write_bytes(b"")
    (d / "notes.dcm").write_text("patient notes, not an image\n")
    (d / "notes.txt").write_text("this is not a CT\n")
    (d / "notes.md").write_text("# not a CT either\n")
    (d / "fake.nii.gz").write_text("a text file with a NIfTI name\n")
    (d / "empty_dir").mkdir()
    _duplicate_slice_series(d / "dup_series")
    write_ct_series(d / "mr_series", np.zeros((8, 8, 4), np.float32), desc="mr", modality="MR")
    write_ct_series(d / "gap_series", np.zeros((8, 8, 5), np.float32), desc="gap")
    (d / "gap_series" / "gap_002.dcm").unlink()
    write_ct_series(d / "ct_series", np.zeros((8, 8, 3), np.float32), desc="axial")
    write_ct_series(d / "one_slice", np.zeros((8, 8, 1), np.float32), desc="one")
    _multiframe_mr(d / "mr_multiframe.dcm")
    _zero_spacing_nifti(d / "zero_spacing.nii.gz")
    _zero_spacing_mha(d / "zero_spacing.mha")
    ct = Volume(np.full((12, 12, 10), -1000.0, np.float32), np.diag([10.0, 10, 10, 1]))
    write_volume(ct, d / "ct.nii.gz")
    data = (d / "ct.nii.gz").read_bytes()
    (d / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    data = write_volume(ct, d / "whole.mha", compress=False).read_bytes()
    (d / "whole.mha").unlink()
    (d / "truncated.mha").write_bytes(data[: len(data) // 20])   # the header cut short
    nan = ct.array.copy()
    nan[2, 3, 4] = np.nan
    write_volume(Volume(nan, ct.affine), d / "nan.nii.gz")
    make_cr(d / "cr.dcm", np.full((64, 64), 1000, np.uint16), pixel_spacing=(0.2, 0.2))
    _images(d)
    (d / "list.txt").write_text("ct.nii.gz\nnot_there.nii.gz\n")
    (d / "ro").mkdir()
    os.chmod(d / "ro", 0o555)
    (d / "existing.txt").write_text("keep me\n")
    (d / "tiny.json").write_text(json.dumps(TINY))
    (d / "broken.json").write_text("{not json")
    run = d / "run" / "checkpoints"
    run.mkdir(parents=True)
    (run / "step-0000003.safetensors").write_bytes(b"weights")
    (d / "run" / "config.json").write_text(json.dumps(TINY))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    build_corpus(d)
    yield d
    os.chmod(d / "ro", 0o755)


def _out(name):
    return f"{{d}}/out/{name}"


#: case -> (argv with {d} for the corpus folder, what the error line must contain).
CASES = {
    # drr: CTs that are not one CT volume
    "drr duplicate slices": (["drr", "{d}/dup_series", "--out", _out("a.nii.gz")],
                             ["dup_series", "repeat one position"]),
    "drr multi-frame MR": (["drr", "{d}/mr_multiframe.dcm", "--out", _out("a.nii.gz")],
                           ["mr_multiframe.dcm", "MR", "not CT"]),
    "drr MR series": (["drr", "{d}/mr_series", "--out", _out("a.nii.gz")],
                      ["mr_series", "MR", "not CT"]),
    "drr zero-spacing NIfTI": (["drr", "{d}/zero_spacing.nii.gz", "--out", _out("a.nii.gz")],
                               ["zero_spacing.nii.gz", "spacing"]),
    "drr zero-spacing MHA": (["drr", "{d}/zero_spacing.mha", "--out", _out("a.nii.gz")],
                             ["zero_spacing.mha", "spacing"]),
    "drr missing slice": (["drr", "{d}/gap_series", "--out", _out("a.nii.gz")],
                          ["gap_series", "gap"]),
    "drr one slice": (["drr", "{d}/one_slice/one_000.dcm", "--out", _out("a.nii.gz")],
                      ["one_000.dcm", "single", "whole series"]),
    "drr empty .dcm": (["drr", "{d}/empty.dcm", "--out", _out("a.nii.gz")],
                       ["empty.dcm", "empty file"]),
    "drr text .dcm": (["drr", "{d}/notes.dcm", "--out", _out("a.nii.gz")],
                      ["notes.dcm", "text file"]),
    "drr text file": (["drr", "{d}/notes.md", "--out", _out("a.nii.gz")], ["notes.md"]),
    "drr text manifest": (["drr", "{d}/notes.txt", "--out", _out("stacks")],
                          ["notes.txt", "manifest", "no such file"]),
    "drr text named .nii.gz": (["drr", "{d}/fake.nii.gz", "--out", _out("a.nii.gz")],
                               ["fake.nii.gz", "no image reader recognises"]),
    "drr truncated MHA": (["drr", "{d}/truncated.mha", "--out", _out("a.nii.gz")],
                          ["truncated.mha", "header"]),
    "drr PNG": (["drr", "{d}/noise.png", "--out", _out("a.nii.gz")], ["noise.png", "2D"]),
    "drr radiograph": (["drr", "{d}/cr.dcm", "--out", _out("a.nii.gz")],
                       ["cr.dcm", "radiograph"]),
    "drr truncated NIfTI": (["drr", "{d}/truncated.nii.gz", "--out", _out("a.nii.gz")],
                            ["truncated.nii.gz", "truncated"]),
    "drr NaN voxels": (["drr", "{d}/nan.nii.gz", "--out", _out("a.nii.gz")],
                       ["nan.nii.gz", "NaN"]),
    "drr empty folder": (["drr", "{d}/empty_dir", "--out", _out("a.nii.gz")],
                         ["empty_dir", "empty"]),
    "drr missing file": (["drr", "{d}/nope.nii.gz", "--out", _out("a.nii.gz")],
                         ["nope.nii.gz", "no such file"]),
    "drr manifest entry": (["drr", "{d}/list.txt", "--out", _out("stacks")],
                           ["not_there.nii.gz", "no such file"]),
    # drr: outputs
    "drr --out existing text file": (["drr", "{d}/ct.nii.gz", "--out", "{d}/existing.txt"],
                                     ["existing.txt", "folder", ".nii"]),
    "drr --out other format": (["drr", "{d}/ct.nii.gz", "--out", _out("stack.mha")],
                               ["stack.mha", ".nii"]),
    "drr --out read-only folder": (["drr", "{d}/ct.nii.gz", "--out", "{d}/ro/a.nii.gz"],
                                   ["ro", "read-only"]),
    "drr --out read-only parent": (["drr", "{d}/ct.nii.gz", "--out", "{d}/ro/sub/"],
                                   ["ro", "read-only"]),
    "drr several inputs to a file": (["drr", "{d}/ct.nii.gz", "phantom:chest", "--out",
                                      _out("a.nii.gz")], ["a.nii.gz", "folder"]),
    # infer: not a radiograph
    "infer noise PNG": (["infer", "{d}/noise.png", "--out", _out("inf")],
                        ["noise.png", "noise"]),
    "infer tiny PNG": (["infer", "{d}/tiny.png", "--out", _out("inf")],
                       ["tiny.png", "too small"]),
    "infer blank PNG": (["infer", "{d}/blank.png", "--out", _out("inf")],
                        ["blank.png", "blank"]),
    "infer photograph": (["infer", "{d}/photo.png", "--out", _out("inf")],
                         ["photo.png", "colour"]),
    "infer empty .dcm": (["infer", "{d}/empty.dcm", "--out", _out("inf")],
                         ["empty.dcm", "empty file"]),
    "infer text .dcm": (["infer", "{d}/notes.dcm", "--out", _out("inf")],
                        ["notes.dcm", "text file"]),
    "infer CT slice": (["infer", "{d}/ct_series/axial_001.dcm", "--out", _out("inf")],
                       ["axial_001.dcm", "a single CT slice", "folder of the whole series"]),
    "infer multi-frame MR": (["infer", "{d}/mr_multiframe.dcm", "--out", _out("inf")],
                             ["mr_multiframe.dcm", "MR"]),
    "infer CT volume": (["infer", "{d}/ct.nii.gz", "--out", _out("inf")],
                        ["ct.nii.gz", "3D volume"]),
    "infer a folder": (["infer", "{d}/ct_series", "--out", _out("inf")],
                       ["ct_series", "folder"]),
    "infer a folder --json": (["infer", "{d}/ct_series", "--out", _out("inf"), "--json"],
                              ["--json", "one radiograph", "folder"]),
    "infer missing file": (["infer", "{d}/nope.png", "--out", _out("inf")],
                           ["nope.png", "no such file"]),
    "infer --out existing file": (["infer", "{d}/cr.dcm", "--out", "{d}/existing.txt"],
                                  ["existing.txt", "is a file", "folder"]),
    "infer --out read-only": (["infer", "{d}/cr.dcm", "--out", "{d}/ro"], ["ro", "read-only"]),
    # demo
    "demo --out existing file": (["demo", "--out", "{d}/existing.txt"],
                                 ["existing.txt", "folder"]),
    "demo --out read-only": (["demo", "--out", "{d}/ro/demo"], ["ro", "read-only"]),
    "demo noise --cxr": (["demo", "--cxr", "{d}/noise.png", "--out", _out("demo")],
                         ["noise.png", "noise"]),
    # recon
    "recon a CT": (["recon", "{d}/ct.nii.gz", "--out", _out("r.nii.gz")],
                   ["ct.nii.gz", "not a DRR stack"]),
    "recon a text file": (["recon", "{d}/notes.txt", "--out", _out("r.nii.gz")],
                          ["notes.txt", "not a DRR stack"]),
    "recon --out no format": (["recon", "{d}/ct.nii.gz", "--out", _out("r.txt")],
                              ["r.txt", "format"]),
    "recon --out read-only": (["recon", "{d}/ct.nii.gz", "--out", "{d}/ro/r.nii.gz"],
                              ["ro", "read-only"]),
    "recon --out a folder": (["recon", "{d}/ct.nii.gz", "--out", "{d}/empty_dir"],
                             ["empty_dir", "format"]),
    # phantom
    "phantom --out no format": (["phantom", "--out", "{d}/existing.txt"],
                                ["existing.txt", "format"]),
    "phantom --out read-only": (["phantom", "--out", "{d}/ro/p.nii.gz"], ["ro", "read-only"]),
    "phantom cohort into a file": (["phantom", "--cohort", "2", "--out", "{d}/existing.txt"],
                                   ["existing.txt", "folder"]),
    "phantom cohort read-only": (["phantom", "--cohort", "2", "--out", "{d}/ro/cohort"],
                                 ["ro", "read-only"]),
    # train and eval-views
    "train run.out_dir read-only": (["train", "--config", "{d}/tiny.json",
                                     "run.out_dir={d}/ro/run"], ["ro", "read-only"]),
    "train run.out_dir a file": (["train", "--config", "{d}/tiny.json",
                                  "run.out_dir={d}/existing.txt"], ["existing.txt", "folder"]),
    "train missing data": (["train", "--config", "{d}/tiny.json", "data.source={d}/nope",
                            "run.out_dir={d}/out/run"], ["nope", "no such file"]),
    "train broken config": (["train", "--config", "{d}/broken.json",
                             "run.out_dir={d}/out/run"], ["broken.json", "not valid JSON"]),
    "train resume missing": (["train", "--config", "{d}/tiny.json", "run.out_dir={d}/out/run",
                              "--resume", "{d}/nope.safetensors"], ["nope", "no such checkpoint"]),
    "train over a run": (["train", "--config", "{d}/tiny.json", "run.out_dir={d}/run"],
                         ["run", "--resume"]),
    "eval-views missing model": (["eval-views", "--model", "{d}/nope", "--data", "phantom:1"],
                                 ["nope", "no such checkpoint"]),
    "eval-views checkpoint without card": (["eval-views", "--model", "{d}/run", "--data",
                                            "phantom:1"], ["step-0000003", "card"]),
    "eval-views missing data": (["eval-views", "--model", "{d}/run/checkpoints/x.json",
                                 "--data", "{d}/nope"], ["x.safetensors", "no such checkpoint"]),
    "eval-volume missing data": (["eval-volume", "--data", "{d}/nope"], ["nope", "no such"]),
    # probe
    "probe --out a folder": (["probe", "--data", "phantom:4", "--task", "pathology",
                              "--out", "{d}/empty_dir"], ["empty_dir", "folder"]),
    "probe --save-into read-only": (["probe", "--data", "phantom:4", "--task", "pathology",
                                     "--save-into", "{d}/ro/m.safetensors"], ["ro", "read-only"]),
    "probe missing data": (["probe", "--data", "{d}/nope", "--task", "risk"],
                           ["nope", "no such file"]),
    # models, study
    "models import empty": (["models", "import", "{d}/empty.dcm"], ["empty.dcm"]),
    "study --out read-only": (["study", "--config", "insilico-smoke", "--out", "{d}/ro/study"],
                              ["ro", "read-only"]),
    "study --out a file": (["study", "--config", "insilico-smoke", "--out", "{d}/existing.txt"],
                           ["existing.txt", "folder"]),
    "study-analysis no study": (["study-analysis", "{d}/empty_dir"],
                                ["empty_dir", "not a finished study"]),
}


def _listing(d: Path):
    return sorted((str(p.relative_to(d)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in d.rglob("*"))


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, corpus, guarded, capfd, monkeypatch):
    from XrayWorldModel.cli import main
    argv, phrases = CASES[case]
    monkeypatch.setenv("XRAY2XRAY_CACHE", str(corpus.parent / "cache"))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    if argv[0] == "drr":
        argv = argv + DRR_ARGS
    argv = [a.format(d=corpus) for a in argv]
    before = _listing(corpus)
    code = main(argv)
    out, err = capfd.readouterr()
    lines = err.splitlines()
    assert code == 2, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert out == "", out                    # no raw library lines on stdout either
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("xray2xray: error: "), lines[0]
    for phrase in phrases:
        assert phrase.lower() in lines[0].lower(), lines[0]
    for word in ("read_ct", "read_cxr", "force=True", "series_uid", "ITK ERROR", "sitk::"):
        assert word not in lines[0], lines[0]
    assert _listing(corpus) == before, "the command left something behind"

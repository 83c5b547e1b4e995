"""Inference from one radiograph: outputs, geometry, schema, domain mapping and bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from probe_heads import PATHOLOGIES, random_probe_heads
from XrayWorldModel.cli import main
from XrayWorldModel.data import ViewSampling
from XrayWorldModel.infer import domain_reference, run_inference, to_model_input
from XrayWorldModel.infer.domain import FlippedImageWarning
from XrayWorldModel.infer.outputs import load_schema
from XrayWorldModel.infer.scale import PA_MAGNIFICATION
from XrayWorldModel.infer.pipeline import imagine_views, wrap_delta
from XrayWorldModel.io import read_ct
from XrayWorldModel.models import WorldModel
from XrayWorldModel.radiograph import Radiograph
from XrayWorldModel.config import load_config
from XrayWorldModel.data.views import render_views
from XrayWorldModel.weights.model_file import save_model_file

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (test extra) validates results.json")

TINY = {"image_size": 32, "patch_size": 8, "patch_width": 0, "embed_dim": 32, "depth": 1, "heads": 2,
        "transition_depth": 1, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2,
        "decoder_channels": 4}


@pytest.fixture(scope="module")
def tiny_config():
    cfg = load_config("cpu-small", [f"model.{k}={v}" for k, v in TINY.items()]
                      + ["views.image_size=32"])
    return cfg


@pytest.fixture(scope="module")
def phantom_frontals(tiny_config):
    from XrayWorldModel.phantom import procedural_chest
    vols = [procedural_chest(s, (64, 64, 48), (5.6, 5.6, 7.0)) for s in range(3)]
    return vols, render_views(vols, tiny_config.views, [0.0])[:, 0]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, tiny_config, phantom_frontals):
    torch.manual_seed(0)
    model = WorldModel(tiny_config.model)
    card = {"name": "tiny-test", "version": "1", "config": tiny_config.to_dict(),
            "domain": domain_reference(phantom_frontals[1]),
            "intended_use": "tests only", "heads": random_probe_heads(model)}
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    return save_model_file(path, tensors, card)


def _smooth_png(path, size: int = 64):
    """A smooth, radiograph-like 8-bit image (not noise, which the radiograph screen refuses
    before anything else is looked at)."""
    from PIL import Image
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    img = np.exp(-(x ** 2 + y ** 2) / 0.08) + 0.3 * np.cos(6 * x) ** 2
    Image.fromarray((img / img.max() * 255).astype(np.uint8)).save(path)
    return path


def test_wrap_delta():
    assert wrap_delta([0, 90, 180, 270, 360, -90]).tolist() == [0, 90, -180, -90, 0, -90]


def test_far_views_are_mirrors_of_near_ones(tiny_config):
    """Beyond +-90 deg the sweep uses the opposite view mirrored (no extrapolated rotation)."""
    model = WorldModel(tiny_config.model).eval()
    x = torch.rand(1, 1, 32, 32) * 3
    state = model.encode(x, torch.zeros(1))
    v = imagine_views(model, state, [30.0, 210.0, -60.0, 120.0])
    assert np.array_equal(v[1], v[0][:, ::-1])
    assert np.array_equal(v[3], v[2][:, ::-1])
    assert not np.allclose(v[0], v[2])


def test_domain_mapping_matches_drr_quantiles(tiny_config, phantom_frontals):
    """A radiograph-like image (any monotone display mapping of a DRR) comes back in DRR
    units: its body quantiles follow the reference's, and the padding is air (0)."""
    vols, frontals = phantom_frontals
    ref = domain_reference(frontals)
    drr = frontals[0]
    # monotone, not linear; the faint noise of a recorded image, without which the air at
    # its edges, exactly 0, would be cut off as padding (infer/padding.py)
    display = np.sqrt(drr / drr.max()) + 1e-3 * np.random.default_rng(0).random(drr.shape)
    s = tiny_config.views
    rad = Radiograph(display, (s.pixel_spacing, s.pixel_spacing), "PA")
    mi = to_model_input(rad, s, ref)
    assert mi.image.shape == (32, 32) and mi.covered.all()
    body = mi.image > ref["body_threshold"]
    q_out = np.quantile(mi.image[body], [0.1, 0.5, 0.9])
    q_ref = np.quantile(np.asarray(ref["quantiles"]), [0.1, 0.5, 0.9])
    assert np.allclose(q_out, q_ref, rtol=0.15)
    # same pixels, half the pitch: the image shrinks to half the size, times the model's
    # magnification over a PA radiograph's (its pixels span more patient), centred, air around
    small = to_model_input(Radiograph(display, (s.pixel_spacing / 2,) * 2, "PA"), s, ref)
    side = round(32 * 0.5 * (s.sdd / s.sod) / PA_MAGNIFICATION)
    assert small.covered.sum() == side * side
    assert np.all(small.image[~small.covered] == 0)


def test_lateral_radiograph_is_refused(tiny_config):
    from XrayWorldModel.errors import InputError
    rad = Radiograph(np.random.default_rng(0).random((40, 40)), (1.0, 1.0), "LL")
    with pytest.raises(InputError, match="frontal"):
        to_model_input(rad, tiny_config.views)


def test_mirrored_radiograph_warns(tiny_config, phantom_frontals):
    _, frontals = phantom_frontals
    ref = domain_reference(frontals)
    s = tiny_config.views
    mirrored = frontals[1][:, ::-1] / frontals.max()
    with pytest.warns(FlippedImageWarning):
        to_model_input(Radiograph(mirrored, (s.pixel_spacing,) * 2, "PA"), s, ref)


def test_infer_real_radiograph_outputs(tmp_path, shared_data, model_file):
    """Acceptance: the real PA radiograph (broken zero PixelSpacing) gives every output."""
    cr = shared_data / "chest_cr_pa.dcm"
    out = tmp_path / "out"
    rc = main(["infer", str(cr), "--out", str(out), "--model", str(model_file),
               "--volume-size", "40"])
    assert rc == 0
    data = json.loads((out / "results.json").read_text())
    jsonschema.validate(data, load_schema())
    assert data["model"]["name"] == "tiny-test" and len(data["model"]["sha256"]) == 64
    assert data["input"]["spacing_is_default"] is True
    assert any("spacing" in n for n in data["preprocessing"]["notes"])
    # predicted views: a NIfTI stack + PNGs at the requested angles
    from XrayWorldModel.io.drr_stack import read_drr_stack
    views, geom, _ = read_drr_stack(out / "views.nii.gz")
    assert views.shape == (3, 32, 32) and list(geom.angles) == [90.0, 180.0, 270.0]
    assert np.isfinite(views).all() and views.min() >= 0
    assert len(data["views"]["pngs"]) == 3
    # volume: HU, 40^3, LPS affine of the results, behind the PA detector plane
    vol = read_ct(out / "volume.nii.gz")
    assert vol.shape == (40, 40, 40)
    assert np.allclose(vol.affine, np.asarray(data["volume"]["affine_lps"]), atol=1e-3)
    assert vol.array.min() >= -1024 and vol.array.max() <= 3071
    corners = np.array([[i, j, k, 1] for i in (0, 39) for j in (0, 39) for k in (0, 39)]) @ vol.affine.T
    s = ViewSampling(**{**load_config("cpu-small").views.__dict__, "image_size": 32})
    detector_y = -(s.sdd - s.sod)          # PA: the detector is anterior (-y in LPS)
    assert corners[:, 1].min() > detector_y
    assert -1 <= data["consistency"]["ncc"] <= 1
    assert data["timings_s"]["total"] > 0
    # trust: this model file has no OOD reference, so the verdict is the consistency alone
    trust, scores = data["trust"], data["scores"]
    assert trust["reference"] is False and trust["ood_score"] is None
    assert any("no out-of-distribution reference" in r for r in trust["reasons"])
    assert trust["consistency"] == data["consistency"]["ncc"]
    assert trust["in_distribution"] == (trust["consistency"] >= trust["min_consistency"])
    if trust["in_distribution"]:
        assert scores["withheld"] is None and sorted(scores["pathologies"]) == sorted(PATHOLOGIES)
    else:
        assert scores["pathologies"] is None and scores["risk"] is None
        assert "consistency" in scores["withheld"]
    # forced: the scores come back, marked, clipped, each with its logit
    forced = tmp_path / "forced"
    assert main(["infer", str(cr), "--out", str(forced), "--model", str(model_file),
                 "--volume-size", "24", "--uncertainty", "0", "--force-scores"]) == 0
    f = json.loads((forced / "results.json").read_text())
    jsonschema.validate(f, load_schema())
    s = f["scores"]
    assert s["withheld"] is None and s["forced"] == (not f["trust"]["in_distribution"])
    assert sorted(s["pathologies"]) == sorted(PATHOLOGIES)
    for name, p in s["pathologies"].items():
        assert 1e-3 <= p <= 1 - 1e-3
        unclipped = 1 / (1 + np.exp(-s["pathology_logits"][name]))
        assert p == pytest.approx(min(max(unclipped, 1e-3), 1 - 1e-3), abs=1e-9)
    assert 1e-3 <= s["risk"] <= 1 - 1e-3 and "hazard_ratio" in s["risk_details"]


def test_infer_rejects_ct_dicom(tmp_path, capsys, model_file):
    """A CT DICOM given to infer: one line, exit 2, nothing written."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = np.zeros((16, 16), np.int16).tobytes()
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    out = tmp_path / "out"
    assert main(["infer", str(path), "--out", str(out), "--model", str(model_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ct.dcm" in err[0] and "CT" in err[0]
    assert not (out / "results.json").exists()


@pytest.mark.parametrize("damage", ["flip", "truncate", "newer"])
def test_infer_rejects_bad_model_files(tmp_path, capsys, model_file, damage):
    bad = tmp_path / "bad.safetensors"
    raw = bytearray(Path(model_file).read_bytes())
    if damage == "flip":
        raw[-5] ^= 0xFF
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:   # a card from a newer, incompatible format
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        card = json.loads(header["__metadata__"]["xray2xray_card"])
        card["format_version"] = 99
        header["__metadata__"]["xray2xray_card"] = json.dumps(card)
        text = json.dumps(header).encode()
        text += b" " * ((8 - len(text) % 8) % 8)
        raw = len(text).to_bytes(8, "little") + text + raw[8 + n:]
    bad.write_bytes(bytes(raw))
    img = tmp_path / "cxr.png"
    from PIL import Image
    _smooth_png(img)
    assert main(["infer", str(img), "--out", str(tmp_path / "o"), "--model", str(bad)]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if "error" in l]
    assert len(err) == 1 and "bad.safetensors" in err[-1]
    if damage == "newer":
        assert "newer" in err[-1]


def test_run_inference_api_and_bad_volume_size(model_file, phantom_frontals, tiny_config):
    from XrayWorldModel.errors import InputError
    _, frontals = phantom_frontals
    s = tiny_config.views
    rad = Radiograph(frontals[2] / frontals.max(), (s.pixel_spacing,) * 2, "PA")
    res = run_inference(rad, model_file, views=(90,), volume_size=24)
    assert res.views.shape == (1, 32, 32) and res.volume.shape == (24, 24, 24)
    assert set(res.timings) >= {"load", "preprocess", "encode", "views", "reconstruct", "heads",
                                "consistency", "total"}
    with pytest.raises(InputError, match="volume size"):
        run_inference(rad, model_file, volume_size=4)


def test_demo_writes_report_and_results(tmp_path, model_file):
    """`xray2xray demo` on the built-in phantom: a one-page report and valid results."""
    from PIL import Image
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--model", str(model_file), "--volume-size", "32"]) == 0
    data = json.loads((out / "results.json").read_text())
    jsonschema.validate(data, load_schema())
    assert data["input"]["path"].startswith("procedural chest")
    # the phantom's DRR is already in the model's units: no intensity mapping note
    assert not any("mapping" in n for n in data["preprocessing"]["notes"])
    with Image.open(out / "report.png") as im:
        assert im.format == "PNG" and im.width >= 600 and im.height >= 600
        px = np.asarray(im.convert("L"), dtype=np.float64)
    assert px.std() > 20            # a page with images on it, not a blank canvas


def test_refinement_brings_the_volume_closer_to_the_imagined_views(tiny_config):
    """SIRT after FDK (``refine_iterations``) lowers the mismatch between the volume's
    projections and the imagined sweep it was reconstructed from."""
    from XrayWorldModel.drr import DRRRenderer
    from XrayWorldModel.infer.pipeline import isocentric_geometry, reconstruct
    torch.manual_seed(1)
    model = WorldModel(tiny_config.model).eval()
    s = tiny_config.views
    state = model.encode(torch.rand(1, 1, 32, 32) * 3, torch.zeros(1))
    angles = np.arange(0.0, 360.0, 30.0)
    views = imagine_views(model, state, angles)

    def mismatch(vol):
        proj = DRRRenderer(vol, "fast", "cpu", s.mu_water).render(isocentric_geometry(s, angles))
        return float(np.mean((proj - views) ** 2))
    plain = reconstruct(model, state, s, 32, 30.0)
    refined = reconstruct(model, state, s, 32, 30.0, refine_iterations=3)
    assert refined.shape == plain.shape and np.allclose(refined.affine, plain.affine)
    assert mismatch(refined) < 0.97 * mismatch(plain)


def test_stated_spacing_and_magnification_are_used_and_recorded(tmp_path, model_file,
                                                              tiny_config, phantom_frontals):
    """``infer --pixel-spacing --magnification`` on a PNG (which has neither): both used over
    the defaults, recorded as the user's, and the pixel brought to the model's magnification
    by their ratio."""
    from PIL import Image
    drr = phantom_frontals[1][0]
    img = tmp_path / "cxr.png"
    Image.fromarray((np.sqrt(drr / drr.max()) * 255).astype(np.uint8)).resize((128, 128)).save(img)
    out = tmp_path / "o"
    assert main(["infer", str(img), "--out", str(out), "--model", str(model_file),
                 "--volume-size", "32", "--uncertainty", "0", "--pixel-spacing", "3.5",
                 "--magnification", "1.16"]) == 0
    data = json.loads((out / "results.json").read_text())
    jsonschema.validate(data, load_schema())
    spacing = data["preprocessing"]["spacing"]
    views = tiny_config.views
    assert spacing["source"] == "user" and spacing["used_mm"] == [3.5, 3.5]
    assert spacing["magnification"] == 1.16 and spacing["magnification_source"] == "user"
    assert spacing["model_detector_mm"][1] == pytest.approx(3.5 * views.sdd / views.sod / 1.16)
    assert data["input"]["spacing_is_default"] is False
    assert any("given" in n and "3.5 mm" in n for n in data["preprocessing"]["notes"])


@pytest.mark.parametrize("argv, says", [
    (["--magnification", "3"], "magnification lies above 1 and at most 2"),
    (["--magnification", "1"], "magnification lies above 1 and at most 2"),
    (["--pixel-spacing", "-0.2"], "pixel spacing must be a positive number"),
    (["--pixel-spacing", "0.001"], "too small for a chest; give its pixel spacing"),
])
def test_bad_stated_geometry_is_refused_in_one_line(tmp_path, capsys, model_file, argv, says):
    """A magnification outside (1, 2], a spacing that is not positive, or one at which the
    image would cover almost none of the model's field: one line, exit 2, nothing written."""
    img = _smooth_png(tmp_path / "cxr.png")
    out = tmp_path / "o"
    assert main(["infer", str(img), "--out", str(out), "--model", str(model_file), *argv]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if "error" in l]
    assert len(err) == 1 and says in err[0], err
    assert not (out / "results.json").exists()


def test_bad_sweep_step_is_refused_in_one_line(tmp_path, capsys, model_file):
    """A sweep step that does not divide the circle: one line, exit 2, nothing written."""
    img = tmp_path / "cxr.png"
    from PIL import Image
    _smooth_png(img)
    out = tmp_path / "o"
    assert main(["infer", str(img), "--out", str(out), "--model", str(model_file),
                 "--sweep-step", "7"]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if "error" in l]
    assert len(err) == 1 and "sweep step" in err[0]
    assert not (out / "results.json").exists()


def test_bright_collimator_bands_are_found_even_under_a_marker_and_nothing_else():
    """collimator_bands: white bands along the top (a burned-in marker on it) and the right
    are found row by row and column by column; the body, the air and a dark band at the
    bottom (which cannot be told from air) are not."""
    from XrayWorldModel.infer.domain import collimator_bands
    yy, xx = np.mgrid[:64, :64]
    chest = np.clip(3.0 - ((yy - 34) ** 2 + (xx - 30) ** 2) / 200.0, 0.0, None)
    image = chest.copy()
    image[:5] = 5.0
    image[2, 10:13] = 4.0                      # a marker on the band
    image[:, 60:] = 5.0
    image[61:] = 0.0                           # a dark shutter: left in
    covered = np.ones((64, 64), bool)
    want = np.zeros((64, 64), bool)
    want[:5] = True
    want[:, 60:] = True
    np.testing.assert_array_equal(collimator_bands(image, covered, air=0.3), want)
    assert not collimator_bands(chest, covered, 0.3).any()
    s = ViewSampling(image_size=64)             # and the input path records them
    mi = to_model_input(Radiograph(image, (s.pixel_spacing,) * 2, "PA", {"units": "line_integral"}),
                        s, check_spacing=False, place=False)
    assert mi.bands[:4].all() and mi.bands[8:56, 8:56].sum() == 0
    assert any("collimator bands" in n for n in mi.notes) and mi.to_dict()["collimator_band_fraction"] > 0


def test_consistency_leaves_the_collimator_bands_out(tiny_config):
    """A model input that is exactly the volume's frontal DRR but for a white band along its
    top: the consistency score is still 1, as it would not be were the band counted."""
    from XrayWorldModel.infer.domain import ModelInput, collimator_bands
    from XrayWorldModel.infer.pipeline import consistency_score, isocentric_geometry
    from XrayWorldModel.drr import DRRRenderer
    from XrayWorldModel.infer.prior import centred
    from XrayWorldModel.phantom import procedural_chest
    views = tiny_config.views
    vol = centred(procedural_chest(5003, (48, 48, 40), (7.5, 7.5, 9.0)))
    drr = DRRRenderer(vol, "fast", "cpu", views.mu_water).render(
        isocentric_geometry(views, [0.0]))[0]
    image = drr.copy()
    image[:views.image_size // 8] = 1.3 * drr.max()
    covered = np.ones(image.shape, bool)
    banded = ModelInput(image, covered, 1.0, [], bands=collimator_bands(image, covered,
                                                                         0.05 * drr.max()))
    assert banded.bands.sum() == (views.image_size // 8) * image.shape[1]
    assert consistency_score(vol, banded, views) > 0.999
    assert consistency_score(vol, ModelInput(image, covered, 1.0, []), views) < 0.9


def _summary(out):
    import csv
    with open(out / "summary.csv", newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f)}


def test_infer_on_a_folder_goes_on_past_a_bad_file_and_resumes(tmp_path, capsys, model_file):
    """A folder: one output folder per radiograph (distinct where stems clash), a refused
    file recorded and not fatal, other files ignored; a rerun keeps what is done and redoes
    what is missing or came from a file that has changed since."""
    from PIL import Image
    src = tmp_path / "cxrs"
    src.mkdir()
    _smooth_png(src / "a.png")
    Image.open(src / "a.png").convert("L").save(src / "a.jpg", quality=95)
    _smooth_png(src / "b.png", size=80)
    (src / "broken.png").write_bytes((src / "a.png").read_bytes()[:40])
    (src / "notes.txt").write_text("not a radiograph")
    _smooth_png(src / ".hidden.png")
    out = tmp_path / "out"
    argv = ["infer", str(src), "--out", str(out), "--model", str(model_file),
            "--volume-size", "24", "--uncertainty", "0", "--pixel-spacing", "5"]
    assert main(argv) == 2                  # one file refused: the batch says so at the end
    err = capsys.readouterr().err
    assert "broken.png" in err and "1 of 4 radiographs refused" in err
    rows = _summary(out)
    assert sorted(rows) == ["a.jpg", "a.png", "b.png", "broken.png"]
    assert rows["broken.png"]["status"] == "refused" and rows["broken.png"]["reason"]
    assert not (out / "broken").exists()
    assert {rows[f]["output"] for f in ("a.jpg", "a.png", "b.png")} == {"a_jpg", "a_png", "b"}
    for name in ("a.jpg", "a.png", "b.png"):
        row = rows[name]
        data = json.loads((out / row["output"] / "results.json").read_text())
        jsonschema.validate(data, load_schema())
        assert Path(data["input"]["path"]).name == name and row["status"] == "done"
        assert float(row["consistency"]) == pytest.approx(data["consistency"]["ncc"], abs=5e-4)
        assert row["in_distribution"] == str(data["trust"]["in_distribution"]).lower()
    kept = (out / "a_png" / "results.json").stat().st_mtime_ns
    import shutil
    shutil.rmtree(out / "a_jpg")            # lost: redone
    _smooth_png(src / "b.png", size=96)     # changed since: redone, not kept
    (src / "broken.png").unlink()
    assert main(argv) == 0
    rows = _summary(out)
    assert {f: r["status"] for f, r in rows.items()} == {"a.jpg": "done", "a.png": "kept",
                                                         "b.png": "done"}
    assert (out / "a_png" / "results.json").stat().st_mtime_ns == kept
    assert json.loads((out / "b" / "results.json").read_text())["input"]["shape"] == [96, 96]


def test_infer_on_a_folder_refuses_a_bad_model_or_no_radiographs_before_any_file(
        tmp_path, capsys, model_file):
    src = tmp_path / "cxrs"
    src.mkdir()
    (src / "notes.txt").write_text("no radiographs here")
    out = tmp_path / "out"
    assert main(["infer", str(src), "--out", str(out), "--model", str(model_file)]) == 2
    assert "holds no radiograph files" in capsys.readouterr().err
    _smooth_png(src / "a.png")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(Path(model_file).read_bytes()[:1000])
    assert main(["infer", str(src), "--out", str(out), "--model", str(bad)]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if "error" in l]
    assert len(err) == 1 and "bad.safetensors" in err[0]
    assert not out.exists() or not any(out.iterdir())

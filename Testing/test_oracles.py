"""Oracle tests for the numbers users read: each compares the code with an independent
truth (a closed form, a phantom's own projection, a recomputation by another path), so a
plausible-looking wrong answer fails. ``Testing/mutations`` checks that they do.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from XrayWorldModel.config import load_config
from XrayWorldModel.drr import DRRRenderer
from XrayWorldModel.geometry import ProjectionGeometry
from XrayWorldModel.infer.domain import ModelInput
from XrayWorldModel.infer.pipeline import consistency_score
from XrayWorldModel.io import read_ct
from XrayWorldModel.phantom import procedural_chest
from XrayWorldModel.volume import Volume

CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"


# ----------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("tilt", [15.0, -15.0])
def test_tilt_moves_the_source_towards_the_head_by_the_analytic_amount(tilt):
    """DESIGN.md: positive tilt moves the source towards the head (+S in LPS). At 0 deg the
    source sits posterior (+P); tilting by t puts it at c + SOD (0, cos t, sin t)."""
    c = np.array([5.0, -7.0, 11.0])
    g = ProjectionGeometry(angles=(0.0, 90.0), sod=1000.0, sdd=1500.0, tilt=tilt, isocenter=tuple(c))
    t = math.radians(tilt)
    expected_pa = c + 1000.0 * np.array([0.0, math.cos(t), math.sin(t)])
    expected_lat = c + 1000.0 * np.array([-math.cos(t), 0.0, math.sin(t)])
    np.testing.assert_allclose(g.source_positions(), [expected_pa, expected_lat], atol=1e-9)
    np.testing.assert_allclose(g.detector_centers()[0], c - 500.0 * (expected_pa - c) / 1000.0,
                               atol=1e-9)


# ------------------------------------------------------------------------- DICOM series
def _write_slice(path: Path, pixels: np.ndarray, position, row_dir, col_dir, spacing, series_uid,
                 study_uid, number: int) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CT_SOP_CLASS, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.Modality = "CT"
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_dir, *col_dir)]
    ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]   # row spacing, column spacing
    ds.SliceThickness = f"{spacing[2]:.6f}"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_series(folder: Path, hu: np.ndarray, affine: np.ndarray, rng) -> None:
    """Slices of ``hu`` (x = column, y = row, z = slice) named by random UIDs, written in a
    shuffled order, so neither names nor write order reveal the slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    direction = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    series, study = generate_uid(), generate_uid()
    for k in rng.permutation(hu.shape[2]):
        position = affine[:3, :3] @ np.array([0.0, 0.0, float(k)]) + affine[:3, 3]
        _write_slice(folder / f"{generate_uid()}.dcm", hu[:, :, k].T, position, direction[:, 0],
                     direction[:, 1], spacing, series, study, int(rng.integers(1, 10_000)))


def _oblique(seed: int, spacing) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    if np.linalg.det(q) < 0:
        q[:, 2] *= -1
    affine = np.eye(4)
    affine[:3, :3] = q @ np.diag(spacing)
    affine[:3, 3] = [-120.5, 80.25, -300.0]
    return affine


@pytest.mark.parametrize("oblique", [False, True], ids=["axial", "oblique"])
def test_dicom_series_with_uid_names_is_stacked_by_position(tmp_path, oblique):
    rng = np.random.default_rng(3)
    hu = rng.integers(-1000, 1500, size=(12, 10, 9)).astype(np.int16)
    spacing = (0.75, 0.9, 2.5)
    affine = _oblique(1, spacing) if oblique else np.diag([*spacing, 1.0])
    if not oblique:
        affine[:3, 3] = [-10.0, 20.0, 30.0]
    write_series(tmp_path / "series", hu, affine, rng)
    vol = read_ct(tmp_path / "series")
    np.testing.assert_array_equal(vol.array, hu)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-4)


# -------------------------------------------------------------------------- consistency
@pytest.fixture(scope="module")
def sampling():
    return load_config("cpu-small").views


def _centred_chest(seed: int) -> Volume:
    vol = procedural_chest(seed, (96, 96, 72), (3.6, 3.6, 4.6))
    affine = vol.affine.copy()
    affine[:3, 3] -= vol.center
    return Volume(vol.array, affine)


def _drr(volume: Volume, sampling, angle: float) -> np.ndarray:
    geometry = sampling.geometry([angle], 0.0, (0.0, 0.0, 0.0))
    return DRRRenderer(volume, "fast", "cpu", sampling.mu_water).render(geometry)[0]


def _input(image: np.ndarray) -> ModelInput:
    return ModelInput(image.astype(np.float32), np.ones(image.shape, bool), 1.0, [])


def test_consistency_is_high_for_a_volume_and_its_own_frontal_view(sampling):
    """The volume re-projected at 0 deg against the volume's own PA DRR: NCC ~ 1. A lateral
    view, a shifted view or noise as the input score clearly lower."""
    vol = _centred_chest(0)
    frontal = _drr(vol, sampling, 0.0)
    own = consistency_score(vol, _input(frontal), sampling)
    assert own > 0.95
    lateral = consistency_score(vol, _input(_drr(vol, sampling, 90.0)), sampling)
    shifted = consistency_score(vol, _input(np.roll(frontal, 10, axis=1)), sampling)
    noise = consistency_score(vol, _input(np.random.default_rng(0).random(frontal.shape)), sampling)
    assert lateral < own - 0.1 and shifted < own - 0.1 and noise < 0.3, (own, lateral, shifted, noise)


# ------------------------------------------------------------------ scores and the prior
TINY = {"image_size": 32, "patch_size": 8, "patch_width": 0, "embed_dim": 32, "depth": 1,
        "heads": 2, "transition_depth": 1, "decoder_dim": 32, "decoder_depth": 1,
        "decoder_heads": 2, "decoder_channels": 4}


@pytest.fixture(scope="module")
def tiny():
    """A tiny untrained model with real probe heads in its card, and a phantom DRR input."""
    from probe_heads import random_probe_heads
    from XrayWorldModel.infer import domain_reference
    from XrayWorldModel.models import WorldModel
    cfg = load_config("cpu-small", [f"model.{k}={v}" for k, v in TINY.items()] + ["views.image_size=32"])
    torch.manual_seed(0)
    model = WorldModel(cfg.model).eval()
    vol = _centred_chest(1)
    frontal = _drr(vol, cfg.views, 0.0)
    card = {"name": "tiny-oracle", "version": "1", "config": cfg.to_dict(),
            "domain": domain_reference(frontal[None]), "heads": random_probe_heads(model)}
    return model, card, cfg.views, frontal


def _radiograph(image: np.ndarray, sampling):
    from XrayWorldModel.infer.domain import LINE_INTEGRAL
    from XrayWorldModel.radiograph import Radiograph
    du = sampling.field_of_view_mm / sampling.image_size
    return Radiograph(image.astype(np.float32), (du, du), view_position="PA",
                      metadata={"units": LINE_INTEGRAL})


def _logistic(head, features):
    z = (features - np.asarray(head["mean"])) / np.asarray(head["scale"])
    return 1.0 / (1.0 + np.exp(-(z @ np.asarray(head["coef"]).T + np.asarray(head["intercept"]))))


def test_scores_are_the_card_heads_on_the_inputs_features(tiny):
    """Recompute every score from the model's primitives and the heads' coefficients: the
    state of the model input at 0 deg, stepped to each imagined angle, token-averaged."""
    from XrayWorldModel.infer import run_inference
    from XrayWorldModel.infer.domain import to_model_input
    model, card, sampling, frontal = tiny
    rad = _radiograph(frontal, sampling)
    result = run_inference(rad, (model, card), views=[], volume_size=32, sweep_step=30.0)
    image = to_model_input(rad, sampling, card["domain"]).image
    with torch.no_grad():
        state = model.encode(torch.from_numpy(image)[None, None], torch.zeros(1))
        parts = [state.mean(dim=1)]
        for angle in card["heads"]["pathology"]["features"]["imagined"]:
            parts.append(model.step(state, torch.tensor([float(angle)]), torch.zeros(1)).mean(dim=1))
    features = torch.cat(parts, dim=1).double().numpy()
    head = card["heads"]["pathology"]["heads"][0]
    expected = dict(zip(head["labels"], _logistic(head, features)[0]))
    assert result.scores["pathologies"].keys() == expected.keys()
    for name, p in expected.items():
        assert result.scores["pathologies"][name] == pytest.approx(p, rel=1e-4, abs=1e-6)
    event_head = card["heads"]["risk"]["heads"][0]
    assert result.scores["risk"] == pytest.approx(_logistic(event_head, features)[0, 0], rel=1e-4)


def test_reconstruction_uses_the_prior_it_is_given(tiny):
    """With a prior, the volume is the prior's own residual reconstruction of the imagined
    sweep (recomputed here from its parts) and differs from plain FDK of the same views."""
    from XrayWorldModel.infer.pipeline import imagine_views, reconstruct
    from XrayWorldModel.infer.prior import VolumePrior, fov_grid
    from XrayWorldModel.recon import mu_to_hu
    model, card, sampling, frontal = tiny
    n = sampling.image_size
    geometry0 = sampling.geometry([0.0], 0.0, (0.0, 0.0, 0.0))
    prior = VolumePrior.from_volumes([_centred_chest(s) for s in (2, 3)], geometry0, n, source="test")
    with torch.no_grad():
        state = model.encode(torch.from_numpy(frontal)[None, None], torch.zeros(1))
    with_prior = reconstruct(model, state, sampling, n, 30.0, prior=prior)
    without = reconstruct(model, state, sampling, n, 30.0, prior=None)
    angles = np.arange(0.0, 360.0, 30.0)
    sweep = sampling.geometry(list(angles), 0.0, (0.0, 0.0, 0.0))
    mu = prior.reconstruct(imagine_views(model, state, angles), sweep, fov_grid(sweep, n),
                           sampling.mu_water)
    expected = np.clip(mu_to_hu(mu, sampling.mu_water), -1024.0, 3071.0)
    inside = with_prior.array > -1024.0
    assert inside.mean() > 0.5
    np.testing.assert_allclose(with_prior.array[inside], expected[inside], atol=0.5)
    assert np.abs(with_prior.array - without.array)[inside].mean() > 20.0


# ------------------------------------------------------------------- evaluation metrics
class LookupModel(torch.nn.Module):
    """A stand-in world model whose prediction is chosen by the test: the truth itself, or
    one fixed image per target angle. It has one parameter so scoring can find its device."""

    def __init__(self, views_by_angle):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.views_by_angle = views_by_angle          # angle -> [N, H, W] or [H, W]

    def predict_view(self, ctx, a0, at):
        out = []
        for n, angle in enumerate(at.tolist()):
            v = np.asarray(self.views_by_angle[round(angle, 6)])
            out.append(v[n] if v.ndim == 3 else v)
        return torch.from_numpy(np.stack(out)[:, None].astype(np.float32))


TARGETS = [90.0, 45.0]


def _sources(tmp_path):
    """The same three phantoms as a CT view source and as a DRR-stack view source."""
    from XrayWorldModel.data import DRRStackSet, RenderedViewSet
    from XrayWorldModel.io.drr_stack import write_drr_stack
    from XrayWorldModel.data import ViewSampling
    s = ViewSampling(image_size=32, field_of_view_mm=400.0)
    vols = [_centred_chest(seed) for seed in (11, 12, 13)]
    stack_angles = [0.0, 45.0, 90.0, 180.0]
    for k, vol in enumerate(vols):
        geometry = s.geometry(stack_angles, 0.0, (0.0, 0.0, 0.0))
        drrs = DRRRenderer(vol, "fast", "cpu", s.mu_water).render(geometry)
        write_drr_stack(drrs, geometry, tmp_path / f"case{k}.nii.gz")
    return {"ct": RenderedViewSet(vols, s, "cpu"), "stacks": DRRStackSet(str(tmp_path), s)}


@pytest.mark.parametrize("kind", ["ct", "stacks"])
def test_scoring_gives_the_truth_infinite_psnr_and_the_mean_view_its_own_row(tmp_path, kind):
    """eval-views' numbers: a model that returns the true view scores PSNR = inf and SSIM = 1;
    a model that returns the mean view scores exactly the mean-view baseline's row."""
    from XrayWorldModel.train.evaluate import score_views
    source = _sources(tmp_path)[kind]
    true = source.true_views(0.0, TARGETS)
    mean = source.mean_views(TARGETS, 16)
    truth = LookupModel({round(float(a), 6): true.views[:, t + 1]
                         for t, a in enumerate(true.angles[0, 1:])})
    perfect = score_views(truth, source, TARGETS, mean)
    for angle in TARGETS:
        row = perfect[f"{angle:g}"]
        assert row["world_model_psnr"] == float("inf") and row["world_model_ssim"] == pytest.approx(1.0)
        assert np.isfinite(row["mean_view_psnr"]) and row["mean_view_ssim"] < 0.999
    as_mean = score_views(LookupModel({round(a, 6): mean[a] for a in TARGETS}), source, TARGETS, mean)
    for angle in TARGETS:
        row = as_mean[f"{angle:g}"]
        assert row["world_model_psnr"] == row["mean_view_psnr"]
        assert row["world_model_ssim"] == row["mean_view_ssim"]
        assert row["copy_input_psnr"] != row["mean_view_psnr"]

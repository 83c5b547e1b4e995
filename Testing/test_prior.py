"""The volume prior: reconstruction on the mean CT, its storage in model files, the shipped
model's prior, and the paired statistics eval-volume reports."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from XrayWorldModel.data import ViewSampling
from XrayWorldModel.drr.render import project
from XrayWorldModel.infer.evaluate import paired_difference, volume_scores, evaluation_cylinder
from XrayWorldModel.infer.pipeline import isocentric_geometry
from XrayWorldModel.infer.prior import (CARD_KEY, TENSOR_KEY, VolumePrior, centred, fov_grid,
                                        resample_like)
from XrayWorldModel.phantom import procedural_chest
from XrayWorldModel.recon import mu_to_hu
from XrayWorldModel.weights.model_file import load_model_file, read_card, save_model_file

N = 32
SAMPLING = ViewSampling(image_size=32)


@pytest.fixture(scope="module")
def chests():
    return [procedural_chest(s, (64, 64, 48), (5.6, 5.6, 7.0)) for s in range(6)]


@pytest.fixture(scope="module")
def prior(chests):
    return VolumePrior.from_volumes(chests[:4], isocentric_geometry(SAMPLING, [0.0]), N, source="test")


def _sweep(step=30.0):
    angles = np.arange(0.0, 360.0, step)
    return angles, isocentric_geometry(SAMPLING, angles)


def _mu(hu):
    return np.clip((hu / 1000.0 + 1.0) * SAMPLING.mu_water, 0, None).astype(np.float32)


def test_prior_is_the_mean_of_centred_ct(chests, prior):
    grid = fov_grid(isocentric_geometry(SAMPLING, [0.0]), N)
    expected = np.mean([resample_like(centred(v), grid) for v in chests[:4]], axis=0)
    assert prior.hu.shape == (N, N, N) and prior.n_volumes == 4
    np.testing.assert_allclose(prior.hu, expected, atol=1e-3)
    # centred: the body sits in the middle of the grid, air in the corners
    assert prior.hu[N // 2, N // 2, N // 2] > -500 and prior.hu[0, 0, N // 2] < -900


def test_prior_without_any_ct_is_refused_in_one_line():
    from XrayWorldModel.errors import InputError
    with pytest.raises(InputError, match="at least one readable training CT"):
        VolumePrior.from_volumes([], isocentric_geometry(SAMPLING, [0.0]), N)


def test_views_that_agree_with_the_prior_leave_it_unchanged(prior):
    angles, g = _sweep()
    grid = fov_grid(g, N)
    own = project(torch.from_numpy(_mu(prior.hu)), grid.affine, g).numpy()
    mu = prior.reconstruct(own, g, grid, SAMPLING.mu_water)
    np.testing.assert_allclose(mu, _mu(prior.hu), atol=1e-6)


def test_true_views_move_the_prior_towards_the_truth(chests, prior):
    angles, g = _sweep()
    grid = fov_grid(g, N)
    mask = evaluation_cylinder((N, N, N))
    for chest in chests[4:]:
        true_hu = resample_like(centred(chest), grid)
        views = project(torch.from_numpy(_mu(true_hu)), grid.affine, g).numpy()
        hu = mu_to_hu(prior.reconstruct(views, g, grid, SAMPLING.mu_water), SAMPLING.mu_water)
        on_prior = volume_scores(hu, true_hu, mask)["pearson_r"]
        prior_only = volume_scores(prior.hu, true_hu, mask)["pearson_r"]
        assert on_prior > prior_only + 0.005, (on_prior, prior_only)


def test_prior_round_trips_through_a_model_file(tmp_path, prior):
    path = save_model_file(tmp_path / "m.safetensors", {"model.w": torch.ones(2), **prior.tensors()},
                           {"name": "m", "version": "1", CARD_KEY: prior.card_entry()})
    tensors, card = load_model_file(path)             # the digest covers the prior too
    assert tensors[TENSOR_KEY].dtype == torch.float16
    back = VolumePrior.from_model_file(path, card)
    np.testing.assert_allclose(back.hu, prior.hu, atol=0.6)   # float16 at ~1000 HU
    assert (back.residual_weight, back.smoothing_voxels, back.n_volumes) == \
        (prior.residual_weight, prior.smoothing_voxels, 4)
    plain = save_model_file(tmp_path / "p.safetensors", {"model.w": torch.ones(2)},
                            {"name": "p", "version": "1"})
    assert VolumePrior.from_model_file(plain, read_card(plain)) is None
    assert VolumePrior.from_model_file(None, card) is None     # a checkpoint: no file prior


def test_a_prior_marked_unused_travels_in_the_file_but_infer_ignores_it(tmp_path, prior):
    unused = VolumePrior(prior.hu, prior.n_volumes, source="test", used=False,
                         validation={"r_on_prior": 0.5, "r_views_only": 0.6, "used": False})
    path = save_model_file(tmp_path / "u.safetensors", {"model.w": torch.ones(2), **unused.tensors()},
                           {"name": "u", "version": "1", CARD_KEY: unused.card_entry()})
    card = read_card(path)
    assert VolumePrior.from_model_file(path, card) is None          # what infer reconstructs on
    kept = VolumePrior.from_model_file(path, card, include_unused=True)
    assert kept is not None and not kept.used and kept.validation["r_views_only"] == 0.6


def test_prior_validation_keeps_a_prior_only_where_it_beats_the_views_alone(chests):
    """Oracle: with no residual laid on it, a prior that is the truth itself must win over
    any imagined views, and one with the truth's contrast inverted must lose."""
    from test_train import TINY
    from XrayWorldModel.config import TrainConfig
    from XrayWorldModel.infer.evaluate import prior_validation
    from XrayWorldModel.models import WorldModel
    cfg = TrainConfig.from_dict(TINY)
    torch.manual_seed(0)
    model = WorldModel(cfg.model).eval()
    chest = chests[5]
    g0 = isocentric_geometry(cfg.views, [0.0])
    truth = VolumePrior.from_volumes([chest], g0, 32, residual_weight=0.0, smoothing_voxels=0.0)
    inverted = VolumePrior(-1000.0 - truth.hu, 1, residual_weight=0.0, smoothing_voxels=0.0)
    good = prior_validation(model, cfg.views, truth, [chest], "test", volume_size=32)
    bad = prior_validation(model, cfg.views, inverted, [chest], "test", volume_size=32)
    assert good["used"] and good["r_on_prior"] > 0.9 and good["n_ct"] == 1
    assert not bad["used"] and bad["r_on_prior"] < good["r_views_only"] == bad["r_views_only"]


def test_shipped_model_carries_a_prior_and_infer_follows_its_card():
    from XrayWorldModel.infer.pipeline import load_inference_model, run_inference
    from XrayWorldModel.radiograph import Radiograph
    from XrayWorldModel.config import TrainConfig
    model, card, path = load_inference_model(None)
    prior = VolumePrior.from_model_file(path, card, include_unused=True)
    size = TrainConfig.from_dict(card["config"]).views.image_size
    assert prior is not None and prior.hu.shape == (size,) * 3 and prior.n_volumes >= 16
    assert 0 < prior.residual_weight <= 1
    # a soft-tissue body in air, as a chest's mean should be
    c = size // 2
    assert -300 < prior.hu[c, c, c] < 300 and prior.hu[0, 0, c] < -900
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(0.5, 0.1, (256, 256)), 0, 1)
    img[:, :40] = img[:, -40:] = 0.02
    rad = Radiograph(img, (1.4, 1.4), "PA")
    res = run_inference(rad, (model, card, path), views=[90.0], volume_size=32)
    used = card[CARD_KEY].get("used", True)
    assert (res.volume.metadata["prior"] != "none") == used
    if "validation" in card[CARD_KEY]:      # decided on validation phantoms when built
        v = card[CARD_KEY]["validation"]
        assert used == (v["r_on_prior"] > v["r_views_only"])


def test_paired_difference_mean_ci_and_wins():
    b = np.linspace(0.5, 0.9, 20)
    d = paired_difference(b + 0.01, b)
    assert d["mean"] == pytest.approx(0.01) and d["wins"] == 20 and d["n"] == 20
    assert d["ci95"] == pytest.approx([0.01, 0.01])
    noisy = b + np.where(np.arange(20) % 2, 0.02, -0.02)
    d = paired_difference(noisy, b)
    assert d["ci95"][0] < 0 < d["ci95"][1] and d["wins"] == 10

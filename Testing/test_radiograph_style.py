"""Radiograph-style augmentation of the context view (XrayWorldModel/data/radiograph_style.py):
each effect does what it says, everything is a function of the seed, it is off by default
(batches bit-identical to unaugmented ones), targets stay clean, and training runs with it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from XrayWorldModel.data import ViewRenderer, ViewSampling, sample_angles
from XrayWorldModel.data import radiograph_style as rs
from XrayWorldModel.drr import DRRRenderer
from XrayWorldModel.phantom import procedural_chest

REPO = Path(__file__).resolve().parents[1]
SAMPLING = ViewSampling(image_size=64, targets_per_context=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def chest():
    return procedural_chest(7, (64, 64, 48), (5.6, 5.6, 7.0))


@pytest.fixture(scope="module")
def drr(chest):
    """A clean frontal DRR (line integrals) at the model's 64 px detector."""
    g = SAMPLING.geometry([0.0], 0.0, chest.center)
    return DRRRenderer(chest, "fast", "cpu", SAMPLING.mu_water).render(g)[0].astype(np.float64)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _high_pass_energy(img):
    return float(np.mean(ndi.laplace(np.asarray(img, np.float64)) ** 2))


# ------------------------------------------------------------------------------ each effect
def test_every_effect_is_a_function_of_the_seed(drr):
    for effect in rs.EFFECTS:
        a = rs.radiograph_style(drr, [effect], _rng(3))
        b = rs.radiograph_style(drr, [effect], _rng(3))
        assert np.array_equal(a, b), effect
        assert a.shape == drr.shape and a.dtype == np.float32 and np.all(np.isfinite(a)), effect
        assert not np.array_equal(a, drr.astype(np.float32)), effect
    seeds = [rs.radiograph_style(drr, rs.EFFECTS, _rng(s)) for s in range(3)]
    assert not np.array_equal(seeds[0], seeds[1]) and not np.array_equal(seeds[1], seeds[2])
    with pytest.raises(ValueError, match="unknown radiograph effects"):
        rs.radiograph_style(drr, ["sepia"], _rng())


def test_lut_is_monotone_in_both_forms():
    ramp = np.linspace(0.0, 1.0, 501)[None, :]
    kinds = set()
    for seed in range(12):
        rng = _rng(seed)
        kinds.add(rng.random() < 0.5)                  # the draw that picks gamma or sigmoid
        out = rs.apply_lut(ramp, _rng(seed))
        assert np.all(np.diff(out[0]) >= 0) and out.min() >= -1e-12 and out.max() <= 1 + 1e-12
        assert not np.allclose(out, ramp)
    assert kinds == {True, False}                     # both forms were exercised


def test_collimation_zeroes_a_border_band(drr):
    display = rs.to_display(drr)
    out, (t, b, l, r) = rs.collimate(display, _rng(5), value=0.0)
    assert max(t, b, l, r) >= 2
    h, w = out.shape
    band = np.zeros_like(out, dtype=bool)
    band[:t], band[h - b:], band[:, :l], band[:, w - r:] = True, True, True, True
    assert np.all(out[band] == 0.0)
    assert np.array_equal(out[~band], display[~band])
    # through the whole chain a black band is air (0) in line integrals, a white one a
    # bright body value (the band takes the top quantiles, as at inference): either way an
    # edge row or column is constant
    bright = np.median(drr[drr > 0.05 * drr.max()])
    for seed in range(6):
        y = rs.radiograph_style(drr, ["collimation"], _rng(seed))
        edges = [y[0], y[-1], y[:, 0], y[:, -1]]
        assert any(np.ptp(e) == 0 and (e[0] == 0 or e[0] > bright) for e in edges)


def test_quantisation_leaves_at_most_256_levels(drr):
    for seed in range(4):                              # with and without JPEG
        q = rs.quantise(rs.to_display(drr), _rng(seed))
        assert np.unique(q).size <= 256
        y = rs.radiograph_style(drr, ["quantise"], _rng(seed))
        assert np.unique(y).size <= 256
    assert np.unique(drr).size > 1000                 # the clean view has many more


def test_scatter_hazes_dense_regions_most(drr):
    t = np.exp(-drr)
    with_scatter = rs.add_scatter(t, _rng(1))
    assert np.all(with_scatter >= t)
    drop = drr - (-np.log(with_scatter))               # how much each line integral fell
    dense, thin = drr > np.percentile(drr, 95), (drr > 0.5) & (drr < np.percentile(drr, 40))
    assert drop[dense].mean() > 2 * drop[thin].mean()


def test_noise_grows_with_attenuation_and_blur_removes_fine_detail(drr):
    """Quantum noise: zero-mean, and in line integrals larger behind dense tissue (fewer
    photons), as Poisson statistics say; detector blur: less fine detail."""
    t = np.exp(-drr)
    noise = -np.log(rs.add_quantum_noise(t, _rng(2))) - drr
    dense, thin = drr > np.percentile(drr, 90), (drr > 0.5) & (drr < np.percentile(drr, 40))
    assert noise[dense].std() > 2 * noise[thin].std() > 0
    assert abs(noise[dense].mean()) < 0.2 * noise[dense].std()
    assert _high_pass_energy(rs.detector_blur(drr, _rng(2))) < 0.8 * _high_pass_energy(drr)


def test_unsharp_and_equalise_raise_local_contrast(drr):
    display = rs.to_display(drr)
    assert _high_pass_energy(rs.unsharp_mask(display, _rng(4))) > _high_pass_energy(display)

    def entropy(img):
        p = np.histogram(img, bins=64, range=(0, 1))[0] / img.size
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())
    body = display > 0.05
    eq = rs.equalise(display, _rng(4))
    assert entropy(eq[body]) > entropy(display[body])


def test_markers_and_text_are_bright_pixels_near_the_edges(drr):
    expected_l = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 1]], bool)
    assert np.array_equal(rs.text_mask("L"), expected_l)
    assert rs.text_mask("L", 2).shape == (10, 6) and rs.text_mask("PA 12:04").shape == (5, 31)
    display = rs.to_display(drr) * 0.5
    out = rs.burn_in_markers(display, _rng(6))
    changed = out != display
    assert changed.sum() >= 10 and np.all(out[changed] >= 0.85)
    rows = np.nonzero(changed.any(1))[0]
    h = out.shape[0]
    assert np.all((rows < 0.35 * h) | (rows > 0.8 * h))      # top (marker) and a text line


def test_chain_output_stays_in_the_clean_views_units(drr):
    for seed in range(4):
        y = rs.radiograph_style(drr, rs.EFFECTS, _rng(seed))
        assert y.min() >= 0 and y.max() <= drr.max() * (1 + 1e-5)
        body = drr > 0.05 * drr.max()
        # the body's median stays near the clean one (the inference's quantile rule)
        assert abs(np.median(y[body]) - np.median(drr[body])) < 0.25 * np.median(drr[body])


# ------------------------------------------------------------------------- training batches
def test_off_by_default_and_context_only(chest):
    """Default: no effect, no random draw beyond the angles (so batches are bit-identical to
    what they were); on: only the context changes, angles and targets are bit-identical."""
    assert ViewSampling().radiograph_style == 0.0
    off = ViewRenderer(SAMPLING).render([chest], [_rng(9)])
    rng_used, rng_ref = _rng(9), _rng(9)
    ViewRenderer(SAMPLING).render([chest], [rng_used])
    ctx, d, _ = sample_angles(SAMPLING, rng_ref, 1)
    assert rng_used.random() == rng_ref.random()       # nothing else was drawn
    g = SAMPLING.geometry([ctx[0]], 0.0, chest.center)     # an independent render of the context
    alone = DRRRenderer(chest, "fast", "cpu", SAMPLING.mu_water).render(g)[0]
    np.testing.assert_allclose(off.context[0, 0].numpy(), alone, rtol=1e-5, atol=1e-5)
    on = ViewRenderer(replace(SAMPLING, radiograph_style=1.0)).render([chest], [_rng(9)])
    assert torch.equal(on.targets, off.targets) and torch.equal(on.deltas, off.deltas)
    assert torch.equal(on.context_angle, off.context_angle)
    assert not torch.equal(on.context, off.context)
    again = ViewRenderer(replace(SAMPLING, radiograph_style=1.0)).render([chest], [_rng(9)])
    assert torch.equal(again.context, on.context)


def test_probability_is_checked_and_evaluation_is_clean():
    from XrayWorldModel.data import clean_sampling
    from XrayWorldModel.errors import InputError
    with pytest.raises(InputError, match="radiograph_style"):
        ViewSampling(radiograph_style=1.5)
    assert clean_sampling(ViewSampling(radiograph_style=0.5)).radiograph_style == 0.0
    picks = [rs.draw_effects(0.3, _rng(s)) for s in range(200)]
    share = np.mean([len(p) for p in picks]) / len(rs.EFFECTS)
    assert 0.25 < share < 0.35


def test_stack_training_samples_get_the_style_on_the_context_only(tmp_path):
    from XrayWorldModel.cli import main
    from XrayWorldModel.data.stacks import DRRStackSet
    ct = tmp_path / "ct.nii.gz"
    assert main(["phantom", "--seed", "1", "--shape", "40", "40", "32", "--spacing", "8",
                 "--out", str(ct)]) == 0
    stack = tmp_path / "stack.nii.gz"
    assert main(["drr", str(ct), "--out", str(stack), "--angle-range", "-90", "91", "30",
                 "--detector", "32", "32", "--pixel-spacing", "15"]) == 0
    base = ViewSampling(image_size=32, field_of_view_mm=400.0, targets_per_context=2)
    clean = DRRStackSet(stack, base).sample(0, _rng(4))
    styled = DRRStackSet(stack, replace(base, radiograph_style=1.0)).sample(0, _rng(4))
    assert torch.equal(clean.targets, styled.targets)
    assert clean.context_angle == styled.context_angle
    assert not torch.equal(clean.context, styled.context)


def _tiny_config(tmp_path):
    return {"model": {"image_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "heads": 2,
                     "transition_depth": 1, "decoder_dim": 32, "decoder_depth": 1,
                     "decoder_heads": 2, "decoder_channels": 4, "n_freq": 2},
           "data": {"source": "phantom:3", "val_count": 1, "grid_size": 40, "grid_spacing": 8.0},
           "views": {"image_size": 32, "field_of_view_mm": 400.0, "targets_per_context": 2,
                     "radiograph_style": 0.5},
           "optim": {"batch_size": 4, "steps": 4, "lr": 1e-3, "warmup_steps": 1},
           "run": {"seed": 1, "device": "cpu", "log_every": 1, "val_every": 0,
                   "checkpoint_every": 4, "val_angles": [90.0]}}


@pytest.mark.slow
def test_training_steps_with_the_style_on(tmp_path, monkeypatch):
    """In process, two steps of the trainer with views.radiograph_style=1: finite losses,
    and the contexts it trains on are styled (not the clean renders)."""
    from XrayWorldModel.config import TrainConfig
    from XrayWorldModel.train.trainer import Trainer
    monkeypatch.setenv("XRAY2XRAY_CACHE", str(tmp_path / "cache"))
    data = _tiny_config(tmp_path)
    data["views"]["radiograph_style"] = 1.0
    data["optim"]["steps"] = 2
    data["run"].update(out_dir=str(tmp_path / "run"), checkpoint_every=2)
    trainer = Trainer(TrainConfig.from_dict(data))
    styled = trainer._batch(0)
    clean = replace(trainer.cfg.views, radiograph_style=0.0)
    trainer.train_data.renderer.sampling = clean
    plain = trainer._batch(0)
    trainer.train_data.renderer.sampling = trainer.cfg.views
    assert torch.equal(styled.targets, plain.targets)
    assert not torch.equal(styled.context, plain.context)
    losses = trainer.fit()                             # the last step's losses
    assert trainer.step == 2 and "total" in losses
    assert all(np.isfinite(float(v)) for v in losses.values())


@pytest.mark.slow
def test_tiny_training_run_with_the_style_on(tmp_path):
    """`xray2xray train` with views.radiograph_style=0.5: runs, losses finite, the setting
    recorded in the checkpoint's config."""
    from XrayWorldModel.train import load_checkpoint
    cfg = _tiny_config(tmp_path)
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(cfg))
    env = dict(os.environ, XRAY2XRAY_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "XrayWorldModel", "train", "--config", str(path),
                        f"run.out_dir={tmp_path / 'run'}"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    losses = [float(line.split("loss ")[1].split(",")[0]) for line in r.stderr.splitlines()
              if line.startswith("xray2xray train: step")]
    assert losses and all(np.isfinite(losses))
    _, card, _ = load_checkpoint(tmp_path / "run" / "checkpoints" / "step-0000004.safetensors")
    assert card["config"]["views"]["radiograph_style"] == 0.5


# ------------------------------------------------------------------------ a narrower field
def test_narrowed_field_keeps_one_rectangle_and_puts_air_around_it(drr):
    """What ``to_model_input`` does to a radiograph framed tighter than the model's field:
    inside a rectangle the view is untouched, outside it is air (0); the sides lose more
    than the top and bottom, within the stated ranges, and the same seed cuts the same."""
    h, w = drr.shape
    sides = []
    for seed in range(40):
        out, (t, b, l, r) = rs.narrow_field(drr, _rng(seed))
        inside = np.zeros_like(drr, bool)
        inside[t:h - b, l:w - r] = True
        np.testing.assert_array_equal(out[inside], drr[inside])
        assert not out[~inside].any()
        assert all(0 <= c <= round(rs.FIELD_CUT_SI[1] * h) for c in (t, b))
        assert all(round(rs.FIELD_CUT_LR[0] * w) <= c <= round(rs.FIELD_CUT_LR[1] * w)
                   for c in (l, r))
        sides.append((t + b, l + r))
    assert np.mean([lr for _, lr in sides]) > np.mean([si for si, _ in sides])
    np.testing.assert_array_equal(rs.narrow_field(drr, _rng(3))[0], rs.narrow_field(drr, _rng(3))[0])


def test_field_narrowing_reaches_the_context_only_and_is_off_by_default(chest):
    """On: the training context is cut (air at its edges), targets and angles are the same
    as without it; off (the default), nothing more is drawn, so existing recipes draw what
    they drew; a probability outside [0, 1] is refused, and evaluation never narrows."""
    from XrayWorldModel.data import clean_sampling
    from XrayWorldModel.errors import InputError
    assert ViewSampling().field_narrowing == 0.0
    cut_body = 0
    for seed in range(6):
        off = ViewRenderer(SAMPLING).render([chest], [_rng(seed)])
        on = ViewRenderer(replace(SAMPLING, field_narrowing=1.0)).render([chest], [_rng(seed)])
        assert torch.equal(on.targets, off.targets)
        assert torch.equal(on.context_angle, off.context_angle)
        ctx, full = on.context[0, 0].numpy(), off.context[0, 0].numpy()
        kept = ctx != 0
        np.testing.assert_array_equal(ctx[kept], full[kept])     # only ever set to air
        cut_body += int((full[~kept] > 0).sum() > 0)
    assert cut_body >= 3                                          # and mostly cut the chest
    view = torch.from_numpy(full.astype(np.float32))
    for seed in range(4):           # off: the style chain draws exactly what it drew before
        used, ref = _rng(seed), _rng(seed)
        got = rs.style_context(view, 0.5, used, 0.0).numpy()
        effects = rs.draw_effects(0.5, ref)
        want = rs.radiograph_style(full, effects, ref) if effects else full
        np.testing.assert_array_equal(got, want)
        assert used.random() == ref.random()
    with pytest.raises(InputError, match="field_narrowing"):
        ViewSampling(field_narrowing=1.5)
    assert clean_sampling(ViewSampling(field_narrowing=0.5)).field_narrowing == 0.0


def _fine_share(display, body):
    """The finest band's share of the body's contrast: what a 64-px radiograph's clinical
    processing raises and a DRR lacks."""
    return float((display - ndi.gaussian_filter(display, 1.0))[body].std() / display[body].std())


def test_fine_detail_sharpens_the_finest_scale_beyond_unsharp_masking(drr):
    """Fine detail enhancement raises the finest band's share of the contrast above the
    clean view's and above what the large-kernel unsharp masking gives, seed for seed on
    average: the gap it is there to close."""
    display = rs.to_display(drr)
    body = ndi.binary_erosion(drr > 0.05 * drr.max(), iterations=2)
    clean = _fine_share(display, body)
    fine = [_fine_share(rs.enhance_fine_detail(display, _rng(k)), body) for k in range(8)]
    large = [_fine_share(rs.unsharp_mask(display, _rng(k)), body) for k in range(8)]
    assert min(fine) > clean and np.mean(fine) > 1.3 * clean
    assert np.mean(fine) > np.mean(large) + 0.03


def test_fine_detail_reaches_the_context_only_and_is_off_by_default(chest):
    """``views.fine_detail``: off by default; on, the context gets sharper and targets stay
    the clean DRRs; checked like the other probabilities and off for evaluation."""
    from XrayWorldModel.data import clean_sampling
    from XrayWorldModel.errors import InputError
    assert ViewSampling().fine_detail == 0.0
    off = ViewRenderer(SAMPLING).render([chest], [_rng(3)])
    on = ViewRenderer(replace(SAMPLING, fine_detail=1.0)).render([chest], [_rng(3)])
    assert torch.equal(on.targets, off.targets)
    ctx, full = on.context[0, 0].numpy(), off.context[0, 0].numpy()
    body = ndi.binary_erosion(full > 0.05 * full.max(), iterations=2)
    assert _fine_share(ctx, body) > 1.2 * _fine_share(full, body)
    with pytest.raises(InputError, match="fine_detail"):
        ViewSampling(fine_detail=-0.1)
    assert clean_sampling(ViewSampling(fine_detail=0.5)).fine_detail == 0.0

"""Uncertainty maps of ``infer`` (test-time augmentation, XrayWorldModel/infer/uncertainty.py):
the perturbations and their inverse, the batched decoding, the exact linear volume deviation,
the files and their geometry, the command line, and the acceptance check that the standard
deviation of a predicted view ranks its pixels by their error against the true DRR.

The full per-angle numbers on 16 held-out phantoms (the acceptance report)::

    python Testing/test_uncertainty.py [--phantoms 16] [--first-seed 5000] [--passes 4,8]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from XrayWorldModel.cli import main
from XrayWorldModel.config import load_config
from XrayWorldModel.data import ViewSampling
from XrayWorldModel.data.views import render_views
from XrayWorldModel.drr import DRRRenderer
from XrayWorldModel.errors import InputError
from XrayWorldModel.infer import domain_reference, run_inference
from XrayWorldModel.infer import uncertainty as U
from XrayWorldModel.infer.outputs import load_schema, write_outputs
from XrayWorldModel.infer.pipeline import isocentric_geometry, load_inference_model, reconstruct
from XrayWorldModel.infer.prior import VolumePrior, fov_grid
from XrayWorldModel.io import read_ct
from XrayWorldModel.io.drr_stack import read_drr_stack
from XrayWorldModel.models import WorldModel
from XrayWorldModel.phantom import procedural_chest
from XrayWorldModel.radiograph import Radiograph
from XrayWorldModel.recon import mu_to_hu
from XrayWorldModel.volume import Volume
from XrayWorldModel.weights.model_file import save_model_file

TINY = {"image_size": 32, "patch_size": 8, "patch_width": 0, "embed_dim": 32, "depth": 1, "heads": 2,
        "transition_depth": 1, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2,
        "decoder_channels": 4}
#: Held-out phantoms: the demo model was trained on seeds 0-263 (``phantom:264``).
HELD_OUT_SEED = 5000
ANGLES = (90.0, 180.0, 270.0)


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config("cpu-small", [f"model.{k}={v}" for k, v in TINY.items()] + ["views.image_size=32"])
    torch.manual_seed(0)
    model = WorldModel(cfg.model).eval()
    vols = [procedural_chest(s, (64, 64, 48), (5.6, 5.6, 7.0)) for s in range(2)]
    frontals = render_views(vols, cfg.views, [0.0])[:, 0]
    card = {"name": "tiny-test", "version": "1", "config": cfg.to_dict(),
            "domain": domain_reference(frontals), "intended_use": "tests only"}
    return {"cfg": cfg, "model": model, "card": card, "frontal": frontals[0]}


def _radiograph(image: np.ndarray, s: ViewSampling) -> Radiograph:
    return Radiograph(image, (s.pixel_spacing, s.pixel_spacing), "PA", {"units": "line_integral"})


# ----------------------------------------------------------------------------- perturbations
def test_perturbations_follow_the_training_augmentation():
    s = ViewSampling(shift_max_mm=5.0, intensity_jitter=0.05, noise_std=0.02)
    p = U.draw_perturbations(s, 200, seed=3)
    assert len(p) == 200 and np.abs(p.shift_mm).max() <= 5.0 and np.abs(p.gain - 1).max() <= 0.05
    assert p.noise.shape == (200, 64, 64) and abs(p.noise.std() - 0.02) < 1e-3
    q = U.draw_perturbations(s, 200, seed=3)
    assert np.array_equal(p.shift_mm, q.shift_mm) and np.array_equal(p.noise, q.noise)
    # a model trained without augmentation is perturbed with the documented fallback
    assert U.augmentation(ViewSampling()) == U.FALLBACK_AUGMENTATION


def test_shift_is_undone_in_every_view():
    """A shift moved back by the opposite shift gives the image again (away from the edges)."""
    yy, xx = np.mgrid[:64, :64]
    img = np.exp(-((xx - 30.0) ** 2 + (yy - 34.0) ** 2) / 60.0).astype(np.float32)
    t = torch.from_numpy(img)[None, None]
    moved = U.shift_images(t, 0.7, -1.3)
    peak = np.unravel_index(moved[0, 0].numpy().argmax(), img.shape)
    assert peak == (33, 31)                            # rows up by 1.3, columns right by 0.7
    back = U.shift_images(moved, -0.7, 1.3)[0, 0].numpy()
    assert np.abs(back - img)[8:-8, 8:-8].max() < 0.02


def test_patient_shift_moves_each_view_as_the_undo_assumes():
    """Oracle: render a phantom shifted by (dx, dz) mm in LPS; each DRR is the unshifted DRR
    moved by dx cos(phi) columns and -dz rows (pixels per mm at the isocentre), which is
    what :func:`undo_perturbations` moves back."""
    s = ViewSampling(image_size=64)
    vol = procedural_chest(7, (64, 64, 48), (5.6, 5.6, 7.0))
    d = np.array([6.0, 0.0, -9.0])
    moved = Volume(vol.array, vol.affine.copy())
    moved.affine[:3, 3] += d
    angles = [0.0, 60.0, 90.0, 180.0]
    g = s.geometry(angles, 0.0, vol.center)
    a = DRRRenderer(vol, "fast", "cpu", s.mu_water).render(g)
    b = DRRRenderer(moved, "fast", "cpu", s.mu_water).render(g)
    p = U.Perturbations(np.array([[d[0], d[2]]]), np.ones(1), np.zeros((1, 64, 64), np.float32))
    back = U.undo_perturbations(b[None], angles, p, s)[0]       # the patient moved back by -d
    for k in range(len(angles)):
        err_undone = np.abs(back[k] - a[k])[6:-6, 6:-6].mean()
        err_raw = np.abs(b[k] - a[k])[6:-6, 6:-6].mean()
        assert err_undone < 0.5 * err_raw, angles[k]


def test_perturbed_inputs_scale_shift_and_add_noise():
    s = ViewSampling(image_size=32)
    img = torch.rand(1, 1, 32, 32)
    p = U.Perturbations(np.zeros((2, 2)), np.array([1.0, 1.05]), np.full((2, 32, 32), 0.01, np.float32))
    x = U.perturbed_inputs(img, p, s)
    assert x.shape == (2, 1, 32, 32)
    np.testing.assert_allclose(x[1, 0].numpy(), img[0, 0].numpy() * 1.05 + 0.01, atol=1e-6)


# ----------------------------------------------------------------------------- the model side
def test_batched_views_equal_one_step_per_angle(tiny):
    """Each distinct step decoded once gives what decoding every angle separately gives,
    far angles as mirrors of their opposite (as ``imagine_views`` always did)."""
    model = tiny["model"]
    with torch.no_grad():
        states = model.encode(torch.rand(2, 1, 32, 32) * 3, torch.zeros(2))
        angles = [0.0, 90.0, 180.0, 270.0, 30.0, 210.0]
        got = U.imagine_batch(model, states, angles)
        for b in range(2):
            for k, a in enumerate(angles):
                d = (a + 180) % 360 - 180
                far = abs(d) > 90
                step = (d + 360) % 360 - 180 if far else d
                one = model.decode(model.step(states[b:b + 1], torch.tensor([step]), torch.zeros(1)))
                one = np.clip(one[0, 0].numpy(), 0, None)
                np.testing.assert_allclose(got[b, k], one[:, ::-1] if far else one, atol=1e-5)
    assert U.imagine_batch(model, states, []).shape == (2, 0, 32, 32)


def test_volume_deviation_is_the_reconstruction_of_the_view_change(tiny):
    """The volume std rests on linearity: the change of the prior-based volume for a change
    of its (interpolated) views equals the coarse operator applied to that change."""
    s = tiny["cfg"].views
    op = U._VolumeDeviation(s, None, 32)
    rng = np.random.default_rng(0)
    v1 = 0.02 * rng.random((len(op.angles), 32, 32)).astype(np.float32)
    v2 = v1 + 0.02 * rng.random(v1.shape).astype(np.float32)
    prior = VolumePrior(np.full((16,) * 3, 500.0, np.float32), 1, residual_weight=0.6,
                        smoothing_voxels=1.0)      # dense enough that nothing is clipped at 0
    op = U._VolumeDeviation(s, prior, op.grid.shape[0])

    def full(v):          # what reconstruct() does with the interpolated views, in HU
        fine = v[op.lo] * (1 - op.frac) + v[op.hi] * op.frac
        return mu_to_hu(prior.reconstruct(fine, op.geometry, op.grid, s.mu_water), s.mu_water)
    np.testing.assert_allclose(full(v2) - full(v1), op(v2 - v1), atol=0.05)


def test_estimate_uncertainty_shapes_geometry_and_determinism(tiny):
    model, s = tiny["model"], tiny["cfg"].views
    x = torch.from_numpy(tiny["frontal"])[None, None]
    with torch.no_grad():
        state = model.encode(x, torch.zeros(1))
    vol = reconstruct(model, state, s, 40)
    calls = []
    u = U.estimate_uncertainty(model, x, s, [90.0, 180.0], vol, None, 6,
                               progress=lambda d, n: calls.append((d, n)))
    assert u.views_std.shape == (2, 32, 32) and (u.views_std >= 0).all() and u.views_std.max() > 0
    assert u.volume_std.shape == vol.shape and np.array_equal(u.volume_std.affine, vol.affine)
    assert (u.volume_std.array[vol.array <= -1024] == 0).all() and u.volume_std.array.max() > 0
    # the passes (4 at a time), then one reconstruction per component of the volume's std
    assert calls == [(4, 11), (6, 11)] + [(k, 11) for k in range(7, 12)] and u.passes == 6
    assert u.settings["volume_variance_kept"] == pytest.approx(1.0)
    again = U.estimate_uncertainty(model, x, s, [90.0, 180.0], vol, None, 6)
    assert np.array_equal(u.views_std, again.views_std)
    assert np.array_equal(u.volume_std.array, again.volume_std.array)
    assert U.estimate_uncertainty(model, x, s, [], None, None, 2).views_std.shape == (0, 32, 32)
    for bad in (1, -2, 2.5, "x", 5000):
        with pytest.raises(InputError, match="uncertainty"):
            U.estimate_uncertainty(model, x, s, [90.0], vol, None, bad)


def test_second_routes_pair_the_laterals_and_check_step_zero_against_the_input():
    assert U.second_routes([90.0, 180.0, 270.0, 0.0, 45.0, 135.0, -90.0, 450.0]) == {
        0: 270.0, 1: "input", 2: 90.0, 3: "input", 6: 90.0, 7: 270.0}


def test_second_route_term_adds_only_where_a_second_route_exists(tiny, monkeypatch):
    """The 0/180 views are checked against the input and the laterals against each other;
    a 45-deg view has one route, so its std is TTA alone; the 90-deg view's std is the same
    whether or not 270 deg was asked for (the opposite lateral is predicted either way)."""
    model, s = tiny["model"], tiny["cfg"].views
    x = torch.from_numpy(tiny["frontal"])[None, None]
    angles = [45.0, 90.0, 180.0]
    both = U.estimate_uncertainty(model, x, s, angles, None, None, 4).views_std
    monkeypatch.setattr(U, "_route_disagreement", lambda means, view_angles, *a: np.zeros(
        (len(view_angles),) + means.shape[1:]))
    tta = U.estimate_uncertainty(model, x, s, angles, None, None, 4).views_std
    monkeypatch.undo()
    assert np.array_equal(both[0], tta[0])
    for k in (1, 2):
        assert (both[k] >= tta[k] - 1e-7).all() and both[k].mean() > 1.05 * tta[k].mean()
    with_270 = U.estimate_uncertainty(model, x, s, [90.0, 270.0], None, None, 4).views_std
    np.testing.assert_allclose(with_270[0], both[1], rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- files and CLI
def test_std_files_have_the_geometry_of_their_outputs(tiny, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    s = tiny["cfg"].views
    loaded = (tiny["model"], tiny["card"])
    res = run_inference(_radiograph(tiny["frontal"], s), loaded, (90, 270), 24, uncertainty=4)
    data = write_outputs(res, tmp_path)
    jsonschema.validate(data, load_schema())
    assert data["views"]["std_file"] == "views_std.nii.gz"
    assert data["volume"]["std_file"] == "volume_std.nii.gz"
    assert data["uncertainty"]["passes"] == 4 and "test-time augmentation" in data["uncertainty"]["method"]
    views, g, _ = read_drr_stack(tmp_path / "views.nii.gz")
    std, gs, side = read_drr_stack(tmp_path / "views_std.nii.gz")
    assert std.shape == views.shape and gs.to_dict() == g.to_dict()
    np.testing.assert_allclose(std, res.uncertainty.views_std, atol=1e-6)
    vol, vstd = read_ct(tmp_path / "volume.nii.gz"), read_ct(tmp_path / "volume_std.nii.gz")
    assert vstd.shape == vol.shape and np.allclose(vstd.affine, vol.affine, atol=1e-6)
    # stored as CT is, in whole HU (int16): the results rounded, nothing else lost
    import SimpleITK as sitk
    for name, written, kept in (("volume", vol, res.volume), ("volume_std", vstd,
                                                               res.uncertainty.volume_std)):
        assert sitk.ReadImage(str(tmp_path / f"{name}.nii.gz")).GetPixelIDTypeAsString() == \
            "16-bit signed integer", name
        assert np.array_equal(written.array, np.rint(kept.array)), name
    # off: no std files, and none left from the earlier run
    res0 = run_inference(_radiograph(tiny["frontal"], s), loaded, (90, 270), 24, uncertainty=0)
    assert res0.uncertainty is None and "uncertainty" in res0.timings
    data0 = write_outputs(res0, tmp_path)
    jsonschema.validate(data0, load_schema())
    assert data0["uncertainty"] is None and "std_file" not in data0["views"]
    assert not list(tmp_path.glob("*_std*"))


def test_cli_uncertainty_option_and_plain_progress_lines(tiny, tmp_path, capsys, monkeypatch):
    import SimpleITK as sitk
    from XrayWorldModel import console
    model = tmp_path / "tiny.safetensors"
    save_model_file(model, {f"model.{k}": v for k, v in tiny["model"].state_dict().items()},
                    tiny["card"])
    img = tmp_path / "cxr.mha"
    itk = sitk.GetImageFromArray(tiny["frontal"].astype(np.float32))
    itk.SetSpacing([tiny["cfg"].views.pixel_spacing] * 2)
    sitk.WriteImage(itk, str(img))
    assert main(["infer", str(img), "--out", str(tmp_path / "bad"), "--model", str(model),
                 "--uncertainty", "1"]) == 2
    assert "--uncertainty" in capsys.readouterr().err
    monkeypatch.setattr(console.LineTicker, "due", lambda self: True)    # every update a line
    out = tmp_path / "out"
    assert main(["infer", str(img), "--out", str(out), "--model", str(model), "--volume-size", "16",
                 "--uncertainty", "8"]) == 0
    err = capsys.readouterr().err     # captured: not a terminal, so lines, not a bar
    lines = [l for l in err.splitlines() if l.startswith("xray2xray: uncertainty ")]
    # 8 passes, 4 at a time, then 7 reconstructions of the volume's std: 15 steps
    assert any("4/15 steps" in l for l in lines) and any("15/15 steps (100%)" in l for l in lines), err
    assert "\r" not in err
    data = json.loads((out / "results.json").read_text())
    assert data["uncertainty"]["passes"] == 8 and (out / "volume_std.nii.gz").is_file()


# ----------------------------------------------------------------------------- acceptance
def error_correlation(n_phantoms: int = 16, first_seed: int = HELD_OUT_SEED, passes: int = U.DEFAULT_PASSES,
                      model=None, angles=ANGLES) -> dict:
    """Per angle: the Spearman correlation, over the body's pixels, between the predicted
    view's standard deviation and its absolute error against the true DRR, for each of
    ``n_phantoms`` held-out procedural chests (the demo model's training preprocessing,
    frontal DRR in, ``infer`` with ``passes``); mean, median, min, and over all pixels pooled;
    and ``error_over_std``, the mean absolute error over the mean std (how far the std is
    from an error bar)."""
    from scipy.stats import spearmanr
    from XrayWorldModel.config import TrainConfig
    from XrayWorldModel.data import resolve_source
    from XrayWorldModel.data.cache import preprocess
    from XrayWorldModel.infer.prior import centred
    loaded = load_inference_model(model)
    cfg = TrainConfig.from_dict(loaded[1]["config"])
    s = cfg.views
    threshold = (loaded[1].get("domain") or {}).get("body_threshold")
    per = {a: [] for a in angles}
    pooled = {a: ([], []) for a in angles}
    for item in resolve_source(f"phantom:{n_phantoms}:{first_seed}"):
        vol = centred(preprocess(item.load(), cfg.data.preprocessing()))
        truth = render_views([vol], s, (0.0,) + tuple(angles))[0]
        res = run_inference(_radiograph(truth[0], s), loaded, angles, 32, uncertainty=passes)
        for k, a in enumerate(angles):
            t, p, sd = truth[k + 1], res.views[k], res.uncertainty.views_std[k]
            body = np.maximum(t, p) > (threshold if threshold else 0.05 * t.max())
            err = np.abs(p - t)[body]
            per[a].append(float(spearmanr(sd[body], err)[0]))
            pooled[a][0].append(sd[body])
            pooled[a][1].append(err)
    out = {}
    for a, r in per.items():
        sd, err = np.concatenate(pooled[a][0]), np.concatenate(pooled[a][1])
        out[a] = {"mean": float(np.mean(r)), "median": float(np.median(r)), "min": float(np.min(r)),
                  "pooled": float(spearmanr(sd, err)[0]), "error_over_std": float(err.mean() / sd.mean()),
                  "n": len(r)}
    return out


def test_std_ranks_pixels_by_their_error_on_held_out_phantoms():
    """Acceptance (fast version, 8 of the 16 held-out phantoms): the std map of each predicted
    view correlates positively with its absolute error, above 0.2 at 90 deg."""
    r = error_correlation(8)
    assert r[90.0]["mean"] > 0.2, r
    assert all(v["mean"] > 0.1 for v in r.values()), r


@pytest.mark.slow
def test_std_ranks_pixels_by_their_error_on_16_held_out_phantoms():
    r = error_correlation(16)
    assert r[90.0]["mean"] > 0.2, r
    assert all(v["mean"] > 0.1 for v in r.values()), r


def _report(argv) -> None:
    import argparse
    ap = argparse.ArgumentParser(description="Spearman(std, |error|) per angle on held-out phantoms")
    ap.add_argument("--phantoms", type=int, default=16)
    ap.add_argument("--first-seed", type=int, default=HELD_OUT_SEED)
    ap.add_argument("--passes", default=f"{U.DEFAULT_PASSES},8")
    ap.add_argument("--model", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    print(f"Spearman(std, |pred - true|) over body pixels, {args.phantoms} phantoms "
          f"(seeds {args.first_seed}-{args.first_seed + args.phantoms - 1}), model "
          f"{args.model or 'xray2xray-demo'}\n")
    print("| passes | angle | mean | median | min | pooled | mean error / mean std |\n"
          "|---:|---:|---:|---:|---:|---:|---:|")
    for n in [int(v) for v in args.passes.split(",")]:
        for a, v in error_correlation(args.phantoms, args.first_seed, n, args.model).items():
            print(f"| {n} | {a:g} | {v['mean']:.3f} | {v['median']:.3f} | {v['min']:.3f} | "
                  f"{v['pooled']:.3f} | {v['error_over_std']:.1f} |")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    _report(sys.argv[1:])

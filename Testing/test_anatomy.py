"""Anatomy augmentation (data/anatomy.py) and the ``anatomy:K:SRC`` / ``A+B`` sources: one CT
becomes many plausible patients, the same for the same seed, without folding, lungs inside
the body and the rib cage; augmented patients are cached apart and train like any CT."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from XrayWorldModel.data import PreprocessedCache, Preprocessing, preprocess, resolve_source
from XrayWorldModel.data import anatomy
from XrayWorldModel.data.anatomy import (DEFAULT_RANGES, WIDE_HABITUS_RANGES, Deformation,
                                         augment_anatomy, body_mask, displacement_field,
                                         draw_augmentation, draw_deformation, find_landmarks,
                                         jacobian_determinant, lung_mask, plausibility, warp)
from XrayWorldModel.data.cache import source_digest
from XrayWorldModel.errors import InputError
from XrayWorldModel.phantom import procedural_chest
from XrayWorldModel.volume import Volume

REPO = Path(__file__).resolve().parents[1]
GRID = Preprocessing(64, 5.5)          # a small training cube: fast, still a chest


@pytest.fixture(scope="module")
def chest():
    """A phantom chest on a small training cube, with its label map on the same cube."""
    hu, labels = procedural_chest(3, return_labels=True)
    vol = preprocess(hu, GRID)
    lab = _labels_on(labels, vol)
    return vol, lab


def _labels_on(labels: Volume, grid: Volume) -> np.ndarray:
    """The label map resampled (nearest) onto ``grid``: an oracle independent of the
    thresholds the augmentation uses."""
    from scipy import ndimage
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), -1)
    src = labels.lps_to_index(grid.index_to_lps(idx))
    return ndimage.map_coordinates(labels.array, np.moveaxis(src, -1, 0), order=0, cval=0)


def _deformation(lm, **changes) -> Deformation:
    """The identity deformation around ``lm``, with ``changes``."""
    base = Deformation(center=lm.body_center, scales=(1.0, 1.0, 1.0),
                       rotation=tuple(map(tuple, np.eye(3))), shift=(0.0, 0.0, 0.0),
                       z_ref=lm.lung_top - 0.3 * (lm.lung_top - lm.lung_bottom),
                       lung_span=0.7 * (lm.lung_top - lm.lung_bottom), lung_gain=0.0,
                       heart_center=lm.heart_center, heart_sigma=lm.heart_radius, heart_shift=(0.0, 0.0, 0.0),
                       heart_growth=0.0)
    return dataclasses.replace(base, **changes)


# ---------------------------------------------------------------- determinism

def test_same_seed_same_patient_other_seed_other_patient(chest):
    vol, _ = chest
    a, b, c = (augment_anatomy(vol, s).array for s in (7, 7, 8))
    assert np.array_equal(a, b)
    body = body_mask(vol)
    assert np.abs(a - c)[body].mean() > 20.0          # HU: another patient, not noise
    assert np.abs(a - vol.array)[body].mean() > 20.0  # and not the CT itself
    # landmarks found once and passed in give the very same patient
    assert np.array_equal(augment_anatomy(vol, 7, landmarks=find_landmarks(vol)).array, a)
    assert a.shape == vol.shape and np.allclose(augment_anatomy(vol, 7).affine, vol.affine)


def test_a_patient_differs_from_its_ct_in_shape_not_only_in_intensity(chest):
    """The thorax width (LR extent of the body) changes from seed to seed."""
    vol, _ = chest
    widths = []
    for seed in range(6):
        body = body_mask(augment_anatomy(vol, seed))
        cols = np.flatnonzero(body.any(axis=(1, 2)))
        widths.append(cols[-1] - cols[0])
    assert len(set(widths)) >= 3


# ---------------------------------------------------------------- plausibility

@pytest.mark.parametrize("ranges", [DEFAULT_RANGES, WIDE_HABITUS_RANGES], ids=["default", "wide"])
def test_masks_stay_inside_the_body_and_the_rib_cage(chest, ranges):
    vol, _ = chest
    for seed in range(2):
        p = plausibility(vol, seed, ranges)
        assert p["lung_outside_body"] < 1e-3, (seed, p)
        assert p["lung_outside_hull"] < p["baseline_outside_hull"] + 0.01, (seed, p)


@pytest.mark.parametrize("ranges", [DEFAULT_RANGES, WIDE_HABITUS_RANGES], ids=["default", "wide"])
def test_jacobian_positive_everywhere(chest, ranges):
    vol, _ = chest
    for seed in range(4):
        d = draw_augmentation(vol, seed, ranges).deformation
        assert d.local_gradient_bound() < 1.0
        jac = jacobian_determinant(displacement_field(vol, d), vol.affine)
        assert jac.min() > 0.2, (seed, jac.min())


def test_jacobian_function_detects_folding_and_measures_an_affine_map():
    """Control: a field whose gradient exceeds -1 somewhere folds, and is seen to; an affine
    map's determinant is the determinant of its matrix (an independent oracle)."""
    shape, spacing = (24, 20, 16), (2.0, 3.0, 4.0)
    x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    wave = 2 * np.pi / 24.0
    folding = np.stack([6.0 * np.sin(wave * x[0]), 0 * x[1], 0 * x[2]])   # du/dx up to 1.57
    jac = jacobian_determinant(folding, spacing)
    assert jac.min() < -0.3 and jac.max() > 2.0
    gentle = folding * 0.5                                                # du/dx up to 0.79
    assert jacobian_determinant(gentle, spacing).min() > 0.0
    m = np.array([[1.1, 0.2, 0.0], [0.0, 0.9, 0.1], [0.05, 0.0, 1.2]])
    affine = np.einsum("ij,j...->i...", m - np.eye(3), np.stack(x))
    assert np.allclose(jacobian_determinant(affine, spacing), np.linalg.det(m), atol=1e-9)


def test_heart_is_found_where_the_phantom_has_it(chest):
    vol, lab = chest
    truth = vol.index_to_lps(np.argwhere(lab == 4).mean(axis=0))
    lm = find_landmarks(vol)
    assert np.linalg.norm(np.asarray(lm.heart_center) - truth) < 15.0
    lungs = lung_mask(vol)
    truth_lungs = (lab == 2) | (lab == 3)
    dice = 2 * (lungs & truth_lungs).sum() / (lungs.sum() + truth_lungs.sum())
    assert dice > 0.85


def test_heart_growth_and_lung_height_change_what_they_name(chest):
    """Measured on the carried label map: growth enlarges the heart and leaves the lungs'
    height; a positive lung gain shortens the lungs and leaves the heart's size."""
    vol, lab = chest
    lm = find_landmarks(vol)
    labels = Volume(lab.astype(np.float32), vol.affine)

    def carried(**changes):
        return warp(labels, _deformation(lm, **changes), order=0, fill=0.0)

    def heart_ml(lab_arr):
        return (lab_arr == 4).sum()

    def lung_height(lab_arr):
        z = np.flatnonzero(((lab_arr == 2) | (lab_arr == 3)).any(axis=(0, 1)))
        return z[-1] - z[0]

    same = carried()
    assert np.array_equal(same, lab)                       # identity parameters: no change
    grown, shrunk = carried(heart_growth=0.15), carried(heart_growth=-0.15)
    assert heart_ml(grown) > 1.15 * heart_ml(lab) and heart_ml(shrunk) < 0.87 * heart_ml(lab)
    assert abs(lung_height(grown) - lung_height(lab)) <= 1
    short = carried(lung_gain=0.15)
    assert lung_height(short) < lung_height(lab) - 2
    assert abs(heart_ml(short) / heart_ml(lab) - 1) < 0.15
    moved = carried(heart_shift=(10.0, 0.0, 0.0))          # toward the patient's left
    shift = (np.argwhere(moved == 4).mean(0) - np.argwhere(lab == 4).mean(0))[0] * vol.spacing[0]
    assert 4.0 < shift < 12.0


def test_wide_ranges_draw_body_build_with_the_spread_of_adult_chests(chest):
    """``wide``: log breadth SD about 8 %, log depth about 10 % (anthropometric surveys, sexes
    mixed), about twice the default's; the height is not widened."""
    lm = find_landmarks(chest[0])

    def log_sd(ranges):
        scales = [draw_deformation(np.random.default_rng(k), lm, ranges).scales for k in range(600)]
        return np.log(np.asarray(scales)).std(axis=0)

    default, wide = log_sd(DEFAULT_RANGES), log_sd(WIDE_HABITUS_RANGES)
    assert 0.07 < wide[0] < 0.095 and 0.09 < wide[1] < 0.115, wide
    assert wide[0] > 1.7 * default[0] and wide[1] > 1.7 * default[1], (default, wide)
    assert wide[2] == pytest.approx(default[2], rel=0.15)


def test_kernel_and_slice_thickness_act_as_named():
    """A one-voxel bright plate across z: sharpening raises its peak, blurring lowers it; a
    6 mm slice on a 2 mm grid spreads it over about three voxels and keeps its sum along z
    (slab averaging moves signal, it does not make or lose any); HU scale is about air."""
    from XrayWorldModel.data.anatomy import IntensityChange, apply_intensity
    arr = np.zeros((8, 8, 40), np.float32)
    arr[:, :, 20] = 1000.0

    def change(**kw):
        c = IntensityChange(**{**dict(hu_scale=1.0, hu_offset=0.0, noise_hu=0.0, kernel=0.0,
                                      slice_mm=0.0, slice_phase=0.3), **kw})
        return apply_intensity(arr, c, np.random.default_rng(0), 2, 2.0, -1000.0)[4, 4]

    assert np.allclose(change(), arr[4, 4])
    assert change(kernel=0.5)[20] > 1100.0 and change(kernel=-0.5)[20] < 900.0
    thick = change(slice_mm=6.0)
    assert thick.max() < 600.0 and (thick > 100.0).sum() >= 3
    assert abs(thick.sum() - arr[4, 4].sum()) < 0.1 * arr[4, 4].sum()
    assert np.allclose(change(hu_scale=1.1)[[0, 20]], [100.0, 1200.0])


def test_not_a_chest_is_a_clear_error():
    water = Volume.from_spacing(np.full((24, 24, 24), 0.0, np.float32), (8.0,) * 3)
    water.array[:2] = -1000.0
    with pytest.raises(InputError, match="no lungs found"):
        augment_anatomy(water, 0)


# ---------------------------------------------------------------- the source syntax

def test_anatomy_source_ids_counts_and_seeds():
    items = resolve_source("anatomy:3:phantom:2")
    assert [i.id for i in items] == [f"anatomy-phantom-{p:05d}-{k}" for p in (0, 1) for k in range(3)]
    assert all(i.labels == {} for i in items)
    shifted = resolve_source("anatomy:2:5:phantom:1:9")
    assert [i.id for i in shifted] == ["anatomy-phantom-00009-5", "anatomy-phantom-00009-6"]
    # an item's spec names exactly that item again
    again = resolve_source(shifted[1].spec)
    assert [i.id for i in again] == ["anatomy-phantom-00009-6"]


def test_mixed_sources_keep_order_and_counts(tmp_path):
    from XrayWorldModel.io import write_volume
    cts = tmp_path / "real+cts"                       # a '+' inside an existing path stays a path
    cts.mkdir()
    for name in ("b", "a"):
        write_volume(procedural_chest(1, (40, 40, 32), 8.0), cts / f"{name}.nii.gz")
    items = resolve_source(f"phantom:3+anatomy:2:{cts}")
    assert [i.id for i in items] == ["phantom-00000", "phantom-00001", "phantom-00002",
                                     "anatomy-a-0", "anatomy-a-1", "anatomy-b-0", "anatomy-b-1"]
    assert [i.id for i in resolve_source(str(cts))] == ["a", "b"]
    assert len(resolve_source(f"phantom:1+{cts}+anatomy:1:{cts / 'a.nii.gz'}")) == 4


@pytest.mark.parametrize("bad, message", [
    ("anatomy:0:phantom:2", "anatomy:K"), ("anatomy:x:phantom:2", "anatomy:K"),
    ("anatomy:2", "anatomy:K"), ("anatomy:2:", "anatomy:K"), ("anatomy:2:wide:", "anatomy:K"),
    ("phantom:2+", "empty source"), ("+phantom:2", "empty source"),
    ("phantom:2+stacks:/somewhere", "cannot be mixed"),
    ("phantom:2+/no/such/ct.nii.gz", "no such file"),
])
def test_bad_sources_are_clear_errors(bad, message):
    with pytest.raises(InputError, match=message):
        resolve_source(bad)


def test_cache_keys_each_patient_apart_and_builds_it_from_the_preprocessed_base(tmp_path):
    items = resolve_source("phantom:1:4+anatomy:2:phantom:1:4")
    keys = {GRID.key(source_digest(i.spec)) for i in items}
    assert len(keys) == 3
    cache = PreprocessedCache(tmp_path)
    base, p0, p1 = (cache.get(i, GRID) for i in items)
    assert p0.shape == base.shape == (GRID.size,) * 3 and np.allclose(p0.affine, base.affine)
    assert not np.array_equal(p0.array, p1.array)
    assert len(list(tmp_path.glob("*.npy"))) == 3
    # the entry read back is what was handed out, and is the augmentation of the cached base
    assert np.array_equal(cache.get(items[1], GRID).array, p0.array)
    expect = augment_anatomy(base, 0).array.astype(np.float16).astype(np.float32)
    assert np.array_equal(p0.array, expect)
    meta = json.loads((tmp_path / f"{GRID.key(source_digest(items[1].spec))}.json").read_text())
    assert meta["source"] == "anatomy:1:0:phantom:chest:4"


def test_named_ranges_make_other_patients_cached_apart(tmp_path):
    """``anatomy:K:wide:SRC`` draws with the wide ranges: its own ids, a spec that names the
    same patient again, its own cache entry holding the wide augmentation of the cached base;
    the default ranges keep the cache key they had before ranges could be named."""
    from XrayWorldModel.data.sources import anatomy_source
    default, wide = (resolve_source(anatomy_source(1, "phantom:1:4", r))[0] for r in ("default", "wide"))
    assert (default.id, wide.id) == ("anatomy-phantom-00004-0", "anatomy-wide-phantom-00004-0")
    assert [i.id for i in resolve_source(wide.spec)] == [wide.id]
    assert [i.id for i in resolve_source("anatomy:2:3:wide:phantom:1:4")] == [
        "anatomy-wide-phantom-00004-3", "anatomy-wide-phantom-00004-4"]
    assert source_digest(wide.spec) != source_digest(default.spec)
    import hashlib
    old_key = f"anatomy|{anatomy.ANATOMY_VERSION}|1|0|{source_digest('phantom:chest:4')}"
    assert source_digest(default.spec) == hashlib.sha256(old_key.encode()).hexdigest()
    cache = PreprocessedCache(tmp_path)
    base = cache.get(resolve_source("phantom:1:4")[0], GRID)
    got, plain = cache.get(wide, GRID), cache.get(default, GRID)
    expect = augment_anatomy(base, 0, WIDE_HABITUS_RANGES).array.astype(np.float16).astype(np.float32)
    assert np.array_equal(got.array, expect) and not np.array_equal(got.array, plain.array)
    with pytest.raises(InputError, match="unknown anatomy ranges"):
        anatomy_source(1, "phantom:1", "huge")


def test_a_new_augmentation_version_is_a_new_cache_key(monkeypatch):
    spec = resolve_source("anatomy:1:phantom:1")[0].spec
    before = source_digest(spec)
    monkeypatch.setattr("XrayWorldModel.data.cache.ANATOMY_VERSION", anatomy.ANATOMY_VERSION + 1)
    assert source_digest(spec) != before


# ---------------------------------------------------------------- training

def _tiny_config(tmp_path, source: str) -> Path:
    sys.path.insert(0, str(REPO / "Testing"))
    from test_train import TINY
    cfg = json.loads(json.dumps(TINY))
    cfg["data"].update(source=source, val_count=1)
    cfg["optim"].update(steps=3)
    cfg["run"].update(checkpoint_every=3)
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(cfg))
    return path


def _train(tmp_path, source: str):
    env = dict(os.environ, XRAY2XRAY_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cfg = _tiny_config(tmp_path, source)
    r = subprocess.run([sys.executable, "-m", "XrayWorldModel", "train", "--config", str(cfg),
                        "run.out_dir=run", "--quiet"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run" / "checkpoints" / "step-0000003.json").exists()
    return [json.loads(p.read_text())["source"] for p in (tmp_path / "cache" / "ct").glob("*.json")]


def test_mixed_source_renders_training_batches(tmp_path):
    """What the trainer asks of the data (fast, no model): a batch of views from the mixed
    source through the cache, finite and with the items' ids."""
    from XrayWorldModel.data import RenderedViewSet, ViewSampling, VolumeProvider
    items = resolve_source("phantom:1:2+anatomy:2:phantom:1:2")
    prep = Preprocessing(40, 8.0)
    views = RenderedViewSet(VolumeProvider(items, PreprocessedCache(tmp_path), prep, 8),
                            ViewSampling(image_size=32, targets_per_context=1))
    batch = views.batch([0, 1, 2], np.random.default_rng(0))
    assert batch.ids == ["phantom-00002", "anatomy-phantom-00002-0", "anatomy-phantom-00002-1"]
    assert torch_all_finite(batch.context) and batch.context.shape == (3, 1, 32, 32)
    # two patients of one CT give different views at the same angles
    same_angles = views.true_views(0.0, [90.0]).views
    assert np.abs(same_angles[1] - same_angles[2]).mean() > 0.01 * np.abs(same_angles[1]).mean()


def torch_all_finite(t) -> bool:
    import torch
    return bool(torch.isfinite(t).all())


@pytest.mark.slow
def test_mixed_phantom_and_augmented_source_trains(tmp_path):
    """In process (the CLI run is the slow real-CT test): two steps on a mixed source, and
    the cache holds the augmented patients it trained on."""
    from XrayWorldModel.config import load_config
    from XrayWorldModel.train.trainer import train
    cfg = load_config(str(_tiny_config(tmp_path, "phantom:1+anatomy:2:phantom:1:7")),
                      ["optim.steps=2", f"run.out_dir={tmp_path / 'run'}",
                       f"data.cache_dir={tmp_path / 'cache'}", "run.checkpoint_every=2"])
    losses = train(cfg)
    assert np.isfinite(losses["total"])
    assert (tmp_path / "run" / "checkpoints" / "step-0000002.json").exists()
    sources = [json.loads(p.read_text())["source"] for p in (tmp_path / "cache").glob("*.json")]
    assert any(s.startswith("anatomy:1:") for s in sources), sources


@pytest.mark.slow
def test_real_cts_augmented_train_and_stay_plausible(tmp_path, shared_data):
    """The real CTs: a mixed source trains; each CT's first patient (as the cache built it)
    does not fold and keeps its lungs in the body and the rib cage; the heart is found
    within 25 mm of chest_ct's labelled heart."""
    real = shared_data / "real_ct"
    sources = _train(tmp_path, f"phantom:2+anatomy:2:{real}")
    assert sum(s.startswith("anatomy:1:") for s in sources) >= 1
    from XrayWorldModel.io import read_ct
    for ct in sorted(real.glob("*.nii.gz")) + [shared_data / "chest_ct.nii.gz"]:
        vol = preprocess(read_ct(ct), Preprocessing(96, 3.5))
        p = plausibility(vol, 0)
        assert p["jacobian_min"] > 0.2, (ct.name, p)
        assert p["lung_outside_body"] < 1e-3, (ct.name, p)
        assert p["lung_outside_hull"] < p["baseline_outside_hull"] + 0.02, (ct.name, p)
    labels = read_ct(shared_data / "chest_ct_labels.nii.gz")
    heart = labels.index_to_lps(np.argwhere(np.round(labels.array) == 51).mean(axis=0))
    assert np.linalg.norm(np.asarray(find_landmarks(vol).heart_center) - heart) < 25.0

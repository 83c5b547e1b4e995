"""Training data: sources, the preprocessed-CT cache and views rendered on the fly."""
import hashlib
import json

import numpy as np
import pytest
import torch

from XrayWorldModel.data import (CTItem, PreprocessedCache, Preprocessing, RenderedViewSet,
                                 ViewRenderer, ViewSampling, VolumeProvider, preprocess,
                                 render_views, resolve_source, sample_angles)
from XrayWorldModel.data.cache import CACHE_FORMAT
from XrayWorldModel.drr import render_drr
from XrayWorldModel.errors import (EmptyFolderError, FileNotFoundInputError, InputError,
                                   UnreadableFileError)
from XrayWorldModel.io import write_volume
from XrayWorldModel.phantom import Ellipsoid, EllipsoidPhantom
from XrayWorldModel.volume import Volume


def _ball_ct(center=(30.0, -20.0, 10.0)):
    """A CT (HU) of a bone-dense ball in water-free air, anisotropic voxels, off-centre."""
    ph = EllipsoidPhantom([Ellipsoid(center, (12.0, 12.0, 12.0), None, 1.0)])
    frac = ph.voxelize((160, 160, 48), (0.8, 0.8, 3.0), origin=(-60.0, -70.0, -60.0))
    return Volume(-1000.0 + 2000.0 * frac.array, frac.affine)


def test_phantom_source_gives_distinct_seeded_chests():
    items = resolve_source("phantom:3:10")
    assert [i.id for i in items] == ["phantom-00010", "phantom-00011", "phantom-00012"]
    a, b = items[0].load(), items[1].load()
    assert a.shape == b.shape and not np.array_equal(a.array, b.array)
    with pytest.raises(InputError, match="phantom:N"):
        resolve_source("phantom:many")


def test_folder_and_manifest_sources(tmp_path):
    vol = Volume.from_spacing(np.zeros((8, 8, 8), np.float32))
    write_volume(vol, tmp_path / "a.nii.gz")
    write_volume(vol, tmp_path / "b.mha")
    (tmp_path / "notes.txt").write_text("not a CT")
    assert [i.id for i in resolve_source(str(tmp_path))] == ["a", "b"]
    man = tmp_path / "cts.csv"
    man.write_text("path,id,risk,cardiomegaly\na.nii.gz,pt1,0.3,1\nb.mha,,,0\n")
    items = resolve_source(str(man))
    assert items[0].id == "pt1" and items[0].labels == {"risk": 0.3, "cardiomegaly": 1.0}
    assert items[1].id == "b" and items[1].labels == {"cardiomegaly": 0.0}
    assert items[0].load().shape == (8, 8, 8)


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundInputError, match="no such"):
        resolve_source(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyFolderError):
        resolve_source(str(tmp_path / "empty"))
    man = tmp_path / "m.csv"
    man.write_text("file\nx.nii\n")
    with pytest.raises(InputError, match="'path' column"):
        resolve_source(str(man))
    man.write_text("path\nnothere.nii.gz\n")
    with pytest.raises(FileNotFoundInputError, match="line 2"):
        resolve_source(str(man))


@pytest.mark.parametrize("centre_on", ["scan", "body"])
def test_preprocess_keeps_anatomy_in_place_and_clips(centre_on):
    """The cube moves (to the ball, the "body", left-right and front-back), the anatomy stays
    where it is in LPS."""
    ct = _ball_ct()
    prep = Preprocessing(size=64, spacing=2.0, hu_clip=(-1024.0, 500.0), centre_on=centre_on)
    out = preprocess(ct, prep)
    assert out.shape == (64, 64, 64) and np.allclose(out.spacing, 2.0)
    expected = ct.center if centre_on == "scan" else (30.0, -20.0, ct.center[2])
    np.testing.assert_allclose(out.center, expected, atol=1e-6 if centre_on == "scan" else 0.5)
    assert out.array.max() <= 500.0 + 1e-3 and out.array.min() >= -1024.0 - 1e-3
    w = np.clip(out.array + 1000.0, 0, None)
    idx = np.stack(np.meshgrid(*[np.arange(64)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centroid = (out.index_to_lps(idx) * w.reshape(-1, 1)).sum(0) / w.sum()
    np.testing.assert_allclose(centroid, (30.0, -20.0, 10.0), atol=0.5)


def test_cache_builds_once_and_rebuilds_for_new_parameters(tmp_path):
    calls = []

    def loader():
        calls.append(1)
        return _ball_ct()

    item = CTItem("ball", "phantom:ball-test", {}, loader)
    cache = PreprocessedCache(tmp_path)
    prep = Preprocessing(size=32, spacing=4.0)
    a = cache.get(item, prep)
    b = cache.get(item, prep)
    assert len(calls) == 1
    np.testing.assert_array_equal(a.array, b.array)     # built or read back: identical
    np.testing.assert_array_equal(a.affine, b.affine)
    cache.get(item, Preprocessing(size=32, spacing=5.0))
    assert len(calls) == 2
    assert len(list(tmp_path.glob("*.npy"))) == 2 and not list(tmp_path.glob(".*tmp*"))
    (tmp_path / f"{prep.key(__import__('XrayWorldModel.data.cache', fromlist=['x']).source_digest(item.spec))}.json").write_text("{")
    with pytest.raises(UnreadableFileError, match="corrupt cache entry"):
        cache.get(item, prep)


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    from XrayWorldModel.data import default_cache_dir
    monkeypatch.setenv("XRAY2XRAY_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"


def test_angle_sampling_is_frontal_centred_by_default():
    s = ViewSampling(targets_per_context=3)
    ctx, deltas, tilt = sample_angles(s, np.random.default_rng(0), 4000)
    assert abs(ctx.mean()) < 1.0 and 13.0 < ctx.std() < 16.0 and np.abs(ctx).max() <= 45.0
    assert deltas.shape == (4000, 3) and set(np.unique(deltas)) <= set(s.deltas_deg)
    assert not tilt.any()
    ctx, _, _ = sample_angles(ViewSampling(context="uniform"), np.random.default_rng(1), 4000)
    assert ctx.min() >= 0 and ctx.max() < 360 and 170 < ctx.mean() < 190
    with pytest.raises(InputError):
        ViewSampling(context="lateral")


def test_rendered_views_equal_direct_renders_at_the_sampled_angles():
    vol = preprocess(_ball_ct(), Preprocessing(size=48, spacing=3.0))
    s = ViewSampling(image_size=32, field_of_view_mm=150.0, targets_per_context=2, tilt_max_deg=5.0)
    batch = ViewRenderer(s).render([vol, vol], np.random.default_rng(3), ids=["a", "b"])
    assert batch.context.shape == (2, 1, 32, 32) and batch.targets.shape == (2, 2, 1, 32, 32)
    for b in range(2):
        angles = [float(batch.context_angle[b])] + [float(batch.context_angle[b] + d) for d in batch.deltas[b]]
        g = s.geometry(angles, float(batch.tilt[b]))
        ref = render_drr(vol, g)
        np.testing.assert_allclose(batch.context[b, 0].numpy(), ref[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(batch.targets[b, :, 0].numpy(), ref[1:], rtol=1e-5, atol=1e-5)
    assert batch.tilt.abs().max() <= 5.0 and batch.tilt.abs().max() > 0


def test_augmentation_changes_views_reproducibly():
    vol = preprocess(_ball_ct(), Preprocessing(size=32, spacing=4.0))
    s = ViewSampling(image_size=16, field_of_view_mm=150.0, intensity_jitter=0.1, noise_std=0.05,
                     shift_max_mm=4.0)
    a = ViewRenderer(s).render([vol], np.random.default_rng(7))
    b = ViewRenderer(s).render([vol], np.random.default_rng(7))
    torch.testing.assert_close(a.targets, b.targets)
    plain = ViewRenderer(ViewSampling(image_size=16, field_of_view_mm=150.0)).render([vol], np.random.default_rng(7))
    assert not torch.allclose(a.context, plain.context)


def test_view_renderer_does_not_keep_dropped_volumes_or_reuse_their_renderers():
    """The training loader's cache drops volumes; the renderer cache must neither keep them
    alive nor hand a dropped volume's renderer to a new volume that reuses its id."""
    import gc
    import weakref
    s = ViewSampling(image_size=16, field_of_view_mm=150.0, targets_per_context=1)
    vr = ViewRenderer(s)
    ball = preprocess(_ball_ct(), Preprocessing(size=32, spacing=4.0))
    first = Volume(ball.array.copy(), ball.affine)
    vr.render([first], [np.random.default_rng(0)])
    ref = weakref.ref(first)
    del first
    gc.collect()
    assert ref() is None, "the renderer cache kept a dropped volume alive"
    empty = Volume(np.full(ball.shape, -1000.0, np.float32), ball.affine)
    out = vr.render([empty], [np.random.default_rng(0)])
    assert not out.context.any() and not out.targets.any()


def test_rendered_view_set_is_a_view_source_that_skips_unreadable_cts(tmp_path):
    """CTs rendered on the fly meet the ``ViewSource`` contract of DRR stacks: clean true views
    at the context angle then each target angle, and the mean-view baseline; an unreadable CT
    is reported and left out, not counted twice."""
    vol = preprocess(_ball_ct(), Preprocessing(size=32, spacing=4.0))
    s = ViewSampling(image_size=16, field_of_view_mm=150.0, noise_std=0.5)   # not in true views
    true = RenderedViewSet([vol, vol], s).true_views(0.0, [90.0, 45.0])
    np.testing.assert_array_equal(true.views, render_views([vol, vol], s, [0.0, 90.0, 45.0]))
    np.testing.assert_array_equal(true.angles, [[0.0, 90.0, 45.0]] * 2)
    mean = RenderedViewSet([vol, vol], s).mean_views([90.0])
    np.testing.assert_allclose(mean[90.0], true.views[0, 1], rtol=1e-6)

    write_volume(vol, tmp_path / "good.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    items = resolve_source(str(tmp_path))                              # bad, good
    cts = RenderedViewSet(VolumeProvider(items, PreprocessedCache(tmp_path / "cache"),
                                         Preprocessing(size=32, spacing=4.0), 2), s)
    with pytest.warns(UserWarning, match="skipping CT"):
        assert len(cts.true_views(0.0, [90.0])) == 1
    batch = cts.batch([0, 1], np.random.default_rng(0))                 # training replaces it
    assert batch.ids == ["good", "good"]


def _moved_in_scan(volume: Volume, voxels: int, axis: int) -> Volume:
    """``volume`` with its content moved ``voxels`` along array ``axis`` inside the same grid
    (air comes in behind): a patient lying elsewhere in the same field of view."""
    arr = np.full_like(volume.array, -1000.0)
    src = [slice(None)] * 3
    dst = [slice(None)] * 3
    src[axis], dst[axis] = slice(0, -voxels), slice(voxels, None)
    arr[tuple(dst)] = volume.array[tuple(src)]
    return Volume(arr, volume.affine.copy())


def test_body_centring_gives_every_patient_the_same_cube_wherever_they_lay():
    """A chest moved 30 mm back in its scan: centred on the body, its training cube (and so
    its lateral view) is the unmoved one's; centred on the scan, the cube keeps the offset,
    which a frontal view cannot reveal to the model."""
    from XrayWorldModel.data.anatomy import body_centre
    from XrayWorldModel.phantom import procedural_chest
    chest = procedural_chest(3, (80, 80, 40), (6.0, 6.0, 8.0))
    axis = int(np.argmax(np.abs(chest.direction[1])))           # array axis along LPS y
    moved = _moved_in_scan(chest, 5, axis)
    shift_mm = 5 * float(chest.affine[1, axis])
    s = ViewSampling(image_size=32, field_of_view_mm=400.0)
    lateral = {}
    for centre_on in ("scan", "body"):
        prep = Preprocessing(size=64, spacing=6.0, centre_on=centre_on)
        a, b = preprocess(chest, prep), preprocess(moved, prep)
        offset = [body_centre(v)[:2] - v.center[:2] for v in (a, b)]
        if centre_on == "body":
            assert np.abs(offset).max() < 0.5 * prep.spacing
        else:
            assert offset[1][1] - offset[0][1] == pytest.approx(shift_mm, abs=1.0)
        views = render_views([a, b], s, [90.0])[:, 0]
        lateral[centre_on] = float(np.abs(views[0] - views[1]).mean() / views[0].mean())
    assert lateral["body"] < 0.02 and lateral["scan"] > 5 * lateral["body"]
    with pytest.raises(InputError, match="centre_on"):
        Preprocessing(centre_on="table")


def _padded(volume: Volume, axis: int, before: int, after: int) -> Volume:
    """``volume`` with ``before``/``after`` slices of air added along array ``axis``: the same
    patient, in a scan that reached further."""
    pad = [(0, 0)] * 3
    pad[axis] = (before, after)
    affine = volume.affine.copy()
    affine[:3, 3] -= before * affine[:3, axis]
    return Volume(np.pad(volume.array, pad, constant_values=-1000.0), affine)


def test_chest_centring_puts_the_apices_at_one_height_wherever_the_scan_starts():
    """One chest in two scans whose fields reach 24 mm further one way or the other (one starts
    at the neck, one lower down): centred on the chest, both cubes have their apices
    ``lung_top_mm`` above the centre and the same lateral; centred on the body, the cubes keep
    the scans' 24 mm between them."""
    from XrayWorldModel.data.anatomy import lung_extent
    from XrayWorldModel.phantom import procedural_chest
    chest = procedural_chest(3, (80, 80, 40), (6.0, 6.0, 8.0))
    axis = int(np.argmax(np.abs(chest.direction[2])))           # array axis along LPS z
    low, high = (_padded(chest, axis, k, 3 - k) for k in (0, 3))
    s = ViewSampling(image_size=32, field_of_view_mm=400.0)
    tops, lateral = {}, {}
    for centre_on in ("body", "chest"):
        prep = Preprocessing(size=64, spacing=6.0, centre_on=centre_on)
        a, b = preprocess(low, prep), preprocess(high, prep)
        tops[centre_on] = [lung_extent(v)[0] - v.center[2] for v in (a, b)]
        views = render_views([a, b], s, [90.0])[:, 0]
        lateral[centre_on] = float(np.abs(views[0] - views[1]).mean() / views[0].mean())
    assert abs(tops["body"][0] - tops["body"][1]) == pytest.approx(24.0, abs=6.0)
    np.testing.assert_allclose(tops["chest"], 130.0, atol=6.0)
    assert lateral["chest"] < 0.02 and lateral["body"] > 5 * lateral["chest"]


def test_chest_centring_keeps_the_height_of_a_volume_without_lungs():
    """No lungs (a solid limb-like cylinder of water, 40 mm off the scan's axis): nothing to
    place by, so the cube keeps the scan's height and says so, while still moving across
    onto the body."""
    x, y, z = np.meshgrid(*[np.arange(48) * 4.0 - 94.0] * 3, indexing="ij")
    ct = Volume.from_spacing(np.where((x - 40.0) ** 2 + y ** 2 < 50.0 ** 2, 0.0, -1000.0),
                             [4.0] * 3, (-94.0, -94.0, -60.0))
    with pytest.warns(UserWarning, match="no lungs found"):
        out = preprocess(ct, Preprocessing(size=32, spacing=6.0, centre_on="chest"))
    np.testing.assert_allclose(out.center, (40.0, 0.0, ct.center[2]), atol=3.0)   # half a voxel


def test_lung_height_is_part_of_the_cache_key_only_where_it_is_used():
    """Two apex heights are two caches under chest centring; under body centring the field
    is not read, so earlier caches keep their keys."""
    chest = [Preprocessing(centre_on="chest", lung_top_mm=h).key("d") for h in (120.0, 130.0)]
    body = [Preprocessing(centre_on="body", lung_top_mm=h).key("d") for h in (120.0, 130.0)]
    assert chest[0] != chest[1] and body[0] == body[1]


def _on_a_table(volume: Volume, gap_vox: int = 3) -> Volume:
    """``volume`` with a CT table under it: a 2-voxel plate of 200 HU across the whole scan,
    ``gap_vox`` voxels of air behind the patient's back (LPS +y)."""
    from XrayWorldModel.data.anatomy import body_mask
    axis = int(np.argmax(np.abs(volume.direction[1])))
    back = int(np.flatnonzero(np.moveaxis(body_mask(volume), axis, 0).any(axis=(1, 2))).max())
    if volume.affine[1, axis] < 0:
        raise AssertionError("the test volume runs anterior along its y axis")
    arr = volume.array.copy()
    plate = [slice(None)] * 3
    plate[axis] = slice(back + gap_vox, back + gap_vox + 2)
    arr[tuple(plate)] = 200.0
    return Volume(arr, volume.affine.copy())


def test_outside_body_air_clears_the_ct_table_and_keeps_the_patient():
    """A chest on a CT table: with ``outside_body="air"`` its cube is the chest's without
    the table (the lateral view too), since no radiograph shows a table a frontal view
    cannot place; kept, the table stays in the lateral. The option keeps earlier cache keys
    when it is off, and a new key when on."""
    from XrayWorldModel.phantom import procedural_chest
    chest = procedural_chest(3, (80, 80, 40), (6.0, 6.0, 8.0))
    tabled = _on_a_table(chest)
    s = ViewSampling(image_size=32, field_of_view_mm=400.0)
    lateral = {}
    for outside in ("keep", "air"):
        prep = Preprocessing(size=64, spacing=6.0, outside_body=outside)
        bare, on_table = preprocess(chest, prep), preprocess(tabled, prep)
        views = render_views([bare, on_table], s, [90.0])[:, 0]
        lateral[outside] = float(np.abs(views[0] - views[1]).mean() / views[0].mean())
        if outside == "air":
            np.testing.assert_allclose(on_table.array, bare.array, atol=1.0)
            assert (bare.array > -500).sum() > 0.05 * bare.array.size      # the patient stays
    assert lateral["air"] < 1e-3 and lateral["keep"] > 0.02
    old_format = hashlib.sha256(("d|" + json.dumps(
        {"format": CACHE_FORMAT, "size": 128, "spacing": 2.5, "hu_clip": [-1024.0, 3071.0],
         "centre_on": "body"}, sort_keys=True)).encode()).hexdigest()[:32]
    assert Preprocessing().key("d") == old_format != Preprocessing(outside_body="air").key("d")
    with pytest.raises(InputError, match="outside_body"):
        Preprocessing(outside_body="table")

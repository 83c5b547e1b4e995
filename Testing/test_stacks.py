"""Training from DRR stacks written by ``xray2xray drr`` (``data.source = stacks:DIR``):
sampling against the stored views, determinism, resampling, bad stacks, and a short real
training run. The stacks are tiny (32 px, 13 angles) and written with the real CLI."""
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from XrayWorldModel.cli import main
from XrayWorldModel.data import DRRStackSet, StackLoadWarning, ViewSampling, list_stacks
from XrayWorldModel.data.stacks import StackFieldOfViewWarning, wrap_deg
from XrayWorldModel.errors import InputError
from XrayWorldModel.io.drr_stack import read_drr_stack

ANGLES = [float(a) for a in range(-90, 91, 15)]
FOV = 32 * 15.0 * 1500.0 / 1800.0          # detector 32 x 15 mm at magnification 1.2: 400 mm


def _drr(cts, out, *extra):
    args = ["drr", *map(str, cts), "--out", str(out), "--angle-range", "-90", "91", "15",
            "--detector", "32", "32", "--pixel-spacing", "15", *extra]
    assert main(args) == 0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stacks")
    cts = []
    for seed in range(3):
        ct = root / "cts" / f"ct{seed}.nii.gz"
        assert main(["phantom", "--seed", str(seed), "--shape", "40", "40", "32",
                     "--spacing", "8", "--out", str(ct)]) == 0
        cts.append(ct)
    _drr(cts, root / "drr")
    # the same first CT at 48 px over the same field of view (48 x 10 mm)
    assert main(["drr", str(cts[0]), "--out", str(root / "big" / "ct0.nii.gz"), "--angle-range",
                 "-90", "91", "15", "--detector", "48", "48", "--pixel-spacing", "10"]) == 0
    return root


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sampling(**kw):
    base = dict(image_size=32, field_of_view_mm=400.0, targets_per_context=3)
    base.update(kw)
    return ViewSampling(**base)


def test_batch_matches_the_stored_views(data):
    folder = data / "drr"
    stacks = DRRStackSet(f"stacks:{folder}", _sampling(context_sigma_deg=30.0))
    assert [it.id for it in stacks.items] == ["ct0", "ct1", "ct2"]
    assert list(stacks.items[0].angles) == ANGLES
    np.testing.assert_allclose(stacks.items[0].field_of_view_mm, (FOV, FOV))
    stored = {it.id: read_drr_stack(it.path) for it in stacks.items}
    idx = [0, 1, 2, 1, 0, 2, 2, 0]
    rngs = [np.random.default_rng([7, b]) for b in range(len(idx))]
    batch = stacks.batch(idx, rngs)
    assert batch.context.shape == (8, 1, 32, 32) and batch.targets.shape == (8, 3, 1, 32, 32)
    assert batch.context_angle.shape == (8,) and batch.deltas.shape == (8, 3)
    assert batch.ids == ["ct0", "ct1", "ct2", "ct1", "ct0", "ct2", "ct2", "ct0"]
    assert torch.all(batch.tilt == 0)
    wanted = set(_sampling().deltas_deg)
    for b in range(len(idx)):
        drrs, geometry, side = stored[batch.ids[b]]
        assert list(geometry.angles) == side["angles_deg"] == ANGLES
        c = float(batch.context_angle[b])
        assert c in ANGLES and abs(c) <= 45.0                  # frontal, truncated at 45
        np.testing.assert_array_equal(batch.context[b, 0].numpy(), drrs[ANGLES.index(c)])
        for k, d in enumerate(batch.deltas[b].tolist()):
            assert d in wanted and d != 0                      # every delta exists here
            np.testing.assert_array_equal(batch.targets[b, k, 0].numpy(),
                                          drrs[ANGLES.index(c + d)])
    # the same generators give the same batch; other generators another one
    again = stacks.batch(idx, [np.random.default_rng([7, b]) for b in range(len(idx))])
    for name in ("context", "targets", "context_angle", "deltas"):
        assert torch.equal(getattr(batch, name), getattr(again, name)), name
    other = stacks.batch(idx, [np.random.default_rng([8, b]) for b in range(len(idx))])
    assert not torch.equal(batch.deltas, other.deltas)


def test_context_distribution_targets_and_augmentation(data):
    stacks = DRRStackSet(data / "drr", _sampling(context="uniform", targets_per_context=2))
    seen = {stacks.sample(0, np.random.default_rng(s)).context_angle for s in range(300)}
    assert seen == set(ANGLES)                                 # uniform reaches every angle
    frontal = DRRStackSet(data / "drr", _sampling(context_sigma_deg=5.0))
    ctx = [frontal.sample(1, np.random.default_rng(s)).context_angle for s in range(100)]
    assert set(ctx) <= {-15.0, 0.0, 15.0} and ctx.count(0.0) > 80
    # deltas no stack angle can give fall back to the nearest available one
    far = DRRStackSet(data / "drr", _sampling(deltas_deg=(170.0,), targets_per_context=2))
    for seed in range(10):
        s = far.sample(0, np.random.default_rng(seed))
        avail = wrap_deg([a - s.context_angle for a in ANGLES if a != s.context_angle])
        best = avail[np.argmin(np.abs(wrap_deg(avail - 170.0)))]
        assert np.all(s.deltas == best), (s.context_angle, s.deltas, best)
    # intensity jitter and noise as the on-the-fly renderer does
    aug = DRRStackSet(data / "drr", _sampling(intensity_jitter=0.1, noise_std=0.05))
    clean = DRRStackSet(data / "drr", _sampling())
    a, c = aug.sample(2, np.random.default_rng(3)), clean.sample(2, np.random.default_rng(3))
    assert a.context_angle == c.context_angle and np.array_equal(a.deltas, c.deltas)
    assert not torch.equal(a.context, c.context)
    torch.testing.assert_close(a.context, c.context, rtol=0.1, atol=0.3)


def test_resampling_to_the_model_size(data):
    with warnings.catch_warnings():
        warnings.simplefilter("error", StackFieldOfViewWarning)   # same field of view: silent
        stacks = DRRStackSet(data / "big" / "ct0.nii.gz", _sampling())
    drrs, _, _ = read_drr_stack(data / "big" / "ct0.nii.gz")
    assert drrs.shape == (13, 48, 48)
    views, angles, item = stacks.get(0)
    assert views.shape == (13, 32, 32) and item.detector_shape == (48, 48)
    ref = F.interpolate(torch.from_numpy(drrs)[:, None], size=(32, 32), mode="bilinear",
                        antialias=True, align_corners=False)[:, 0]
    torch.testing.assert_close(views, ref)
    # the 48 px stack shows the same anatomy as the 32 px one of the same CT
    small = read_drr_stack(data / "drr" / "ct0.nii.gz")[0]
    assert np.corrcoef(views.numpy().ravel(), small.ravel())[0, 1] > 0.98
    batch = stacks.batch([0, 0], np.random.default_rng(0))
    assert batch.context.shape == (2, 1, 32, 32) and batch.targets.shape == (2, 3, 1, 32, 32)
    # a field of view far from views.field_of_view_mm is reported, once
    with pytest.warns(StackFieldOfViewWarning, match="3 DRR stacks .* cover 400 x 400 mm"):
        DRRStackSet(data / "drr", _sampling(field_of_view_mm=300.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", StackFieldOfViewWarning)
        DRRStackSet(data / "drr", _sampling(field_of_view_mm=300.0))


def test_bad_stacks_are_skipped_and_empty_folders_refused(data, tmp_path):
    folder = tmp_path / "drr"
    shutil.copytree(data / "drr", folder)
    img = folder / "ct1.nii.gz"
    img.write_bytes(img.read_bytes()[:300])                          # truncated, sidecar intact
    side = json.loads((folder / "ct2.json").read_text())
    side["complete"] = False                                         # an interrupted job
    (folder / "ct2.json").write_text(json.dumps(side))
    shutil.copy(data / "cts" / "ct0.nii.gz", folder / "a_ct_not_a_stack.nii.gz")
    with pytest.warns(StackLoadWarning, match="incomplete"):
        items = list_stacks(f"stacks:{folder}")
    assert [it.id for it in items] == ["ct0", "ct1"]
    stacks = DRRStackSet(items, _sampling())
    with pytest.warns(StackLoadWarning, match="ct1"):
        batch = stacks.batch([1, 0, 1], np.random.default_rng(0))
    assert batch.ids == ["ct0", "ct0", "ct0"] and set(stacks.bad) == {1}
    with warnings.catch_warnings():
        warnings.simplefilter("error", StackLoadWarning)             # reported only once
        stacks.batch([1], np.random.default_rng(1))
    # nothing readable: one clear error naming the folder
    img0 = folder / "ct0.nii.gz"
    img0.write_bytes(img0.read_bytes()[:300])
    with pytest.warns(StackLoadWarning):
        with pytest.raises(InputError, match="none of the 2 DRR stacks could be read") as e:
            DRRStackSet(f"stacks:{folder}", _sampling()).batch([0], np.random.default_rng(0))
    assert str(folder) in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no usable DRR stack") as e:
        DRRStackSet(f"stacks:{empty}", _sampling())
    assert str(empty) in str(e.value)
    with pytest.raises(InputError, match="holds no usable DRR stack"):
        list_stacks(data / "cts")                                    # CTs are not stacks
    # a stack with a single angle cannot give a context and a target
    one = tmp_path / "one"
    assert main(["drr", str(data / "cts" / "ct0.nii.gz"), "--out", str(one / "s.nii.gz"),
                 "--angles", "0", "--detector", "32", "32", "--pixel-spacing", "15"]) == 0
    with pytest.warns(StackLoadWarning, match="distinct angle"):
        with pytest.raises(InputError, match="holds no usable"):
            list_stacks(f"stacks:{one}")
    # a list file of stacks, relative to the list
    lst = tmp_path / "list.txt"
    lst.write_text(f"# two stacks\n{data / 'drr' / 'ct2.nii.gz'}\n../{tmp_path.name}/drr/ct0.json\n")
    assert [it.id for it in list_stacks(f"stacks:{lst}")] == ["ct2", "ct0"]


def test_stack_evaluation_uses_stored_views(data):
    from XrayWorldModel.models import WorldModel
    from XrayWorldModel.train.evaluate import score_views
    from XrayWorldModel.config import TrainConfig
    cfg = TrainConfig.from_dict({"model": dict(_TINY_MODEL), "views": {"image_size": 32}})
    model = WorldModel(cfg.model)
    stacks = DRRStackSet(data / "drr", _sampling())
    mean = stacks.mean_views([90.0, 45.0])
    drrs = [read_drr_stack(it.path)[0] for it in stacks.items]
    np.testing.assert_allclose(mean[90.0], np.mean([d[-1] for d in drrs], axis=0), rtol=1e-6)
    true = stacks.true_views(0.0, [90.0, 45.0])               # the stored views, as they are
    assert true.views.shape == (3, 3, 32, 32)
    np.testing.assert_allclose(true.views[:, 1], [d[-1] for d in drrs], rtol=1e-6)
    np.testing.assert_array_equal(true.angles, np.tile([0.0, 90.0, 45.0], (3, 1)))
    out = score_views(model, stacks, [90.0, 45.0], mean)
    assert set(out) == {"90", "45"}
    for row in out.values():
        assert set(row) == {f"{n}_{m}" for n in ("world_model", "copy_input", "mean_view")
                            for m in ("psnr", "ssim")}
        assert all(np.isfinite(v) for v in row.values())
    with pytest.raises(InputError, match="within 1 deg of the validation angle 100"):
        stacks.require_angles([90.0, 100.0])


_TINY_MODEL = {"image_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "heads": 2,
               "transition_depth": 1, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2,
               "decoder_channels": 4, "n_freq": 2, "latent_loss": "smooth_l1"}


def _train_config(tmp_path, source, **run):
    from XrayWorldModel.config import TrainConfig
    r = {"out_dir": str(tmp_path / "run"), "seed": 3, "device": "cpu", "log_every": 1,
         "val_every": 4, "checkpoint_every": 4, "keep_last": 2, "val_angles": [90.0, 45.0]}
    r.update(run)
    return TrainConfig.from_dict({
        "model": dict(_TINY_MODEL),
        "data": {"source": source, "val_count": 1},
        "views": {"image_size": 32, "field_of_view_mm": 400.0, "targets_per_context": 2,
                  "intensity_jitter": 0.05, "noise_std": 0.01},
        "optim": {"batch_size": 4, "steps": 4, "lr": 1e-3, "warmup_steps": 1},
        "run": r})


def test_training_from_stacks_writes_a_validated_checkpoint(data, tmp_path):
    from XrayWorldModel.train.trainer import Trainer, train
    cfg = _train_config(tmp_path, f"stacks:{data / 'drr'}")
    trainer = Trainer(cfg, progress=False)
    assert [it.id for it in trainer.train_data.items] == ["ct0", "ct1"]
    assert [it.id for it in trainer.val_data.items] == ["ct2"]      # the last val_count held out
    a, b = trainer._batch(2), trainer._batch(2)                       # planned from (seed, step)
    assert torch.equal(a.context, b.context) and torch.equal(a.deltas, b.deltas)
    assert set(a.ids) <= {"ct0", "ct1"}
    records = []
    last = train(cfg, progress=False, on_log=records.append)
    assert np.isfinite(last["total"])
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records == logged                      # on_log sees every record of metrics.jsonl
    assert [r["step"] for r in records if "loss_total" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in records if "validation" in r] == [4]
    card = json.loads((tmp_path / "run" / "checkpoints" / "step-0000004.json").read_text())
    assert card["step"] == 4 and card["training_data"] == cfg.data.source
    metrics = card["metrics"]
    assert set(metrics) == {"90", "45"}
    assert all(np.isfinite(v) for row in metrics.values() for v in row.values())
    # a validation angle the stacks do not hold is refused before training starts
    with pytest.raises(InputError, match="validation angle 100"):
        Trainer(_train_config(tmp_path, f"stacks:{data / 'drr'}", val_angles=[100.0]),
                progress=False)

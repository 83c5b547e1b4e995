"""Tests of the world model's networks and losses (tiny configs, CPU, a few seconds)."""

import pytest
import torch

from XrayWorldModel.errors import InputError
from XrayWorldModel.models import (ActionEmbedding, EMAEncoder, PixelLoss, WorldModel,
                                   WorldModelConfig, cycle_loss, ema_momentum, info_nce,
                                   world_model_losses)

TINY = dict(image_size=32, patch_size=8, embed_dim=32, depth=1, heads=2, transition_depth=1,
            decoder_dim=32, decoder_depth=1, decoder_heads=2, decoder_channels=4, n_freq=3)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_model(**kw):
    return WorldModel(WorldModelConfig.from_dict({**TINY, **kw}))


def images(b=4, size=32):
    """DRR-like views in DRR units (0..~8): a body ellipse plus a blob placed per item."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size),
                            indexing="ij")
    c = torch.rand(b, 2, 1, 1) - 0.5
    r = ((xx - c[:, :1]) ** 2 + (yy - c[:, 1:]) ** 2)
    body = 4.0 * (1 - (xx ** 2 + 0.5 * yy ** 2)).clamp(min=0)
    return body + 4.0 * torch.exp(-r / 0.1)                    # [b, 1, size, size]


def test_shapes_of_every_method():
    m = tiny_model()
    x = images(3)
    z = m.encode(x, torch.tensor([0.0, 15.0, -30.0]))
    assert z.shape == (3, 16, 32)
    assert m.step(z, 30.0).shape == z.shape
    assert m.step(z, torch.full((3,), 30.0), angle=0.0).shape == z.shape
    assert m.rollout(z, torch.full((3, 4), 15.0), angle=0.0).shape == (3, 4, 16, 32)
    assert m.decode(z).shape == (3, 1, 32, 32)
    assert m.predict_view(x, 0.0, 90.0).shape == (3, 1, 32, 32)
    assert m.predict_view(x, 0.0, 90.0, n_steps=3).shape == (3, 1, 32, 32)
    with pytest.raises(ValueError):
        m.encode(torch.zeros(2, 1, 16, 16), 0.0)
    with pytest.raises(ValueError, match="tilt"):
        m.step(z, 10.0, tilt=5.0)
    assert tiny_model(tilt=True).step(z, 10.0, angle=0.0, tilt=5.0).shape == z.shape


def test_action_embedding_distinguishes_angles_and_is_periodic():
    emb = ActionEmbedding(16, n_freq=4, tilt=True)
    d = torch.tensor([0.0, 360.0, -360.0, 30.0, 90.0])
    out = emb(d, angle=torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0]))
    assert torch.allclose(out[0], out[1], atol=1e-6) and torch.allclose(out[0], out[2], atol=1e-6)
    assert (out[0] - out[3]).abs().max() > 1e-3 and (out[3] - out[4]).abs().max() > 1e-3
    # The start angle, the tilt and whether the angle is known all change the token.
    same_d = torch.full((2,), 30.0)
    assert (emb(same_d, torch.tensor([0.0, 45.0]))[0]
            - emb(same_d, torch.tensor([0.0, 45.0]))[1]).abs().max() > 1e-3
    assert (emb(same_d[:1], torch.zeros(1)) - emb(same_d[:1], None)).abs().max() > 1e-3
    assert (emb(same_d[:1], None, torch.zeros(1))
            - emb(same_d[:1], None, torch.full((1,), 10.0))).abs().max() > 1e-3


def test_step_by_zero_is_identity_and_nonzero_step_changes_state():
    m = tiny_model()
    z = m.encode(images(2), 0.0)
    assert torch.equal(m.step(z, 0.0, angle=0.0), z)
    assert torch.allclose(m.step(z, 360.0, angle=0.0), z, atol=1e-5)
    assert (m.step(z, 90.0, angle=0.0) - z).abs().mean() > 1e-3
    # An identity step returns exactly: the cycle loss of the model at delta 0 is 0,
    # and so is the cycle loss of an identity transition at any delta.
    assert cycle_loss(m.step, z, torch.zeros(2), torch.zeros(2)).item() == 0.0
    assert cycle_loss(lambda s, d, a: s, z, torch.full((2,), 45.0)).item() == 0.0
    assert cycle_loss(m.step, z, torch.full((2,), 45.0), torch.zeros(2)).item() > 0.0


def test_gradients_reach_every_parameter_from_combined_loss():
    for latent in ("smooth_l1", "infonce"):
        m = tiny_model(latent_loss=latent)
        ema = EMAEncoder(m.encoder)
        x, t = images(4), images(8).view(4, 2, 1, 32, 32)
        out = world_model_losses(m, ema, x, torch.zeros(4), t,
                                 torch.tensor([[15.0, 90.0]] * 4))
        assert set(out) == {"latent", "pixel", "rollout", "cycle", "total"}
        assert all(torch.isfinite(v) for v in out.values())
        out["total"].backward()
        missing = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
        assert not missing, missing
        assert all(p.grad is None for p in ema.parameters())


def test_ema_moves_target_by_scheduled_momentum():
    assert ema_momentum(0, 100) == pytest.approx(0.996)
    assert ema_momentum(100, 100) == pytest.approx(1.0)
    assert ema_momentum(50, 100) == pytest.approx(0.998)
    assert ema_momentum(25, 100) < ema_momentum(75, 100)
    m = tiny_model()
    ema = EMAEncoder(m.encoder)
    assert all(not p.requires_grad for p in ema.parameters())
    with torch.no_grad():
        for p in m.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in ema.parameters()]
    mom = ema.update(m.encoder, step=0, total_steps=10)
    assert mom == pytest.approx(0.996)
    for b, t, o in zip(before, ema.parameters(), m.encoder.parameters()):
        assert torch.allclose(t, mom * b + (1 - mom) * o, atol=1e-6)
    assert ema.update(m.encoder, step=10, total_steps=10) == 1.0
    ema.train()
    assert not ema.encoder.training


def test_info_nce_prefers_matching_pairs():
    a = torch.randn(16, 8, 32)
    b = a + 0.1 * torch.randn_like(a)
    matched = info_nce(a, b, temperature=0.1)
    shuffled = info_nce(a, b[torch.roll(torch.arange(16), 1)], temperature=0.1)
    assert matched < 0.1 < shuffled


def test_pixel_loss_zero_for_identical_and_grows_with_noise():
    loss = PixelLoss()
    x = images(2) / 10.0
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    small = loss(x + 0.02 * torch.randn_like(x), x).item()
    large = loss(x + 0.2 * torch.randn_like(x), x).item()
    assert 0.0 < small < large


def test_overfits_a_single_batch():
    torch.set_num_threads(2)
    m = tiny_model()
    ema = EMAEncoder(m.encoder)
    x, t = images(4), images(4).flip(-1).view(4, 1, 1, 32, 32)
    args = (x, torch.zeros(4), t, torch.full((4, 1), 90.0))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for i in range(30):
        loss = world_model_losses(m, ema, *args)["total"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(m.encoder, i, 30)
    final = world_model_losses(m, ema, *args)["total"].item()
    assert final < 0.5 * first, (first, final)


def test_config_rejects_unknown_key_and_wrong_type():
    with pytest.raises(InputError, match="embed_dimm"):
        WorldModelConfig.from_dict({"embed_dimm": 64})
    with pytest.raises(InputError, match="depth"):
        WorldModelConfig.from_dict({"depth": "4"})
    with pytest.raises(InputError, match="tilt"):
        WorldModelConfig.from_dict({"tilt": 1})
    with pytest.raises(InputError, match="patch_size"):
        WorldModelConfig.from_dict({"image_size": 30, "patch_size": 8})
    with pytest.raises(InputError, match="latent_loss"):
        WorldModelConfig.from_dict({"latent_loss": "mse"})
    with pytest.raises(InputError, match="nope"):
        WorldModelConfig.preset("nope")
    c = WorldModelConfig.from_dict({"input_scale": 5})   # an int is a fine float
    assert c.input_scale == 5.0 and isinstance(c.input_scale, float)
    assert WorldModelConfig.from_dict(c.to_dict()) == c
    paper = WorldModelConfig.preset("paper")
    assert (paper.image_size, paper.patch_size, paper.embed_dim, paper.depth,
            paper.heads, paper.temperature) == (224, 16, 768, 12, 12, 0.1)


def test_cpu_small_forward_backward_is_small_and_finite():
    """Size and a finite forward/backward; its speed is measured by benchmarks/bench_train.py,
    not asserted here (wall-clock asserts fail on a busy machine)."""
    c = WorldModelConfig.preset("cpu-small")
    m = WorldModel(c)
    counts = m.num_parameters()
    print("cpu-small parameters:", counts)
    assert counts["total"] < 5_000_000
    assert counts["total"] == counts["encoder"] + counts["transition"] + counts["decoder"]
    x = images(8, c.image_size)
    y = m.predict_view(x, 0.0, 90.0)
    (y - x).abs().mean().backward()
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_sincos_position_embedding_is_fixed_and_row_coded():
    """Fixed sin/cos positions: a buffer (not trained), tokens of one row share the row code."""
    from XrayWorldModel.models.encoder import sincos_2d
    pe = sincos_2d((4, 3), 16)
    assert pe.shape == (1, 12, 16)
    rows = pe[0].view(4, 3, 16)
    assert torch.equal(rows[:, 0, :8], rows[:, 2, :8])          # row half: same along a row
    assert not torch.allclose(rows[0, 0, :8], rows[1, 0, :8])   # differs between rows
    m = WorldModel(WorldModelConfig(**TINY))
    names = {n for n, _ in m.named_parameters()}
    assert not any(n.endswith("pos_embed") for n in names)
    assert "encoder.pos_embed" in m.state_dict()
    learned = WorldModel(WorldModelConfig(**TINY, pos_embed="learned"))
    assert "encoder.pos_embed" in {n for n, _ in learned.named_parameters()}


def test_row_band_tokens_keep_rows_local():
    """With patches as wide as the image, token k holds detector rows [k*ph, (k+1)*ph): a
    change in those rows moves only token k's embedding, and the decoder writes token k's
    pixels back to exactly those rows."""
    cfg = WorldModelConfig(**{**TINY, "patch_size": 2, "patch_width": 32, "decoder_depth": 0,
                              "decoder_channels": 0})
    m = WorldModel(cfg).eval()
    assert m.encoder.num_tokens == 16 and m.encoder.grid_shape == (16, 1)
    x = torch.rand(1, 1, 32, 32)
    y = x.clone()
    y[0, 0, 10:12] += 1.0                                     # rows 10-11 -> token 5
    e = lambda img: m.encoder.patch_embed(img).flatten(2).transpose(1, 2)
    changed = (e(x) - e(y)).abs().sum(-1)[0] > 0
    assert changed.nonzero().flatten().tolist() == [5]
    with torch.no_grad():
        tokens = torch.randn(1, 16, cfg.embed_dim)
        out = m.decoder(tokens)
        tokens[0, 5] += 1.0
        diff = (m.decoder(tokens) - out).abs()[0, 0].sum(1) > 0
    assert diff.nonzero().flatten().tolist() == [10, 11]
    with pytest.raises(InputError, match="patch_width"):
        WorldModelConfig(**{**TINY, "patch_width": 5})


@pytest.mark.parametrize("bad", ["64,abc", "0,128", ""])
def test_bench_train_refuses_bad_view_sizes_in_one_line(bad):
    import subprocess
    import sys
    from pathlib import Path
    bench = Path(__file__).resolve().parent / "benchmarks" / "bench_train.py"
    out = subprocess.run([sys.executable, str(bench), "--resolutions", bad],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "expected sizes in pixels" in out.stderr
    assert "expected sizes in pixels" in out.stderr.strip().splitlines()[-1]   # the reason, last

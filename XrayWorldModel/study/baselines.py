"""The two 2D baselines, on the world model's own vision encoder (same architecture, same
initialisation for a given seed, same input scaling):

* **supervised**: the encoder and linear heads on its mean-pooled tokens, trained from
  scratch with binary cross-entropy on the five pathology labels and the event, from the
  augmented frontal DRRs of the labelled cases only;
* **masked autoencoder** (MAE, He et al. 2022): the encoder sees a random ``1 - mask_ratio``
  of the patch tokens of an augmented frontal DRR, a light transformer decoder fills in the
  rest, and the loss is the pixel error on the masked patches (per-patch normalised
  targets by default), on every training case, no labels.

Both then go through the same probes as every method: frozen mean-pooled tokens of the
clean 0-deg DRR (:func:`encoder_features`). Batches and masks come from generators seeded by
``(seed, step)``, weights from ``torch.manual_seed(seed)``, so a run repeats exactly.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Callable, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import XrayWorldModelError
from ..models import WorldModel, angle_features
from ..models.encoder import as_batch, transformer
from ..train.optim import adamw, optimizer_step, warmup_cosine


def build_encoder(model_config, seed: int):
    """The world model's vision encoder E, initialised exactly as ``WorldModel`` initialises
    it after ``torch.manual_seed(seed)`` (the Xray2Xray arm starts from the same weights)."""
    torch.manual_seed(seed)
    return WorldModel(model_config).encoder


def encode_visible(encoder, image: torch.Tensor, angle, keep: torch.Tensor) -> torch.Tensor:
    """``encoder``'s tokens when it sees only the patches ``keep`` ([B, K] token indices):
    the patch embedding, positions and angle code of :class:`VisionEncoder` for all tokens,
    then the transformer on the kept ones. With every token kept it equals ``encoder(image,
    angle)`` (a test checks it)."""
    x = encoder.patch_embed(image).flatten(2).transpose(1, 2) + encoder.pos_embed
    if angle is not None:
        a = as_batch(angle, x.shape[0], x.device)
        x = x + encoder.angle_embed(angle_features(a, encoder.n_freq)).unsqueeze(1)
    x = torch.gather(x, 1, keep[..., None].expand(-1, -1, x.shape[-1]))
    return encoder.norm(encoder.blocks(x))


def patchify(image: torch.Tensor, patch) -> torch.Tensor:
    """[B, 1, H, W] -> [B, N, ph*pw] in the encoder's token order (row-major); ``patch``
    is ``(ph, pw)`` or one int for square patches (row-band tokens are ``(2, W)``)."""
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    b, _, h, w = image.shape
    gh, gw = h // ph, w // pw
    x = image.reshape(b, gh, ph, gw, pw).permute(0, 1, 3, 2, 4)
    return x.reshape(b, gh * gw, ph * pw)


class MaskedAutoencoder(nn.Module):
    """The encoder plus a light decoder that predicts the masked patches."""

    def __init__(self, encoder, dim: int = 64, depth: int = 1, heads: int = 4,
                 mlp_ratio: float = 4.0, norm_pix_loss: bool = True):
        super().__init__()
        self.encoder = encoder
        d_enc = encoder.patch_embed.out_channels
        self.patch = tuple(encoder.patch_shape)
        self.norm_pix_loss = norm_pix_loss
        self.proj = nn.Linear(d_enc, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, encoder.num_tokens, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = transformer(dim, depth, heads, mlp_ratio, 0.0) if depth > 0 else None
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, self.patch[0] * self.patch[1])

    def forward(self, image: torch.Tensor, angle, keep: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the masked patches of ``image`` (normalised units) when
        the encoder sees the tokens ``keep`` [B, K]."""
        b, n = image.shape[0], self.encoder.num_tokens
        z = self.proj(encode_visible(self.encoder, image, angle, keep))
        full = self.mask_token.expand(b, n, -1).to(z.dtype)
        full = full.scatter(1, keep[..., None].expand(-1, -1, z.shape[-1]), z) + self.pos
        if self.blocks is not None:
            full = self.blocks(full)
        pred = self.head(self.norm(full)).float()
        target = patchify(image.float(), self.patch)
        if self.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        masked = torch.ones(b, n, device=image.device)
        masked.scatter_(1, keep, 0.0)
        err = ((pred - target) ** 2).mean(-1)
        return (err * masked).sum() / masked.sum()


class SupervisedNet(nn.Module):
    """The encoder and one linear head per label on its mean-pooled tokens."""

    def __init__(self, encoder, n_labels: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.patch_embed.out_channels, n_labels)

    def forward(self, image: torch.Tensor, angle) -> torch.Tensor:
        return self.head(self.encoder(image, angle).mean(dim=1))


# ----------------------------------------------------------------------------- training
def _amp(device: torch.device):
    return (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
            else nullcontext())


def fit(module: nn.Module, section, steps: int, loss_fn: Callable[[int], torch.Tensor],
        device: torch.device, desc: str, progress: bool = False,
        log: Optional[Callable[[str], None]] = None) -> Dict:
    """AdamW with linear warmup and cosine decay (the world model's schedule) and gradient
    clipping (:mod:`XrayWorldModel.train.optim`), for ``steps`` steps of ``loss_fn(step)``.
    Returns what the results record."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = adamw(params, section.lr, section.weight_decay, (0.9, 0.95))
    sched = warmup_cosine(opt, section.warmup_steps, steps)
    module.train()
    curve, t0 = [], time.perf_counter()
    every = max(1, steps // 20)
    with tqdm(total=steps, desc=desc, unit="step", disable=not progress) as bar:
        for step in range(steps):
            with _amp(device):
                loss = loss_fn(step)
            optimizer_step(opt, sched, loss, params, section.grad_clip)
            value = float(loss.detach())
            if not np.isfinite(value):
                raise XrayWorldModelError(f"{desc}: loss became non-finite at step {step + 1}")
            if (step + 1) % every == 0 or step + 1 == steps:
                curve.append([step + 1, value])
                if log is not None and not progress:
                    log(f"  {desc}: step {step + 1}/{steps} loss {value:.4f}")
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
    module.eval()
    return {"steps": steps, "batch_size": section.batch_size,
            "encoder_samples": steps * section.batch_size, "final_loss": curve[-1][1],
            "loss_curve": curve, "wall_s": time.perf_counter() - t0}


def _sampler(images: np.ndarray, angles: np.ndarray, batch: int, seed: int, tag: int,
             device: torch.device, input_scale: float):
    """``step -> (cases, images [B, 1, H, W] normalised, angles [B])`` from a view bank
    ([N, V, H, W] and [N, V]); the draw of step ``s`` depends on ``(seed, tag, s)`` only."""
    imgs = torch.from_numpy(np.ascontiguousarray(images, np.float32))
    angs = torch.from_numpy(np.ascontiguousarray(angles, np.float32))
    n, v = images.shape[:2]

    def draw(step: int):
        rng = np.random.default_rng([seed, tag, step])
        cases = rng.integers(0, n, size=batch)
        views = rng.integers(0, v, size=batch)
        x = imgs[cases, views][:, None].to(device) / input_scale
        return cases, x, angs[cases, views].to(device), rng
    return draw


def train_supervised(cfg, images: np.ndarray, angles: np.ndarray, targets: np.ndarray,
                     seed: int, device, progress: bool = False, log=None, tag: str = ""):
    """Train encoder + linear heads from scratch with BCE on ``targets`` [N, L] (0/1) from
    the view bank of the labelled cases; returns (encoder, training record)."""
    device = torch.device(device)
    s = cfg.supervised
    net = SupervisedNet(build_encoder(cfg.model, seed), targets.shape[1]).to(device)
    y_all = torch.from_numpy(np.asarray(targets, np.float32)).to(device)
    draw = _sampler(images, angles, s.batch_size, seed, 0x5EB, device, cfg.model.input_scale)

    def loss_fn(step):
        cases, x, a, _ = draw(step)
        logits = net(x, a).float()
        return F.binary_cross_entropy_with_logits(logits, y_all[torch.from_numpy(cases).to(device)])

    info = fit(net, s, cfg.steps("supervised"), loss_fn, device, f"supervised{tag}", progress, log)
    info["n_cases"] = int(images.shape[0])
    return net.encoder, info


def train_mae(cfg, images: np.ndarray, angles: np.ndarray, seed: int, device,
              progress: bool = False, log=None):
    """Masked-autoencoder pretraining of the encoder on the view bank of every training
    case; returns (encoder, training record)."""
    device = torch.device(device)
    s = cfg.mae
    encoder = build_encoder(cfg.model, seed)
    mae = MaskedAutoencoder(encoder, s.decoder_dim, s.decoder_depth, s.decoder_heads,
                            cfg.model.mlp_ratio, s.norm_pix_loss).to(device)
    n_tok = encoder.num_tokens
    n_keep = max(1, int(round(n_tok * (1.0 - s.mask_ratio))))
    draw = _sampler(images, angles, s.batch_size, seed, 0x3AE, device, cfg.model.input_scale)

    def loss_fn(step):
        _, x, a, rng = draw(step)
        keep = np.argsort(rng.random((x.shape[0], n_tok)), axis=1)[:, :n_keep]
        return mae(x, a, torch.from_numpy(keep).to(device))

    info = fit(mae, s, cfg.steps("mae"), loss_fn, device, "mae", progress, log)
    info.update(n_cases=int(images.shape[0]), tokens_seen=n_keep, tokens=n_tok)
    return mae.encoder, info


@torch.no_grad()
def encoder_features(encoder, images: np.ndarray, input_scale: float, angle: float = 0.0,
                     batch_size: int = 64) -> np.ndarray:
    """Mean-pooled tokens [N, D] (float64) of ``images`` ([N, H, W] or [N, 1, H, W], DRR
    units) seen at ``angle``: the 2D methods' features."""
    dev = next(encoder.parameters()).device
    x = torch.from_numpy(np.asarray(images, np.float32))
    if x.ndim == 3:
        x = x[:, None]
    was = encoder.training
    encoder.eval()
    out = []
    for s in range(0, x.shape[0], batch_size):
        xb = x[s:s + batch_size].to(dev) / input_scale
        out.append(encoder(xb, torch.full((xb.shape[0],), float(angle), device=dev))
                   .mean(dim=1).float().cpu().numpy())
    encoder.train(was)
    return np.concatenate(out).astype(np.float64)


__all__ = ["build_encoder", "encode_visible", "patchify", "MaskedAutoencoder", "SupervisedNet",
           "fit", "train_supervised", "train_mae", "encoder_features"]

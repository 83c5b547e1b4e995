"""World-model losses: latent prediction, pixels, multi-step rollout, cycle consistency.

Each term is a plain function so training can weight, log and test it alone;
:func:`world_model_losses` combines them with the weights in :class:`WorldModelConfig`.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn


def smooth_l1(pred: torch.Tensor, target: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Token-wise smooth L1 (robust to the occasional far-off token early in training)."""
    return F.smooth_l1_loss(pred, target, beta=beta)


def info_nce(pred: torch.Tensor, target: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE between mean-pooled, L2-normalised states of a batch.

    Item i's prediction must pick out item i's target among all targets of the batch;
    ``pred``/``target`` are ``[M, N, D]`` tokens or ``[M, D]`` vectors.
    """
    p = pred.mean(1) if pred.ndim == 3 else pred
    t = target.mean(1) if target.ndim == 3 else target
    p, t = F.normalize(p.float(), dim=-1), F.normalize(t.float(), dim=-1)
    logits = p @ t.T / temperature
    labels = torch.arange(p.shape[0], device=p.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def latent_loss(pred, target, kind: str = "smooth_l1", temperature: float = 0.1):
    """The configured latent prediction loss (``smooth_l1`` or ``infonce``)."""
    if kind == "smooth_l1":
        return smooth_l1(pred, target)
    if kind == "infonce":
        return info_nce(pred, target, temperature)
    raise ValueError(f"unknown latent loss {kind!r} (smooth_l1 or infonce)")


class PixelLoss(nn.Module):
    """L1 + ``ssim_weight`` * (1 - SSIM) on images ``[B, 1, H, W]`` in normalised units.

    L1 keeps intensities right, SSIM (MONAI, Gaussian window) rewards the structure that
    L1 alone blurs away. Zero for identical images.
    """

    def __init__(self, ssim_weight: float = 1.0, data_range: float = 1.0, win_size: int = 7):
        super().__init__()
        from monai.losses import SSIMLoss   # here, not at import: inference needs no losses
        self.ssim_weight = ssim_weight
        self.ssim = SSIMLoss(spatial_dims=2, data_range=data_range, win_size=win_size)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = F.l1_loss(pred, target)
        if self.ssim_weight:
            loss = loss + self.ssim_weight * self.ssim(pred.float(), target.float())
        return loss


Step = Callable[..., torch.Tensor]


def rollout_loss(step: Step, state: torch.Tensor, deltas: torch.Tensor, targets: torch.Tensor,
                 angle: Optional[torch.Tensor] = None,
                 loss_fn: Callable = smooth_l1) -> torch.Tensor:
    """Chain ``step`` through the increments ``deltas [B, K]`` and match each state.

    ``targets`` is ``[B, K, N, D]``: the state after 1..K increments. Errors compound
    along a rollout, so training on chains teaches T to stay on the data manifold.
    """
    losses = []
    for k in range(deltas.shape[1]):
        state = step(state, deltas[:, k], angle)
        if angle is not None:
            angle = angle + deltas[:, k]
        losses.append(loss_fn(state, targets[:, k]))
    return torch.stack(losses).mean()


def cycle_loss(step: Step, state: torch.Tensor, delta: torch.Tensor,
               angle: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Rotate by +delta then -delta and compare with the start (which is not a target).

    Needs no target view, so it regularises T on any angle, including unseen ones.
    """
    there = step(state, delta, angle)
    back = step(there, -delta, None if angle is None else angle + delta)
    return smooth_l1(back, state.detach())


def world_model_losses(model, target_encoder, context: torch.Tensor,
                       context_angle: torch.Tensor, targets: torch.Tensor,
                       deltas: torch.Tensor, pixel_loss: Optional[PixelLoss] = None
                       ) -> Dict[str, torch.Tensor]:
    """All loss terms and their weighted ``total`` for one batch.

    ``context`` ``[B, 1, H, W]`` at ``context_angle [B]`` (degrees); ``targets``
    ``[B, K, 1, H, W]`` at ``context_angle + deltas[:, k]``. Images are in DRR units;
    the model normalises them. ``target_encoder`` (the EMA copy) gives the latent targets.
    """
    cfg = model.config
    b, k = deltas.shape
    pixel_loss = pixel_loss or PixelLoss(cfg.ssim_weight)
    ctx = model.normalise(context)
    tgt = model.normalise(targets.flatten(0, 1))                      # [B*K, 1, H, W]
    tgt_angle = (context_angle[:, None] + deltas).reshape(-1)
    z0 = model.encoder(ctx, context_angle)
    with torch.no_grad():
        z_tgt = target_encoder(tgt, tgt_angle)                        # [B*K, N, D]

    # One step from the context straight to each target view.
    z0_rep = z0.repeat_interleave(k, dim=0)
    a0_rep = context_angle.repeat_interleave(k)
    z_pred = model.step(z0_rep, deltas.reshape(-1), a0_rep)
    out = {"latent": latent_loss(z_pred, z_tgt, cfg.latent_loss, cfg.temperature)}
    out["pixel"] = 0.5 * (pixel_loss(model.decoder(z_pred), tgt)
                          + pixel_loss(model.decoder(z0), ctx))

    if k > 1 and cfg.w_rollout:
        inc = torch.diff(deltas, dim=1, prepend=torch.zeros_like(deltas[:, :1]))
        z_tgt_bk = z_tgt.view(b, k, *z_tgt.shape[1:])
        out["rollout"] = rollout_loss(model.step, z0, inc, z_tgt_bk, context_angle,
                                      lambda p, t: latent_loss(p, t, cfg.latent_loss,
                                                               cfg.temperature))
    else:
        out["rollout"] = z0.new_zeros(())
    out["cycle"] = (cycle_loss(model.step, z0, deltas[:, 0], context_angle)
                    if cfg.w_cycle else z0.new_zeros(()))
    out["total"] = (cfg.w_latent * out["latent"] + cfg.w_pixel * out["pixel"]
                    + cfg.w_rollout * out["rollout"] + cfg.w_cycle * out["cycle"])
    return out

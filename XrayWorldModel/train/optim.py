"""The optimiser every trained network of the package uses: AdamW, linear warmup then cosine
decay to 1 % (:func:`lr_factor`), and one step with gradient clipping. Shared by the
world-model trainer and the study's 2D baselines, so both train on the same schedule."""
from __future__ import annotations

import math
from typing import Iterable, Tuple

import torch


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1, then cosine down to 1% at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * frac))


def adamw(params, lr: float, weight_decay: float,
          betas: Tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW over ``params``."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas)


def warmup_cosine(opt: torch.optim.Optimizer, warmup: int, total: int):
    """The :func:`lr_factor` schedule of ``opt``, stepped once per optimiser step. (A plain
    lambda, as before: its state dict, saved in checkpoints, holds no schedule object.)"""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, total))


def optimizer_step(opt: torch.optim.Optimizer, sched, loss: torch.Tensor,
                   params: Iterable[torch.Tensor], grad_clip: float) -> torch.Tensor:
    """Backpropagate ``loss``, clip the gradient norm of ``params`` to ``grad_clip``, step
    the optimiser and its schedule; returns the gradient norm before clipping."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    sched.step()
    return gnorm


__all__ = ["adamw", "lr_factor", "optimizer_step", "warmup_cosine"]

"""EMA target encoder: a slowly moving copy of E that supplies latent targets.

Targets from a momentum copy (JEPA/BYOL style) do not chase the online encoder's every
step, which keeps the latent prediction loss from collapsing. The momentum rises from
0.996 to 1.0 along a cosine, so the target freezes as training ends.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


def ema_momentum(step: int, total_steps: int, start: float = 0.996, end: float = 1.0) -> float:
    """Cosine schedule: ``start`` at step 0, ``end`` at ``total_steps`` (and after)."""
    if total_steps <= 0:
        return end
    frac = min(max(step / total_steps, 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * frac) + 1.0) / 2.0


class EMAEncoder(nn.Module):
    """Holds a frozen deep copy of an encoder and moves it towards the online one."""

    def __init__(self, encoder: nn.Module, start: float = 0.996, end: float = 1.0):
        super().__init__()
        self.start, self.end = start, end
        self.encoder = copy.deepcopy(encoder)
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True):
        """The target stays in eval mode (no dropout) whatever the caller asks."""
        super().train(mode)
        self.encoder.eval()
        return self

    def momentum(self, step: int, total_steps: int) -> float:
        return ema_momentum(step, total_steps, self.start, self.end)

    @torch.no_grad()
    def update(self, online: nn.Module, step: int, total_steps: int) -> float:
        """target <- m * target + (1 - m) * online; buffers are copied. Returns m."""
        m = self.momentum(step, total_steps)
        for t, o in zip(self.encoder.parameters(), online.parameters()):
            t.mul_(m).add_(o.detach(), alpha=1.0 - m)
        for t, o in zip(self.encoder.buffers(), online.buffers()):
            t.copy_(o)
        return m

    @torch.no_grad()
    def forward(self, image: torch.Tensor, angle=None) -> torch.Tensor:
        return self.encoder(image, angle)

"""Transition model T: predicts the state after rotating the view, and its action token.

T is a transformer over ``[action token; state tokens]``. It returns
``state + gate(delta, tilt) * f(...)``: the gate ``|(sin(delta/2), sin(tilt/2))|`` is zero
for no motion and 360-periodic, so ``step(z, 0)`` is exactly the identity whether or not T
is trained (no rotation, no change), while every parameter still receives gradients for any
non-zero rotation (a zero-initialised output layer would starve the layers before it).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

import math as _math

from .encoder import angle_features, as_batch, position_embedding, transformer


class ActionEmbedding(nn.Module):
    """(start angle, rotation delta[, tilt]) in degrees -> one action token ``[B, D]``.

    Each angle goes through sin/cos at ``n_freq`` integer frequencies (so the token is
    360-periodic) and a small MLP. An unknown start angle (``None``) zeroes its features
    and clears a "known" flag, so the same model serves callers that lack the angle.
    """

    def __init__(self, dim: int, n_freq: int = 4, tilt: bool = False):
        super().__init__()
        self.n_freq, self.tilt = n_freq, tilt
        n_in = 2 * n_freq * (3 if tilt else 2) + 1
        self.mlp = nn.Sequential(nn.Linear(n_in, dim), nn.GELU(), nn.Linear(dim, dim))

    def features(self, delta: torch.Tensor, angle: Optional[torch.Tensor] = None,
                 tilt: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, dev = delta.shape[0], delta.device
        parts = [angle_features(delta, self.n_freq)]
        if angle is None:
            parts += [torch.zeros(b, 2 * self.n_freq, device=dev), torch.zeros(b, 1, device=dev)]
        else:
            parts += [angle_features(angle, self.n_freq), torch.ones(b, 1, device=dev)]
        if self.tilt:
            t = torch.zeros(b, device=dev) if tilt is None else tilt
            parts.append(angle_features(t, self.n_freq))
        return torch.cat(parts, dim=-1)

    def forward(self, delta, angle=None, tilt=None) -> torch.Tensor:
        return self.mlp(self.features(delta, angle, tilt))


def motion_gate(delta: torch.Tensor, tilt: Optional[torch.Tensor] = None) -> torch.Tensor:
    """How far the view moves, in [0, sqrt(2)]: 0 for no motion, 1 for a half turn."""
    g = torch.sin(torch.remainder(delta, 360.0) * (math.pi / 360.0)).abs()
    if tilt is not None:
        g = torch.hypot(g, torch.sin(torch.remainder(tilt, 360.0) * (math.pi / 360.0)))
    return g


class TransitionModel(nn.Module):
    """State tokens ``[B, N, D]`` + action -> state tokens of the rotated view ``[B, N, D]``."""

    def __init__(self, num_tokens: int, embed_dim: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, n_freq: int = 4,
                 tilt: bool = False, gate: bool = True, pos_embed: str = "sincos",
                 grid_shape=None):
        super().__init__()
        self.tilt, self.gate = tilt, gate
        self.action = ActionEmbedding(embed_dim, n_freq, tilt)
        if grid_shape is None:
            g = _math.isqrt(num_tokens)
            grid_shape = (g, g)
        if grid_shape[0] * grid_shape[1] != num_tokens:
            raise ValueError(f"a {grid_shape} token grid does not hold {num_tokens} tokens")
        position_embedding(self, tuple(grid_shape), embed_dim, pos_embed)
        self.blocks = transformer(embed_dim, depth, heads, mlp_ratio, dropout)
        self.norm = nn.LayerNorm(embed_dim)
        self.out = nn.Linear(embed_dim, embed_dim)

    def forward(self, state: torch.Tensor, delta, angle=None, tilt=None) -> torch.Tensor:
        b, dev = state.shape[0], state.device
        d = as_batch(delta, b, dev, "delta")
        a = None if angle is None else as_batch(angle, b, dev, "angle")
        if tilt is not None and not self.tilt:
            raise ValueError("this transition model was built without tilt (set tilt=True)")
        t = None if tilt is None else as_batch(tilt, b, dev, "tilt")
        token = self.action(d, a, t).unsqueeze(1)
        h = self.blocks(torch.cat([token, state + self.pos_embed], dim=1))
        update = self.out(self.norm(h[:, 1:]))
        if self.gate:
            update = motion_gate(d, t).view(b, 1, 1) * update
        return state + update

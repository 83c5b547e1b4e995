"""Pixel decoder D: state tokens -> the projection image they describe.

A small transformer mixes the tokens, each token is projected linearly to its patch of
pixels (unpatchify), and a light residual conv smooths the seams between patches.
Works in the model's normalised intensity units; :class:`WorldModel` rescales.
"""
from __future__ import annotations

import torch
from torch import nn

from .encoder import transformer


class PixelDecoder(nn.Module):
    """Tokens ``[B, N, D]`` -> image ``[B, 1, H, W]`` (normalised units)."""

    def __init__(self, image_size: int, patch_size: int, embed_dim: int, dim: int,
                 depth: int, heads: int, channels: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.0):
        super().__init__()
        self.image_size, self.patch_size = image_size, patch_size
        self.grid = image_size // patch_size
        self.proj_in = nn.Linear(embed_dim, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = transformer(dim, depth, heads, mlp_ratio, dropout) if depth > 0 else None
        self.norm = nn.LayerNorm(dim)
        self.to_pixels = nn.Linear(dim, patch_size * patch_size)
        self.refine = (nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.GELU(),
                                     nn.Conv2d(channels, 1, 3, padding=1))
                       if channels > 0 else None)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, _ = tokens.shape
        if n != self.grid * self.grid:
            raise ValueError(f"expected {self.grid * self.grid} tokens, got {n}")
        h = self.proj_in(tokens) + self.pos_embed
        if self.blocks is not None:
            h = self.blocks(h)
        p, g = self.patch_size, self.grid
        x = self.to_pixels(self.norm(h))                       # [B, N, p*p]
        x = x.view(b, g, g, p, p).permute(0, 1, 3, 2, 4).reshape(b, 1, g * p, g * p)
        if self.refine is not None:
            x = x + self.refine(x)
        return x

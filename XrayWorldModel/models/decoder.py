"""Pixel decoder D: state tokens -> the projection image they describe.

A small transformer mixes the tokens, each token is projected linearly to its patch of
pixels (unpatchify), and a light residual conv smooths the seams between patches.
Works in the model's normalised intensity units; :class:`WorldModel` rescales.
"""
from __future__ import annotations

import torch
from torch import nn

from .encoder import position_embedding, token_grid, transformer


class PixelDecoder(nn.Module):
    """Tokens ``[B, N, D]`` -> image ``[B, 1, H, W]`` (normalised units)."""

    def __init__(self, image_size: int, patch_size: int, embed_dim: int, dim: int,
                 depth: int, heads: int, channels: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, pos_embed: str = "sincos", patch_width: int = 0):
        super().__init__()
        self.image_size, self.patch_size = image_size, patch_size
        self.grid_shape, self.patch_shape = token_grid(image_size, patch_size, patch_width)
        self.proj_in = nn.Linear(embed_dim, dim)
        position_embedding(self, self.grid_shape, dim, pos_embed)
        self.blocks = transformer(dim, depth, heads, mlp_ratio, dropout) if depth > 0 else None
        self.norm = nn.LayerNorm(dim)
        self.to_pixels = nn.Linear(dim, self.patch_shape[0] * self.patch_shape[1])
        self.refine = (nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.GELU(),
                                     nn.Conv2d(channels, 1, 3, padding=1))
                       if channels > 0 else None)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, _ = tokens.shape
        (gh, gw), (ph, pw) = self.grid_shape, self.patch_shape
        if n != gh * gw:
            raise ValueError(f"expected {gh * gw} tokens, got {n}")
        h = self.proj_in(tokens) + self.pos_embed
        if self.blocks is not None:
            h = self.blocks(h)
        x = self.to_pixels(self.norm(h))                       # [B, N, ph*pw]
        x = x.view(b, gh, gw, ph, pw).permute(0, 1, 3, 2, 4).reshape(b, 1, gh * ph, gw * pw)
        if self.refine is not None:
            x = x + self.refine(x)
        return x

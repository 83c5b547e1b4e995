"""Vision model E: a ViT that turns one single-channel projection into patch tokens.

The tokens are the world model's state. Attention comes from PyTorch's
``nn.TransformerEncoderLayer`` (pre-norm, batch-first) so it uses the fused kernels.
The view angle is added to every token through sin/cos features, because one projection
alone does not say from where it was taken.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn


def angle_features(angle_deg: torch.Tensor, n_freq: int) -> torch.Tensor:
    """sin/cos of k*angle for k = 1..n_freq, angle in degrees -> ``[..., 2 * n_freq]``.

    Integer frequencies make the features exactly 360-periodic; the angle is first reduced
    modulo 360 in degrees so that 0 and 360 give bit-identical features.
    """
    a = torch.remainder(angle_deg.float(), 360.0) * (math.pi / 180.0)
    k = torch.arange(1, n_freq + 1, device=a.device, dtype=a.dtype)
    ka = a.unsqueeze(-1) * k
    return torch.cat([torch.sin(ka), torch.cos(ka)], dim=-1)


def as_batch(value, batch: int, device, name: str = "angle") -> torch.Tensor:
    """A scalar, sequence or tensor of angles -> a float tensor ``[batch]`` on ``device``."""
    t = torch.as_tensor(value, dtype=torch.float32, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    t = t.reshape(-1)
    if t.shape[0] != batch:
        raise ValueError(f"{name} has {t.shape[0]} values for a batch of {batch}")
    return t


def sincos_2d(grid, dim: int) -> torch.Tensor:
    """Fixed 2D sin/cos position embedding ``[1, rows*cols, dim]`` (as in MAE); ``grid`` is
    ``rows`` (a square grid) or ``(rows, cols)``.

    A quarter of the channels encode the row, a quarter the column at geometric frequencies.
    Tokens of one image row share their row code from the first step, which matters here: a
    rotation about the patient's long axis keeps every structure in its row, so attention can
    match rows across views at once instead of learning that alignment from data.
    """
    if dim % 4:
        raise ValueError(f"sin/cos position embedding needs dim divisible by 4, got {dim}")
    q = dim // 4
    omega = 1.0 / (10000.0 ** (torch.arange(q, dtype=torch.float64) / q))
    gh, gw = (grid, grid) if isinstance(grid, int) else grid
    rows, cols = torch.meshgrid(torch.arange(gh, dtype=torch.float64),
                                torch.arange(gw, dtype=torch.float64), indexing="ij")
    r = rows.reshape(-1, 1) * omega
    c = cols.reshape(-1, 1) * omega
    emb = torch.cat([torch.sin(r), torch.cos(r), torch.sin(c), torch.cos(c)], dim=1)
    return emb.float().unsqueeze(0)


def token_grid(image_size: int, patch_size: int, patch_width: int = 0):
    """(rows, cols) of tokens and the patch (height, width): ``patch_width`` 0 means square.

    A patch as wide as the image makes each token one band of detector rows. Rotating the
    view about the patient's long axis keeps every axial slab in its rows, so a row-band
    token is a 1D projection of one slab and the transition maps it to the same slab's
    projection at the new angle, with weights shared by all slabs: the physics of a
    circular orbit as an inductive bias."""
    ph, pw = patch_size, (patch_width or patch_size)
    return (image_size // ph, image_size // pw), (ph, pw)


def position_embedding(module: nn.Module, grid, dim: int, kind: str) -> None:
    """Give ``module`` its ``pos_embed``: a fixed sin/cos buffer or a learned parameter."""
    gh, gw = (grid, grid) if isinstance(grid, int) else grid
    if kind == "sincos":
        module.register_buffer("pos_embed", sincos_2d((gh, gw), dim))
    elif kind == "learned":
        module.pos_embed = nn.Parameter(torch.zeros(1, gh * gw, dim))
        nn.init.trunc_normal_(module.pos_embed, std=0.02)
    else:
        raise ValueError(f"position embedding must be 'sincos' or 'learned', got {kind!r}")


def transformer(dim: int, depth: int, heads: int, mlp_ratio: float, dropout: float) -> nn.Module:
    """A stack of pre-norm transformer layers (PyTorch's own blocks, no hand-written attention)."""
    layer = nn.TransformerEncoderLayer(dim, heads, int(dim * mlp_ratio), dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class VisionEncoder(nn.Module):
    """Image ``[B, 1, H, W]`` (already normalised) + angle in degrees -> tokens ``[B, N, D]``."""

    def __init__(self, image_size: int, patch_size: int, embed_dim: int, depth: int,
                 heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, n_freq: int = 4,
                 pos_embed: str = "sincos", patch_width: int = 0):
        super().__init__()
        self.image_size, self.patch_size, self.n_freq = image_size, patch_size, n_freq
        self.grid_shape, self.patch_shape = token_grid(image_size, patch_size, patch_width)
        self.grid = self.grid_shape[0]
        self.patch_embed = nn.Conv2d(1, embed_dim, self.patch_shape, stride=self.patch_shape)
        position_embedding(self, self.grid_shape, embed_dim, pos_embed)
        self.angle_embed = nn.Sequential(nn.Linear(2 * n_freq, embed_dim), nn.GELU(),
                                         nn.Linear(embed_dim, embed_dim))
        self.blocks = transformer(embed_dim, depth, heads, mlp_ratio, dropout)
        self.norm = nn.LayerNorm(embed_dim)

    @property
    def num_tokens(self) -> int:
        return self.grid_shape[0] * self.grid_shape[1]

    def forward(self, image: torch.Tensor, angle: Optional[torch.Tensor] = None) -> torch.Tensor:
        if image.ndim != 4 or image.shape[1] != 1 or image.shape[-2:] != (self.image_size,) * 2:
            raise ValueError(f"expected images [B, 1, {self.image_size}, {self.image_size}], "
                             f"got {tuple(image.shape)}")
        x = self.patch_embed(image).flatten(2).transpose(1, 2) + self.pos_embed
        if angle is not None:
            a = as_batch(angle, x.shape[0], x.device)
            x = x + self.angle_embed(angle_features(a, self.n_freq)).unsqueeze(1)
        return self.norm(self.blocks(x))

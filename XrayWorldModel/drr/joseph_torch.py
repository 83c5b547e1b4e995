"""Joseph's method in plain PyTorch (``grid_sample``), for CUDA and for autograd anywhere.

Same sampling as :mod:`.joseph` (one bilinear sample per slice of the ray's dominant axis,
zero outside the volume), so the CPU and GPU renderers agree to float rounding. Rays are
processed in chunks so memory stays bounded whatever the detector size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .rays import COL, DET0, ROW, SRC


def joseph_project_torch(mu: torch.Tensor, starts: torch.Tensor, deltas: torch.Tensor,
                         lengths: torch.Tensor, max_samples: int = 2 ** 24) -> torch.Tensor:
    """Line integrals of index-space rays through ``mu`` ([X, Y, Z] tensor), differentiable.

    ``starts``/``deltas`` are [N, 3] index-space rays and ``lengths`` [N] in mm, all on
    ``mu``'s device. Returns [N] in ``mu``'s dtype.
    """
    shape = torch.tensor(mu.shape, device=mu.device, dtype=starts.dtype)
    dom = deltas.abs().argmax(dim=1)
    out = torch.zeros(starts.shape[0], device=mu.device, dtype=mu.dtype)
    vol = mu[None, None]  # [1, 1, X, Y, Z]; grid_sample's (x, y, z) = our (k, j, i)
    n_max = int(max(mu.shape))
    chunk = max(1, max_samples // n_max)
    k = torch.arange(n_max, device=mu.device, dtype=starts.dtype)
    for lo in range(0, starts.shape[0], chunk):
        s = starts[lo:lo + chunk]
        d = deltas[lo:lo + chunk]
        a = dom[lo:lo + chunk]
        da = d.gather(1, a[:, None])                       # [n, 1]
        sa = s.gather(1, a[:, None])
        na = shape[a][:, None]
        t = (k[None, :] - sa) / da                         # [n, K]
        pts = s[:, None, :] + t[..., None] * d[:, None, :]  # [n, K, 3] index coords
        valid = (k[None, :] < na) & (t >= 0) & (t <= 1)
        inside = ((pts > -1) & (pts < shape)).all(dim=-1)
        valid &= inside
        norm = pts / (shape - 1).clamp(min=1) * 2 - 1      # align_corners=True
        grid = norm.flip(-1).to(mu.dtype)[None, :, :, None, :]  # [1, n, K, 1, 3] as (z, y, x)
        samples = F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros",
                                align_corners=True)[0, 0, :, :, 0]  # [n, K]
        samples = samples * valid.to(mu.dtype)
        w = (lengths[lo:lo + chunk] / da[:, 0].abs()).to(mu.dtype)
        out = out.index_put((torch.arange(lo, lo + s.shape[0], device=mu.device),),
                            samples.sum(dim=1) * w)
    return out


def dense_rays_torch(table, device) -> tuple:
    """``table.dense()`` computed on ``device``: start [N, 3], delta [N, 3] (index space) and
    length [N] (mm) as float32 tensors, built there from the table's few vectors per angle
    (in float64), so no ray array crosses from the host."""
    A, H, W = table.shape
    f64 = dict(device=device, dtype=torch.float64)
    jj = torch.arange(W, **f64)[None, None, :, None]
    ii = torch.arange(H, **f64)[None, :, None, None]
    out = []
    for t in (table.index, table.lps):
        t = torch.as_tensor(t, **f64)[:, None, None]               # [A, 1, 1, 4, 3]
        p = t[..., DET0, :] + jj * t[..., COL, :] + ii * t[..., ROW, :]
        s = t[..., SRC, :] + table.beam * p
        out.append((s.reshape(-1, 3), (p - s).reshape(-1, 3)))
    (s_idx, d_idx), (_, d_lps) = out
    return s_idx.float(), d_idx.float(), torch.linalg.vector_norm(d_lps, dim=1).float()

"""Joseph's method in plain PyTorch (``grid_sample``), for CUDA and for autograd anywhere.

Same sampling as :mod:`.joseph` (one bilinear sample per slice of the ray's dominant axis,
zero outside the volume), so the CPU and GPU renderers agree to float rounding. Rays are
processed in chunks so memory stays bounded whatever the detector size.

:func:`joseph_project_columns_torch` is the same sum for the common case of an axial volume
and no tilt, as the numba column kernel computes it: the rays of one detector column share
their path in the axial plane, so that path is interpolated once into a sheet [slice, z] and
each ray is then one linear interpolation per slice along the sheet. On the CPU it takes
about 0.6x the time of sampling every ray in 3D (one 64x64 view of a 128^3 volume: 21 against
34 ms on one thread), so small work such as ``infer``'s consistency view needs no numba.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .raytable import COL, DET0, ROW, SRC, columns_share_paths


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


def _gather_pairs(flat: torch.Tensor, base: torch.Tensor, pos: torch.Tensor, n: int) -> torch.Tensor:
    """Linear interpolation at ``pos`` (index, float64) along lines of ``n`` values, each
    stored from ``flat[base]`` on with one zero before and two after: zero outside the line.
    Clamping ``pos`` to [-1, n] lands every outside tap on a zero with weight 1 (or on a
    zero with weight 0)."""
    pos = pos.clamp(-1.0, float(n))
    low = torch.floor(pos)
    w = (pos - low).to(flat.dtype)
    at = base + low.long() + 1
    v0 = flat.take(at)
    return v0 + w * (flat.take(at + 1) - v0)


def _column_group(mu: torch.Tensor, a: int, start, delta, length, max_samples: int):
    """Line integrals [H, n] of ``n`` columns whose rays all run mostly along in-plane axis
    ``a``; ``start``/``delta`` [H, n, 3] (index space) and ``length`` [H, n] (mm), float64."""
    b = 1 - a
    vol = F.pad(mu.permute(a, b, 2), (1, 2, 1, 1))          # [na, nb + 2, nc + 3], zero border
    na, nb, nc = vol.shape[0], vol.shape[1] - 2, vol.shape[2] - 3
    H, n = length.shape
    out = torch.empty(H, n, dtype=mu.dtype)
    k = torch.arange(na, dtype=torch.float64)
    step = max(1, max_samples // (na * max(H, nc + 3)))
    for lo in range(0, n, step):
        s, d = start[:, lo:lo + step], delta[:, lo:lo + step]
        sa, da = s[0, :, a, None], d[0, :, a, None]             # the same for every row
        t = (k - sa) / da                                        # [m, K]
        pb = s[0, :, b, None] + t * d[0, :, b, None]
        pb = torch.where((t >= 0) & (t <= 1), pb, -1.0)         # source..detector; else zero
        sheet = _sheet(vol, pb, nb)                              # [m, K, nc + 3]
        m = sheet.shape[0]
        base = ((torch.arange(m)[:, None] * na + torch.arange(na)[None, :]) * (nc + 3))[None]
        pc = s[..., 2, None] + t[None] * d[..., 2, None]         # [H, m, K]
        samples = _gather_pairs(sheet.reshape(-1), base, pc, nc)
        out[:, lo:lo + step] = (samples.sum(-1, dtype=torch.float64)
                                * length[:, lo:lo + step] / da[:, 0].abs()).to(mu.dtype)
    return out


def _sheet(vol: torch.Tensor, pb: torch.Tensor, nb: int) -> torch.Tensor:
    """[m, K, nc + 3]: slice k of ``vol`` [K, nb + 2, nc + 3] (zero border) interpolated
    linearly along its second axis at ``pb[m, k]`` (unpadded index), zero outside; clamped
    as in :func:`_gather_pairs`."""
    pb = pb.clamp(-1.0, float(nb))
    low = torch.floor(pb)
    w = (pb - low).to(vol.dtype)[..., None]
    i0 = low.long() + 1
    k = torch.arange(vol.shape[0])[None, :]
    v0 = vol[k, i0]
    return v0 + w * (vol[k, (i0 + 1).clamp(max=nb + 1)] - v0)


def joseph_project_columns_torch(mu: torch.Tensor, table, max_samples: int = 2 ** 22):
    """Joseph line integrals [A, H, W] of ``mu`` ([X, Y, Z], CPU) for a column table, the sums
    of :func:`joseph_project_torch`; None when the table is not one (rows not along index
    axis 2, or some ray steeper along axis 2 than along its in-plane axis), so the caller
    falls back to the general form."""
    if not columns_share_paths(table):
        return None
    A, H, W = table.shape
    f64 = dict(dtype=torch.float64)
    idx, lps = torch.as_tensor(table.index, **f64), torch.as_tensor(table.lps, **f64)
    jj = torch.arange(W, **f64)[None, None, :, None]
    ii = torch.arange(H, **f64)[None, :, None, None]
    rays = []
    for t in (idx, lps):
        t = t[:, None, None]                                     # [A, 1, 1, 4, 3]
        p = t[..., DET0, :] + jj * t[..., COL, :] + ii * t[..., ROW, :]
        s = t[..., SRC, :] + table.beam * p
        rays.append((s, p - s))                                  # [A, H, W, 3] each
    (start, delta), (_, delta_mm) = rays
    length = torch.linalg.vector_norm(delta_mm, dim=-1)          # [A, H, W]
    ad = delta.abs()
    axis0 = (ad[..., 0] >= ad[..., 1])[:, 0]                     # [A, W]: in-plane, row-free
    dom = torch.where(axis0, ad[:, 0, :, 0], ad[:, 0, :, 1])
    if bool((ad[..., 2].amax(dim=1) > dom).any()):
        return None                                              # a steep ray: general form
    out = torch.empty(A, H, W, dtype=mu.dtype)
    for a, cols in ((0, axis0), (1, ~axis0)):
        ai, ji = torch.nonzero(cols, as_tuple=True)
        if ai.numel():
            out[ai, :, ji] = _column_group(mu, a, start[ai, :, ji].transpose(0, 1),
                                           delta[ai, :, ji].transpose(0, 1),
                                           length[ai, :, ji].transpose(0, 1), max_samples).T
    return out

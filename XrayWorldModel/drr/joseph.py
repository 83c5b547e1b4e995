"""Fast line integrals by Joseph's method, compiled with numba for the CPU.

Each ray steps through the volume one slice at a time along its dominant index axis and
samples the slice bilinearly in the other two axes: one bilinear sample per slice instead
of Siddon's boundary-by-boundary walk. The volume is copied once per dominant axis into a
layout where that axis is slowest and the other two are zero-padded by one voxel, so a
bilinear tap never needs a bounds check beyond "is the sample inside at all".

Two forward kernels give identical sums:
* :func:`joseph_project` walks ray by ray (any geometry, any affine);
* :func:`joseph_project_columns` exploits the common case (no tilt, axial volume) where the
  rays of one detector column share their in-plane path: per slice, the in-plane position
  is computed once and every row reads the same two cache-resident voxel lines.
:func:`joseph_backproject` is the exact adjoint (gradients with respect to the volume).
"""
from __future__ import annotations

import math

import numba
import numpy as np

from .rays import ROW, ray_at

# Layout of the volume copy used for rays dominant along each axis: (a, b, c).
AXIS_ORDER = ((0, 1, 2), (1, 0, 2), (2, 0, 1))


@numba.njit(cache=True, inline="always")
def _slice_range(p0, d, na, nb, nc, a, b, c):
    """Slices [k0, k1] where the ray is between source and detector and its bilinear
    footprint can touch the volume (the interpolant is non-zero on (-1, n))."""
    tlo = 0.0
    thi = 1.0
    for ax, hi in ((b, nb * 1.0), (c, nc * 1.0)):
        if abs(d[ax]) > 1e-12:
            t1 = (-1.0 - p0[ax]) / d[ax]
            t2 = (hi - p0[ax]) / d[ax]
            if t1 > t2:
                t1, t2 = t2, t1
            tlo = max(tlo, t1)
            thi = min(thi, t2)
        elif p0[ax] <= -1.0 or p0[ax] >= hi:
            return 1, 0
    if tlo >= thi:
        return 1, 0
    xa = p0[a] + tlo * d[a]
    xb = p0[a] + thi * d[a]
    if xa > xb:
        xa, xb = xb, xa
    return max(0, int(math.ceil(xa))), min(na - 1, int(math.floor(xb)))


@numba.njit(cache=True, inline="always")
def _slice_line(p0, d, a, b, c, pad):
    """The ray as a function of the slice index k: in-slice position (ob + k sb, oc + k sc)
    (shifted by ``pad`` for padded layouts) and ``inv`` = 1 / (index step along ``a``)."""
    inv = 1.0 / d[a]
    sb = d[b] * inv
    sc = d[c] * inv
    return inv, sb, sc, p0[b] - p0[a] * sb + pad, p0[c] - p0[a] * sc + pad


@numba.njit(cache=True, fastmath=True, nogil=True)
def _joseph_ray(vol, p0, d, length, a, b, c):
    na = vol.shape[0]
    nb = vol.shape[1] - 2
    nc = vol.shape[2] - 2
    k0, k1 = _slice_range(p0, d, na, nb, nc, a, b, c)
    if k1 < k0:
        return 0.0
    inv, sb, sc, ob, oc = _slice_line(p0, d, a, b, c, 1.0)   # +1: padded index
    acc = 0.0
    for k in range(k0, k1 + 1):
        pb = ob + k * sb
        pc = oc + k * sc
        fb = math.floor(pb)
        fc = math.floor(pc)
        ib = int(fb)
        ic = int(fc)
        if ib < 0 or ib > nb or ic < 0 or ic > nc:
            continue
        wb = pb - fb
        wc = pc - fc
        v00 = vol[k, ib, ic]
        v01 = vol[k, ib, ic + 1]
        v10 = vol[k, ib + 1, ic]
        v11 = vol[k, ib + 1, ic + 1]
        lo = v00 + wc * (v01 - v00)
        hi = v10 + wc * (v11 - v10)
        acc += lo + wb * (hi - lo)
    return acc * length * abs(inv)


@numba.njit(cache=True, nogil=True, inline="always")
def _dispatch_ray(vol0, vol1, vol2, p0, d, length):
    ad0 = abs(d[0])
    ad1 = abs(d[1])
    ad2 = abs(d[2])
    if ad0 >= ad1 and ad0 >= ad2:
        return _joseph_ray(vol0, p0, d, length, 0, 1, 2)
    if ad1 >= ad2:
        return _joseph_ray(vol1, p0, d, length, 1, 0, 2)
    return _joseph_ray(vol2, p0, d, length, 2, 0, 1)


@numba.njit(parallel=True, cache=True, nogil=True)
def joseph_project(vol0, vol1, vol2, index, lps, beam, out):
    """``out[a, i, j]`` = Joseph line integral of the ray of angle ``a``, pixel (i, j).

    ``vol0/1/2`` are padded layouts from :func:`attenuation_layouts`; ``index``/``lps``/
    ``beam`` come from :class:`.rays.RayTable`. Columns are the parallel unit.
    """
    A, H, W = out.shape
    for aj in numba.prange(A * W):
        a = aj // W
        j = aj % W
        p0 = np.empty(3)
        d = np.empty(3)
        for i in range(H):
            length = ray_at(index, lps, beam, a, i, j, p0, d)
            out[a, i, j] = _dispatch_ray(vol0, vol1, vol2, p0, d, length)


@numba.njit(cache=True, inline="always", fastmath=True)
def _edge_rows(acc, line, oc, sc, k, nc, lo, hi):
    """Rows lo..hi of one slice step, with the bounds check the interior rows skip."""
    for i in range(lo, hi + 1):
        pc = oc[i] + k * sc[i]
        fc = math.floor(pc)
        ic = int(fc)
        if ic < 0 or ic > nc:
            continue
        acc[i] += line[ic] + (pc - fc) * (line[ic + 1] - line[ic])


@numba.njit(cache=True, inline="always")
def _row_interval(q0, slope, qmin, qmax, H):
    """Rows i in [0, H) with qmin <= q0 + slope * i <= qmax (an interval; may be empty)."""
    if slope == 0.0:
        return (0, H - 1) if qmin <= q0 <= qmax else (0, -1)
    t1 = (qmin - q0) / slope
    t2 = (qmax - q0) / slope
    if t1 > t2:
        t1, t2 = t2, t1
    lo = max(0, int(math.ceil(t1)))
    hi = min(H - 1, int(math.floor(t2)))
    return lo, hi


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=True)
def joseph_project_columns(vol0, vol1, vol2, index, lps, beam, out):
    """Same sums as :func:`joseph_project`, for tables whose detector rows run along index
    axis 2 (see :func:`columns_share_paths`): all rays of a column then cross each slice at
    the same in-plane position, so the slice loop is outside and the row loop inside."""
    A, H, W = out.shape
    for aj in numba.prange(A * W):
        a = aj // W
        j = aj % W
        p0 = np.empty(3)
        d = np.empty(3)
        oc = np.empty(H)
        sc = np.empty(H)
        w = np.zeros(H)
        acc = np.zeros(H)
        generic = np.zeros(H, np.bool_)
        ray_at(index, lps, beam, a, 0, j, p0, d)
        ax = 0 if abs(d[0]) >= abs(d[1]) else 1
        bx = 1 - ax
        vol = vol0 if ax == 0 else vol1
        line = np.empty(vol.shape[2], np.float32)   # the two voxel lines of a slice, blended
        na = vol.shape[0]
        nb = vol.shape[1] - 2
        nc = vol.shape[2] - 2
        inv = 1.0 / d[ax]
        sb = d[bx] * inv
        ob = p0[bx] - p0[ax] * sb + 1.0
        for i in range(H):
            length = ray_at(index, lps, beam, a, i, j, p0, d)
            if abs(d[2]) > abs(d[ax]):
                generic[i] = True
                oc[i] = -1e30     # never inside: the row loop skips it
                sc[i] = 0.0
                out[a, i, j] = _dispatch_ray(vol0, vol1, vol2, p0, d, length)
            else:
                sc[i] = d[2] * inv
                oc[i] = p0[2] - p0[ax] * sc[i] + 1.0
                w[i] = length * abs(inv)
        # slice range from the in-plane path only (shared by all rows); rows whose ray
        # leaves the volume through top or bottom are skipped sample by sample below
        p0[2] = 0.0
        d[2] = 0.0
        k0, k1 = _slice_range(p0, d, na, nb, 1, ax, bx, 2)
        any_generic = generic.any()
        for k in range(k0, k1 + 1):
            pb = ob + k * sb
            fb = math.floor(pb)
            ib = int(fb)
            if ib < 0 or ib > nb:
                continue
            wb = pb - fb
            line0 = vol[k, ib]
            line1 = vol[k, ib + 1]
            # The padded row coordinate q_i = oc[i] + k sc[i] is affine in i, so the rows
            # whose taps are safely inside form one interval: those run without checks,
            # the few near the top and bottom edges with checks, the rest are skipped.
            if any_generic or H == 1:
                lo_in, hi_in, lo_out, hi_out = 0, -1, 0, H - 1
            else:
                q0 = oc[0] + k * sc[0]
                slope = (oc[H - 1] + k * sc[H - 1] - q0) / (H - 1)
                lo_in, hi_in = _row_interval(q0, slope, 0.5, nc + 0.5, H)
                lo_out, hi_out = _row_interval(q0, slope, -0.5, nc + 1.5, H)
            if hi_out < lo_out:
                continue
            # Blend the two voxel lines once (vectorised); each row then needs one lerp.
            for z in range(nc + 2):
                line[z] = line0[z] + wb * (line1[z] - line0[z])
            for i in range(lo_in, hi_in + 1):
                pc = oc[i] + k * sc[i]
                fc = math.floor(pc)
                ic = int(fc)
                acc[i] += line[ic] + (pc - fc) * (line[ic + 1] - line[ic])
            if hi_in < lo_in:             # no safe interior: check every row in range
                lo_in = hi_out + 1
                hi_in = hi_out
            _edge_rows(acc, line, oc, sc, k, nc, lo_out, lo_in - 1)
            _edge_rows(acc, line, oc, sc, k, nc, hi_in + 1, hi_out)
        for i in range(H):
            if not generic[i]:
                out[a, i, j] = acc[i] * w[i]


def columns_share_paths(table, tol: float = 1e-9) -> bool:
    """True when every angle's detector rows step purely along index axis 2 (axial volume,
    no tilt), the case :func:`joseph_project_columns` needs."""
    row = table.index[:, ROW, :]
    return bool(np.all(np.abs(row[:, :2]) <= tol * (1.0 + np.abs(row[:, 2:3]))))


@numba.njit(cache=True, fastmath=True, nogil=True)
def _joseph_ray_adjoint(grad, p0, d, length, value, a, b, c):
    na, nb, nc = grad.shape
    k0, k1 = _slice_range(p0, d, na, nb, nc, a, b, c)
    if k1 < k0:
        return
    inv, sb, sc, ob, oc = _slice_line(p0, d, a, b, c, 0.0)
    g = value * length * abs(inv)
    for k in range(k0, k1 + 1):
        pb = ob + k * sb
        pc = oc + k * sc
        fb0 = math.floor(pb)
        fc0 = math.floor(pc)
        ib = int(fb0)
        ic = int(fc0)
        wb = pb - fb0
        wc = pc - fc0
        if 0 <= ib < nb and 0 <= ic < nc:
            grad[k, ib, ic] += g * (1 - wb) * (1 - wc)
        if 0 <= ib < nb and 0 <= ic + 1 < nc:
            grad[k, ib, ic + 1] += g * (1 - wb) * wc
        if 0 <= ib + 1 < nb and 0 <= ic < nc:
            grad[k, ib + 1, ic] += g * wb * (1 - wc)
        if 0 <= ib + 1 < nb and 0 <= ic + 1 < nc:
            grad[k, ib + 1, ic + 1] += g * wb * wc


@numba.njit(cache=True, nogil=True)
def joseph_backproject(g0, g1, g2, index, lps, beam, values):
    """Adjoint of :func:`joseph_project`: scatter ``values[a, i, j]`` back along each ray
    into unpadded per-layout gradient volumes ``g0/1/2`` (serial: no write races)."""
    A, H, W = values.shape
    p0 = np.empty(3)
    d = np.empty(3)
    for a in range(A):
        for i in range(H):
            for j in range(W):
                v = values[a, i, j]
                if v == 0.0:
                    continue
                length = ray_at(index, lps, beam, a, i, j, p0, d)
                ad0 = abs(d[0])
                ad1 = abs(d[1])
                ad2 = abs(d[2])
                if ad0 >= ad1 and ad0 >= ad2:
                    _joseph_ray_adjoint(g0, p0, d, length, v, 0, 1, 2)
                elif ad1 >= ad2:
                    _joseph_ray_adjoint(g1, p0, d, length, v, 1, 0, 2)
                else:
                    _joseph_ray_adjoint(g2, p0, d, length, v, 2, 0, 1)


@numba.njit(parallel=True, cache=True)
def _layout_from(src, dst, a, scale, offset, clip):
    """dst[k, 1+b, 1+c] = src * scale + offset (clipped at 0 when ``clip``) in the layout
    ``AXIS_ORDER[a]``; the one-voxel border of ``dst`` is already zero."""
    n0, n1, n2 = src.shape
    if a == 0:
        for x in numba.prange(n0):
            for y in range(n1):
                for z in range(n2):
                    v = src[x, y, z] * scale + offset
                    dst[x, y + 1, z + 1] = max(v, 0.0) if clip else v
    elif a == 1:
        for y in numba.prange(n1):
            for x in range(n0):
                for z in range(n2):
                    v = src[x, y, z] * scale + offset
                    dst[y, x + 1, z + 1] = max(v, 0.0) if clip else v
    else:
        for z in numba.prange(n2):
            for x in range(n0):
                for y in range(n1):
                    v = src[x, y, z] * scale + offset
                    dst[z, x + 1, y + 1] = max(v, 0.0) if clip else v


def attenuation_layouts(array: np.ndarray, needed, scale=1.0, offset=0.0, clip=False):
    """Per-dominant-axis float32 copies of ``array * scale + offset`` (clipped at 0 when
    ``clip``) with the zero border the kernels expect, each built in one parallel pass;
    small dummies for axes not ``needed``. ``layout[:, 1:-1, 1:-1]`` is the plain volume."""
    src = np.asarray(array)
    if src.dtype not in (np.float32, np.float64, np.int16, np.int32, np.uint8, np.uint16):
        src = src.astype(np.float32)
    out = []
    for a in range(3):
        if a in needed:
            n = [src.shape[i] for i in AXIS_ORDER[a]]
            dst = np.zeros((n[0], n[1] + 2, n[2] + 2), np.float32)
            _layout_from(src, dst, a, np.float32(scale), np.float32(offset), clip)
            out.append(dst)
        else:
            out.append(np.zeros((1, 3, 3), np.float32))
    return out

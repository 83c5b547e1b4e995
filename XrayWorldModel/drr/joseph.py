"""Fast line integrals by Joseph's method, compiled with numba for the CPU.

Each ray steps through the volume one slice at a time along its dominant index axis and
samples the slice bilinearly in the other two axes: one bilinear sample per slice instead
of Siddon's boundary-by-boundary walk. The volume is copied once per dominant axis into a
layout where that axis is slowest and the other two are zero-padded by one voxel, so a
bilinear tap never needs a bounds check beyond "is the sample inside at all"; a byte per
voxel line records whether it attenuates at all (:class:`Layouts`).

Two forward kernels give the same sums (to float32 rounding):
* :func:`joseph_project` walks ray by ray (any geometry, any affine);
* :func:`joseph_project_columns` exploits the common case (no tilt, axial volume) where the
  rays of one detector column share their in-plane path: the path is gathered once into a
  sheet [row, slice] (the two voxel lines of each slice blended, lines that do not attenuate
  skipped), and each ray is a linear interpolation along that sheet, summed as contiguous,
  vectorised runs of slices.
:func:`joseph_backproject` is the exact adjoint (gradients with respect to the volume).
"""
from __future__ import annotations

import math

import numba
import numpy as np

from .rays import ray_at
from .raytable import columns_share_paths  # noqa: F401  (the column kernel's case; re-exported)

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


# Columns per parallel task of the column kernel: each task allocates its buffers once.
COLUMNS_PER_TASK = 16
# Slices blended per block before the block is transposed into the sheet.
SLICE_BLOCK = 16


@numba.njit(cache=True, inline="always", fastmath=True)
def _run_sum(s0, s1, f0, df):
    """sum_t s0[t] + f_t (s1[t] - s0[t]) with f_t = f0 + t df: one run of slices whose
    samples fall between the same two voxel rows (contiguous, so it vectorises)."""
    acc = np.float32(0.0)
    for t in range(s0.size):
        f = f0 + df * np.float32(t)
        acc += s0[t] + f * (s1[t] - s0[t])
    return acc


@numba.njit(cache=True, fastmath=True, nogil=True)
def _sheet_ray(sheet, oc, sc, nk):
    """Joseph sum over sheet slices 0..nk-1 of the ray at padded row coordinate
    ``q = oc + k sc`` in ``sheet[q, k]`` (rows 0 and -1 are the zero border). The slices are
    walked as runs with the same pair of rows, each run one contiguous dot product."""
    nz = sheet.shape[0]
    ka = 0
    kb = nk - 1
    if sc == 0.0:
        if oc < 0.0 or oc > nz - 1:
            return 0.0
        ic = min(int(oc), nz - 2)
        return _run_sum(sheet[ic, :nk], sheet[ic + 1, :nk], np.float32(oc - ic), np.float32(0.0))
    inv = 1.0 / sc
    t1 = -oc * inv
    t2 = (nz - 1.0 - oc) * inv
    if t1 > t2:
        t1, t2 = t2, t1
    ka = max(ka, int(math.ceil(t1)))          # 0 <= q <= nz - 1: the sample can be non-zero
    kb = min(kb, int(math.floor(t2)))
    if kb < ka:
        return 0.0
    step = 1 if sc > 0.0 else -1
    ic = min(max(int(math.floor(oc + ka * sc)), 0), nz - 2)
    bound = ic + 1 if sc > 0.0 else ic        # the row boundary that ends the current run
    acc = np.float32(0.0)
    k = ka
    while k <= kb:
        ke = min(kb, max(k, int(math.ceil((bound - oc) * inv)) - 1))
        acc += _run_sum(sheet[ic, k:ke + 1], sheet[ic + 1, k:ke + 1],
                        np.float32(oc + k * sc - ic), np.float32(sc))
        k = ke + 1
        ic = min(max(ic + step, 0), nz - 2)
        bound += step
    return acc


@numba.njit(cache=True, fastmath=True, nogil=True)
def _fill_sheet(vol, occ, ob, sb, kf, kl, sheet, block):
    """``sheet[:, k - kf]`` = the column's path through slice k (k = kf..kl): the two voxel
    lines either side blended bilinearly, transposed so that each padded row is contiguous
    along the slices. Blocks of slices are blended contiguously, then transposed."""
    nz = vol.shape[2]
    nb = vol.shape[1] - 2
    nblk = block.shape[0]
    for k0 in range(kf, kl + 1, nblk):
        nt = min(nblk, kl + 1 - k0)
        for t in range(nt):
            k = k0 + t
            pb = ob + k * sb
            fb = math.floor(pb)
            ib = int(fb)
            dst = block[t]
            if ib < 0 or ib > nb or (occ[k, ib] == 0 and occ[k, ib + 1] == 0):
                dst[:] = 0.0
                continue
            wb = np.float32(pb - fb)
            l0 = vol[k, ib]
            l1 = vol[k, ib + 1]
            for z in range(nz):
                dst[z] = l0[z] + wb * (l1[z] - l0[z])
        for z in range(nz):
            row = sheet[z, k0 - kf:k0 - kf + nt]
            for t in range(nt):
                row[t] = block[t, z]


@numba.njit(cache=True, nogil=True)
def _occupied_slices(occ, ob, sb, k0, k1, nb):
    """First and last slice in k0..k1 where the in-plane path meets an attenuating line
    (last < first when there is none)."""
    kf = 0
    kl = -1
    for k in range(k0, k1 + 1):
        ib = int(math.floor(ob + k * sb))
        if 0 <= ib <= nb and (occ[k, ib] != 0 or occ[k, ib + 1] != 0):
            if kl < kf:
                kf = k
            kl = k
    return kf, kl


@numba.njit(cache=True, fastmath=True, nogil=True)
def _column(vols, occs, index, lps, beam, a, j, out, buf, block, w, p0, d):
    """Fill ``out[a, :, j]``: one detector column, whose rays share their in-plane path."""
    H = out.shape[1]
    ray_at(index, lps, beam, a, 0, j, p0, d)
    ax = 0 if abs(d[0]) >= abs(d[1]) else 1
    bx = 1 - ax
    vol = vols[ax]
    inv = 1.0 / d[ax]
    sb = d[bx] * inv
    ob = p0[bx] - p0[ax] * sb + 1.0                # +1: padded index
    for i in range(H):
        length = ray_at(index, lps, beam, a, i, j, p0, d)
        if abs(d[2]) > abs(d[ax]):                 # steeper than 45 deg in z: ray by ray
            for r in range(H):
                length = ray_at(index, lps, beam, a, r, j, p0, d)
                out[a, r, j] = _dispatch_ray(vols[0], vols[1], vols[2], p0, d, length)
            return
        w[i] = length * abs(inv)
    ray_at(index, lps, beam, a, 0, j, p0, d)
    p0[2] = 0.0
    d[2] = 0.0
    nb = vol.shape[1] - 2
    k0, k1 = _slice_range(p0, d, vol.shape[0], nb, 1, ax, bx, 2)
    kf, kl = _occupied_slices(occs[ax], ob, sb, k0, k1, nb)
    if kl < kf:
        for i in range(H):
            out[a, i, j] = 0.0
        return
    nz = vol.shape[2]
    nk = kl - kf + 1
    sheet = buf[:nz * nk].reshape((nz, nk))
    _fill_sheet(vol, occs[ax], ob, sb, kf, kl, sheet, block)
    for i in range(H):
        ray_at(index, lps, beam, a, i, j, p0, d)
        sc = d[2] * inv
        oc = p0[2] - p0[ax] * sc + 1.0 + kf * sc   # padded row at sheet slice k - kf
        out[a, i, j] = _sheet_ray(sheet, oc, sc, nk) * w[i]


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=True)
def joseph_project_columns(vol0, vol1, vol2, occ0, occ1, index, lps, beam, out):
    """Same sums as :func:`joseph_project`, for tables whose detector rows run along index
    axis 2 (see :func:`columns_share_paths`): all rays of a column cross each slice at the
    same in-plane position. Per column, the path through the volume is gathered once into
    a small sheet [row, slice] (bilinear in the in-plane axis, slices with no attenuating
    voxel skipped using ``occ0/1``); each ray is then a linear interpolation along that
    sheet's rows, summed as contiguous runs."""
    A, H, W = out.shape
    n = A * W
    nz = max(vol0.shape[2], vol1.shape[2])
    nmax = max(vol0.shape[0], vol1.shape[0])
    vols = (vol0, vol1, vol2)
    occs = (occ0, occ1)
    for task in numba.prange((n + COLUMNS_PER_TASK - 1) // COLUMNS_PER_TASK):
        buf = np.empty(nz * nmax, np.float32)
        block = np.empty((SLICE_BLOCK, nz), np.float32)
        w = np.empty(H)
        p0 = np.empty(3)
        d = np.empty(3)
        for aj in range(task * COLUMNS_PER_TASK, min(n, (task + 1) * COLUMNS_PER_TASK)):
            _column(vols, occs, index, lps, beam, aj // W, aj % W, out, buf, block, w, p0, d)


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


@numba.njit(cache=True, inline="always")
def _attenuation(v, scale, offset, clip):
    v = v * scale + offset
    return max(v, 0.0) if clip else v


@numba.njit(parallel=True, cache=True)
def _layout_from(src, dst, occ, a, scale, offset, clip):
    """dst[k, 1+b, 1+c] = src * scale + offset (clipped at 0 when ``clip``) in the layout
    ``AXIS_ORDER[a]``; the one-voxel border of ``dst`` is already zero. ``occ[k, 1+b]`` = 1
    where the line ``dst[k, 1+b, :]`` has a non-zero value."""
    n0, n1, n2 = src.shape
    if a == 0:
        for x in numba.prange(n0):
            for y in range(n1):
                nonzero = False
                for z in range(n2):
                    v = _attenuation(src[x, y, z], scale, offset, clip)
                    dst[x, y + 1, z + 1] = v
                    nonzero |= v != 0.0
                occ[x, y + 1] = nonzero
    elif a == 1:
        for y in numba.prange(n1):
            for x in range(n0):
                nonzero = False
                for z in range(n2):
                    v = _attenuation(src[x, y, z], scale, offset, clip)
                    dst[y, x + 1, z + 1] = v
                    nonzero |= v != 0.0
                occ[y, x + 1] = nonzero
    else:
        for z in numba.prange(n2):
            for x in range(n0):
                nonzero = False
                for y in range(n1):
                    v = _attenuation(src[x, y, z], scale, offset, clip)
                    dst[z, x + 1, y + 1] = v
                    nonzero |= v != 0.0
                occ[z, x + 1] = nonzero


@numba.njit(parallel=True, cache=True)
def support_extent(src, scale, offset, clip):
    """[[lo x, y, z], [hi x, y, z]] of the voxels with non-zero ``src * scale + offset``
    (> 0 when ``clip``): the kernel behind :func:`.support.support_box` for large volumes;
    hi < 0 when there is none."""
    n0, n1, n2 = src.shape
    lo = np.full((n0, 3), 1 << 30, np.int64)
    hi = np.full((n0, 3), -1, np.int64)
    for x in numba.prange(n0):
        for y in range(n1):
            for z in range(n2):
                v = src[x, y, z] * scale + offset
                if (v > 0.0) if clip else (v != 0.0):
                    lo[x, 0] = min(lo[x, 0], x)
                    hi[x, 0] = max(hi[x, 0], x)
                    lo[x, 1] = min(lo[x, 1], y)
                    hi[x, 1] = max(hi[x, 1], y)
                    lo[x, 2] = min(lo[x, 2], z)
                    hi[x, 2] = max(hi[x, 2], z)
    out = np.empty((2, 3), np.int64)
    for k in range(3):
        out[0, k] = lo[:, k].min()
        out[1, k] = hi[:, k].max()
    return out


class Layouts:
    """The volume prepared for the kernels: ``vols[a]`` is the padded copy for rays dominant
    along index axis ``a`` (a small dummy where no ray is), ``occ[a][k, b]`` says whether
    line ``vols[a][k, b, :]`` attenuates at all (the column kernel skips the lines that do
    not)."""

    def __init__(self, vols, occ):
        self.vols = tuple(vols)
        self.occ = tuple(occ)

    def project(self, table, out):
        """Joseph line integrals of every ray of ``table`` into ``out`` [A, H, W] (float32)."""
        if columns_share_paths(table):
            joseph_project_columns(*self.vols, *self.occ[:2], table.index, table.lps, table.beam, out)
        else:
            joseph_project(*self.vols, table.index, table.lps, table.beam, out)
        return out


def attenuation_layouts(array: np.ndarray, needed, scale=1.0, offset=0.0, clip=False) -> Layouts:
    """Per-dominant-axis float32 copies of ``array * scale + offset`` (clipped at 0 when
    ``clip``) with the zero border the kernels expect, each built in one parallel pass with
    its line occupancy; small dummies for axes not ``needed``. ``vols[a][:, 1:-1, 1:-1]`` is
    the plain volume."""
    src = np.asarray(array)
    if src.dtype not in (np.float32, np.float64, np.int16, np.int32, np.uint8, np.uint16):
        src = src.astype(np.float32)
    vols, occ = [], []
    for a in range(3):
        if a in needed:
            n = [src.shape[i] for i in AXIS_ORDER[a]]
            dst = np.zeros((n[0], n[1] + 2, n[2] + 2), np.float32)
            occupied = np.zeros((n[0], n[1] + 2), np.uint8)
            _layout_from(src, dst, occupied, a, np.float32(scale), np.float32(offset), clip)
            vols.append(dst)
            occ.append(occupied)
        else:
            vols.append(np.zeros((1, 3, 3), np.float32))
            occ.append(np.zeros((1, 3), np.uint8))
    return Layouts(vols, occ)

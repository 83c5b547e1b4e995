"""Bones of the realistic chest: ribs with costal cartilage, sternum, clavicles, scapulae and
the heads and shafts of the (raised) humeri. The spine is the procedural chest's.

Each rib is a flattened tube lying in the rib-cage surface (:func:`.thorax.cage_radius`),
its centre line a function z(alpha) of the angle about the cage axis (0 posterior, pi
anterior): from the vertebra it rises a little to the rib angle, then descends ever more
steeply round the side to the front, where costal cartilage (much lower HU than bone) runs
on to the sternum (ribs 1-7), to the cartilage above (ribs 8-10, the costal margin), or
nowhere (floating ribs 11-12). Bone is painted with partial-volume occupancy and a denser
cortex at the rim.
"""
from __future__ import annotations

import math

import numpy as np

from .chest import _paint_spine
from .thorax import arm_axis, cage_frame, cage_point
from .tubes import add_polyline, add_tube, blend

RIB_ANGLE = 0.7                        # alpha of the rib angle, the highest point of a rib
COSTOCHONDRAL = (2.75, 2.62, 2.52, 2.45, 2.38, 2.30, 2.22, 2.15, 2.08, 2.0, 1.9, 1.55)
JOIN_CARTILAGE = {7: 2.82, 8: 2.60, 9: 2.40}   # ribs 8-10 join the cartilage above here
STERNAL_EDGE = math.pi - 0.12
HU_CARTILAGE, HU_STERNUM, HU_CLAVICLE, HU_SCAPULA = 130.0, 320.0, 650.0, 600.0
HU_HUMERAL_HEAD, HU_HUMERAL_SHAFT = 450.0, 750.0


def paint_spine(g, p, inner, tex, hu, labels):
    """The procedural chest's vertebrae with bone densities of a real spine: trabecular
    vertebral bodies (about 220 HU) in a denser shell, denser posterior elements (the
    procedural chest paints all vertebral bone at 700 HU). Returns the bone mask."""
    bone = _paint_spine(g.x, g.y, g.z, p, inner, tex, hu, labels)
    r_body = np.broadcast_to(np.sqrt((g.x / 21.0) ** 2 + ((g.y - p["spine_y"]) / 16.0) ** 2),
                             hu.shape)
    body = bone & (r_body <= 1.0)
    hu[bone] = (430.0 + 40.0 * tex[bone]).astype(np.float32)
    shell = np.clip((r_body[body] - 0.7) / 0.3, 0.0, 1.0)
    hu[body] = (220.0 + 330.0 * shell + 30.0 * tex[body]).astype(np.float32)
    return bone


def sternum_levels(p):
    """(jugular notch, sternal angle, xiphisternal junction, xiphoid tip) heights."""
    notch = p["rib_top"] - 1.6 * p["vert_h"] + p["sternum_shift"]
    angle = notch - 48.0
    xiphisternal = angle - p["sternum_body"]
    return notch, angle, xiphisternal, xiphisternal - 35.0


def rib_table(p):
    """One dict per rib (index 0 = first rib): its centre-line parameters and where its
    cartilage ends."""
    notch, angle, xiph, _ = sternum_levels(p)
    attach = [notch - 14.0, angle] + [angle - (k - 1) * (angle - xiph) / 5.2 for k in range(2, 7)]
    ribs = []
    for k in range(12):
        rib = {"k": k, "head": p["rib_top"] - k * p["vert_h"], "rise": p["rib_rise"],
               "drop": p["rib_drop"] * float(np.interp(k, [0, 1, 3, 5, 7, 11],
                                                       [0.5, 0.6, 0.7, 0.95, 1.0, 0.9])),
               "alpha_c": COSTOCHONDRAL[k], "half_height": 8.0 if k == 0 else 6.5,
               "half_width": 3.5}
        if k <= 6:
            rib.update(alpha_end=STERNAL_EDGE, z_end=attach[k])
        elif k in JOIN_CARTILAGE:
            a = JOIN_CARTILAGE[k]
            rib.update(alpha_end=a, z_end=float(rib_z(ribs[k - 1], a)))
        else:
            rib.update(alpha_end=COSTOCHONDRAL[k], z_end=None)
        ribs.append(rib)
    return ribs


def rib_z(rib, alpha):
    """Height of the rib's centre line at angle ``alpha`` (bone, then cartilage)."""
    alpha = np.asarray(alpha, dtype=np.float64)
    a0, ac = RIB_ANGLE, rib["alpha_c"]
    bone = (rib["head"] + rib["rise"] * np.sin(0.5 * math.pi * np.clip(alpha / a0, 0.0, 1.0))
            - rib["drop"] * np.clip((alpha - a0) / (ac - a0), 0.0, 1.0) ** 1.5)
    if rib["z_end"] is None:
        return bone
    z_c = rib["head"] + rib["rise"] - rib["drop"]
    t = np.clip((alpha - ac) / max(rib["alpha_end"] - ac, 1e-6), 0.0, 1.0)
    return np.where(alpha <= ac, bone, z_c + t * (rib["z_end"] - z_c))


def _one_rib(rib, alpha, z, d, ring, h_r):
    """(occupancy, HU, is cartilage) of one rib at shell voxels (alpha, z, distance d
    outside the cage surface, cage radius ring)."""
    zc = rib_z(rib, alpha)
    slope = (rib_z(rib, alpha + 0.02) - rib_z(rib, alpha - 0.02)) / (0.04 * ring)
    cart = alpha > rib["alpha_c"]
    half_w = np.where(cart, 4.5, rib["half_width"])
    half_h = np.where(cart, 5.5, rib["half_height"]) * np.sqrt(1.0 + slope ** 2)
    r = np.sqrt((d / half_w) ** 2 + ((z - zc) / half_h) ** 2)
    occ = np.clip((1.0 - r) * half_w / h_r + 0.5, 0.0, 1.0)
    occ[(alpha < 0.12) | (alpha > rib["alpha_end"])] = 0.0
    bone_hu = 380.0 + 420.0 * np.clip((r - 0.3) / 0.6, 0.0, 1.0)     # cortex at the rim
    return occ, np.where(cart, HU_CARTILAGE, bone_hu), cart


def paint_ribs(g, p, rho, alpha, ring, spine, hu, labels):
    """Twelve rib pairs with their costal cartilage; returns the bone mask (ribs only)."""
    d = rho - ring
    shell = (np.abs(d) < 9.0) & (alpha > 0.1) & ~spine
    idx = np.nonzero(shell)
    a_s, d_s, ring_s = alpha[idx], d[idx], ring[idx]
    z_s = g.z.ravel()[idx[2]].astype(np.float64)
    best = np.zeros(len(a_s))
    value = np.zeros(len(a_s))
    cartilage = np.zeros(len(a_s), dtype=bool)
    h_r = float(np.mean(g.spacing[:2]))
    for rib in rib_table(p):
        near = np.abs(z_s - rib_z(rib, a_s)) < 40.0
        occ, hu_rib, cart = _one_rib(rib, a_s[near], z_s[near], d_s[near], ring_s[near], h_r)
        sub = np.nonzero(near)[0]
        win = occ > best[sub]
        best[sub[win]], value[sub[win]], cartilage[sub[win]] = occ[win], hu_rib[win], cart[win]
    hit = best > 0
    where = tuple(i[hit] for i in idx)
    o, v = best[hit], value[hit]
    hu[where] = (hu[where] + o * (v - hu[where])).astype(np.float32)
    solid = o >= 0.5
    labels[tuple(i[solid] for i in where)] = np.where(cartilage[hit][solid], 12, 6)
    mask = np.zeros(g.shape, dtype=bool)
    mask[tuple(i[solid] for i in where)] = True
    return mask


def paint_sternum(g, p, hu, labels):
    """Manubrium, body and xiphoid in the front of the cage; returns its mask."""
    notch, angle, xiph, tip = sternum_levels(p)
    zz = g.z.astype(np.float64)
    yc, _, cy = cage_frame(p, zz)
    centre_y = yc - cy + 3.0
    half_w = np.interp(zz, [tip, xiph, angle, notch], [6.0, 13.0, 15.0, 26.0])
    half_t = np.interp(zz, [tip, xiph, angle, notch], [3.0, 4.5, 5.0, 6.0])
    hx, hy, hz = g.spacing
    ox = np.clip((half_w - np.abs(g.x)) / hx + 0.5, 0.0, 1.0)
    oy = np.clip((half_t - np.abs(g.y - centre_y)) / hy + 0.5, 0.0, 1.0)
    oz = np.clip(np.minimum(notch - zz, zz - tip) / hz + 0.5, 0.0, 1.0)
    occ = (ox * oy * oz).astype(np.float32)
    blend(hu, occ, HU_STERNUM)
    labels[occ >= 0.5] = 6
    return occ >= 0.5


def paint_shoulder_girdle(g, p, polar, body, hu, labels):
    """Clavicles, scapulae (blade, spine, acromion, neck) and humeri (head and the raised
    shaft); ``polar`` is (rho, alpha, ring) of :func:`.thorax.cage_polar`. Returns their
    mask."""
    notch = sternum_levels(p)[0]
    clav = np.zeros(g.shape, dtype=np.float32)
    scap = np.zeros(g.shape, dtype=np.float32)
    head = np.zeros(g.shape, dtype=np.float32)
    shaft = np.zeros(g.shape, dtype=np.float32)
    for side in (+1, -1):
        joint, direction = arm_axis(p, side)
        front = cage_point(p, side, math.pi, notch)[1]
        ac_joint = joint + np.array([-side * 8.0, -8.0, p["clavicle_rise"]])
        add_polyline(clav, g, [np.array([side * 22.0, front - 3.0, notch + 4.0]),
                               np.array([side * 52.0, front - 12.0, notch + 12.0]),
                               np.array([side * 82.0, front - 8.0, notch + 22.0]),
                               ac_joint + np.array([-side * 14.0, -8.0, -8.0]), ac_joint],
                     [8.0, 7.0, 6.5, 6.0, 6.0])
        _scapula_blade(g, p, side, polar, scap)
        lateral = cage_point(p, side, SCAPULA_LATERAL[0], p["shoulder_z"] + SCAPULA_LATERAL[1],
                             14.0)
        add_tube(scap, g, lateral, joint - side * np.array([24.0, 0.0, 0.0]), 7.0, 10.0)
        spine_start = cage_point(p, side, 0.55, p["shoulder_z"] - 22.0, 19.0)
        spine_end = cage_point(p, side, 1.25, p["shoulder_z"] + 2.0, 28.0)
        add_polyline(scap, g, [spine_start, spine_end, ac_joint + np.array([0.0, 14.0, 0.0])],
                     [4.0, 5.0, 6.0])
        add_tube(head, g, joint, joint, 23.0, 23.0)
        add_tube(shaft, g, joint + 15.0 * direction, joint + 320.0 * direction, 11.0, 10.0)
    for occ, value, lab in ((scap, HU_SCAPULA, 10), (clav, HU_CLAVICLE, 9),
                            (head, HU_HUMERAL_HEAD, 11), (shaft, HU_HUMERAL_SHAFT, 11)):
        blend(hu, occ, value, body)
        labels[(occ >= 0.5) & body] = lab
    return ((scap >= 0.5) | (clav >= 0.5) | (head >= 0.5) | (shaft >= 0.5)) & body


#: Corners of the scapula as (alpha about the cage axis, height above the shoulder joint);
#: the inferior angle's alpha is drawn (raised arms swing it out to the side).
SCAPULA_SUPERIOR, SCAPULA_LATERAL = (0.5, 4.0), (1.38, -14.0)


def _scapula_blade(g, p, side, polar, occ):
    """The triangular blade, a thin plate 14-16 mm outside the ribs, with thick lateral and
    medial borders: a triangle in (100 * alpha, z) on the cage surface, anti-aliased at its
    edges."""
    rho, alpha, ring = polar
    zs, length = p["shoulder_z"], p["scapula_length"]
    corners = np.array([[100.0 * SCAPULA_SUPERIOR[0], zs + SCAPULA_SUPERIOR[1]],
                        [100.0 * p["scapula_rotation"], zs - length],
                        [100.0 * SCAPULA_LATERAL[0], zs + SCAPULA_LATERAL[1]]])
    d = rho - ring
    cand = (side * g.x > 0) & (g.z > zs - length - 10.0) & (g.z < zs + 15.0) \
        & (alpha > 0.4) & (alpha < 1.7) & (d > 4.0) & (d < 30.0)
    idx = np.nonzero(cand)
    pts = np.stack([100.0 * alpha[idx], g.z.ravel()[idx[2]]], axis=1)
    a, b, c = corners
    m = np.array([b - a, c - a]).T
    w12 = np.linalg.solve(m, (pts - a).T).T
    bary = np.column_stack([1.0 - w12.sum(axis=1), w12])       # superior, inferior, lateral
    h_r = float(np.mean(g.spacing[:2]))
    in_plane = np.clip(bary.min(axis=1) * 60.0 / h_r + 0.5, 0.0, 1.0)
    centre = 16.0 - 2.0 * bary[:, 2]
    half_t = (1.8 + 3.0 * np.clip(1.0 - bary[:, 0] / 0.12, 0.0, 1.0)
              + 1.5 * np.clip(1.0 - bary[:, 2] / 0.10, 0.0, 1.0))
    across = np.clip((half_t - np.abs(d[idx] - centre)) / h_r + 0.5, 0.0, 1.0)
    o = (in_plane * across).astype(np.float32)
    occ[idx] = np.maximum(occ[idx], o)

"""Soft-tissue shape of the realistic chest: a tapered thorax with shoulders, raised arms and
breasts, the diaphragm with its costophrenic recesses, the rib-cage surface and the lungs.

LPS millimetres (+x left, +y posterior, +z superior). ``p`` is the parameter dict of
:func:`.realistic.realistic_parameters`; ``g`` the :class:`.tubes.Grid`. Each painter
changes ``hu`` and ``labels`` in place and returns the masks later steps need.
"""
from __future__ import annotations

import numpy as np

from .chest import HU_AIR, HU_FAT, HU_LIVER, HU_SOFT, _ellipsoid_q
from .tubes import add_tube

SUPERELLIPSE = 2.3        # torso cross-section: between an ellipse (2) and a rounded box
HU_BREAST_FAT, HU_GLAND, HU_MEDIASTINAL_FAT = -100.0, 35.0, -60.0


def torso_semi_axes(p, z):
    """(ax, ay) of the torso outline at height ``z``: a little narrower over the abdomen,
    widest at the shoulders, narrowing to the neck above them."""
    zs = p["shoulder_z"]
    knots = [p["dome_r"] - 40.0, p["dome_r"] + 30.0, zs - 70.0, zs - 15.0, zs + 25.0, zs + 60.0]
    ax = p["ax"] * np.interp(z, knots, [0.94, 1.0, 1.0, 1.02, 0.42, 0.36])
    ay = p["ay"] * np.interp(z, knots, [0.98, 1.0, 0.94, 0.90, 0.52, 0.46])
    return ax, ay


def _superellipse(g, ax, ay):
    return (np.abs(g.x) / ax) ** SUPERELLIPSE + (np.abs(g.y) / ay) ** SUPERELLIPSE <= 1.0


def arm_axis(p, side):
    """(shoulder joint centre, unit direction of the raised upper arm) on ``side`` (+1 left)."""
    joint = np.array([side * p["shoulder_x"], p["shoulder_y"], p["shoulder_z"]])
    direction = np.array([-side * p["arm_tilt"], 0.12, 1.0])
    return joint, direction / np.linalg.norm(direction)


def paint_body(g, p, hu, labels):
    """Torso, shoulders (deltoids), raised arms and breasts: fat under the skin, soft tissue
    inside; returns (body, inner): everything, and everything inside the fat layer."""
    ax, ay = torso_semi_axes(p, g.z)
    fat = p["fat"]
    body = _superellipse(g, ax, ay)
    inner = _superellipse(g, ax - fat, ay - fat)
    limbs = np.zeros(g.shape, dtype=np.float32)
    limbs_in = np.zeros(g.shape, dtype=np.float32)
    for side in (1.0, -1.0):
        joint, direction = arm_axis(p, side)
        add_tube(limbs, g, joint - 20.0 * direction, joint + 400.0 * direction, 46.0, 38.0)
        add_tube(limbs_in, g, joint - 20.0 * direction, joint + 400.0 * direction,
                 46.0 - 0.6 * fat, 38.0 - 0.6 * fat)
        delt = _ellipsoid_q(g.x, g.y, g.z, joint + np.array([side * 6.0, 0.0, -8.0]),
                            (40.0, 48.0, 58.0))
        body |= delt <= 1.0
        inner |= delt <= (1.0 - 0.6 * fat / 40.0) ** 2
    body |= limbs >= 0.5
    inner |= limbs_in >= 0.5
    hu[body] = HU_FAT
    hu[inner] = HU_SOFT
    labels[body] = 1
    breast = _breasts(g, p, body)
    hu[breast] = HU_BREAST_FAT          # glandular texture is added with the other textures
    labels[breast] = 13
    return body | breast, inner, breast


def _breasts(g, p, body):
    """Breast tissue in front of the chest wall (random size; large only in women): a
    height field over the torso surface, lying supine: flat, wide, fading upwards into the
    chest wall and with a rounder lower border."""
    out = np.zeros(g.shape, dtype=bool)
    if p["breast_depth"] <= 0.0:
        return out
    ax, ay = torso_semi_axes(p, g.z)
    base = np.clip(1.0 - (np.abs(g.x) / ax) ** SUPERELLIPSE, 0.0, 1.0)
    surface_y = -ay * base ** (1.0 / SUPERELLIPSE)                  # [nx, 1, nz]
    for side in (1.0, -1.0):
        dz = g.z - p["breast_z"]
        reach_z = np.where(dz > 0, 1.4, 0.9) * 0.85 * p["breast_width"]
        r2 = ((g.x - side * p["breast_x"]) / p["breast_width"]) ** 2 + (dz / reach_z) ** 2
        height = p["breast_depth"] * np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
        out |= (g.y < surface_y + 2.0) & (g.y > surface_y - height) & (height > 0)
    return out & ~body


def dome_height(p, x, y):
    """The diaphragm surface z(x, y): the two domes of the procedural chest (the right one
    higher, the same formula the findings use), deepened into the posterior and lateral
    costophrenic recesses."""
    c = p["dome_curv"]
    domes = np.maximum(p["dome_r"] - ((x + 60.0) ** 2 + y ** 2) / (2 * c),
                       p["dome_l"] - ((x - 60.0) ** 2 + (y - 5.0) ** 2) / (2 * c))
    post = np.clip(y / (0.75 * p["iay"]), 0.0, 1.0) ** 2
    lat = np.clip((np.abs(x) - 0.5 * p["cage_x"]) / (0.45 * p["cage_x"]), 0.0, 1.0) ** 2
    return domes - p["recess_post"] * post - p["recess_lat"] * lat


def paint_abdomen(g, p, inner, hu, labels):
    """Liver under the right dome, gastric air under the left; returns (z_dome, below)."""
    z_dome = dome_height(p, g.x, g.y)
    below = g.z < z_dome
    liver = inner & below & (g.x < 35.0 - 0.3 * g.y) & (g.z > z_dome - 160.0)
    hu[liver] = HU_LIVER
    labels[liver] = 8
    bubble = _ellipsoid_q(g.x, g.y, g.z, (70.0, -25.0, p["dome_l"] - 25.0), (28.0, 20.0, 14.0))
    hu[(bubble <= 1.0) & inner & below & ~liver] = HU_AIR + 100.0
    return z_dome, below


def cage_frame(p, z):
    """(y_centre, x semi-axis, y semi-axis) of the rib-cage surface at height ``z``: widest
    near the domes, narrowing in a rounded arch to the thoracic inlet, whose centre lies more
    posterior (the inlet slopes down to the front)."""
    z_w, z_top = p["dome_r"] + 25.0, p["lung_top"] + 6.0
    s = np.clip((z - z_w) / (z_top - z_w), 0.0, 1.0)
    tx = (1.0 - s ** 2.4) ** (1.0 / 2.4)
    tx = tx * (1.0 - 0.06 * np.clip((z_w - z) / 120.0, 0.0, 1.0) ** 2)
    ty = 1.0 - 0.45 * (1.0 - tx)
    yc = p["inlet_shift"] * np.clip((z - z_w) / (z_top - z_w), 0.0, 1.0)
    return yc, p["cage_x"] * tx, p["cage_y"] * ty


def cage_radius(p, z, alpha):
    """The cage surface's distance from its axis at height ``z`` and angle ``alpha`` (0
    posterior, pi/2 lateral, pi anterior)."""
    _, cx, cy = cage_frame(p, z)
    return 1.0 / np.sqrt((np.sin(alpha) / np.maximum(cx, 1e-3)) ** 2
                         + (np.cos(alpha) / np.maximum(cy, 1e-3)) ** 2)


def cage_point(p, side, alpha, z, offset=0.0):
    """The LPS point ``offset`` mm outside the cage surface at (alpha, z) on ``side``."""
    yc, _, _ = cage_frame(p, z)
    r = cage_radius(p, z, alpha) + offset
    return np.array([side * r * np.sin(alpha), yc + r * np.cos(alpha), z])


def cage_polar(g, p):
    """(rho, alpha, ring) on the grid: distance from the cage axis, angle about it, and the
    cage surface's distance at that angle and height."""
    yc = cage_frame(p, g.z)[0]
    dy = g.y - yc
    rho = np.sqrt(g.x ** 2 + dy ** 2)
    alpha = np.arctan2(np.abs(g.x), dy)
    return rho, alpha, cage_radius(p, g.z, alpha)


def mediastinum_half_width(p, y, z):
    """Half-width of the mediastinum between the lungs: narrow in front (the anterior junction)
    and widest around the trachea and oesophagus, more so above the heart."""
    upper = np.interp(z, [p["heart_c"][2], p["arch_z"] - 10.0, p["lung_top"]], [0.0, 1.0, 1.0])
    middle = np.exp(-((y - 8.0) / 30.0) ** 2)
    return 5.0 + (8.0 + 14.0 * upper) * middle


def paint_lungs(g, p, inner, below, rho, ring, hu, labels):
    """Both lungs: inside the cage (pleura and intercostal muscle 10 mm), above the
    diaphragm, outside the mediastinum and the spine; returns the mask."""
    med = mediastinum_half_width(p, g.y, g.z)
    spine = (np.abs(g.x) < 26.0) & (g.y > p["spine_y"] - 20.0)
    lungs = (rho < ring - 10.0) & ~below & (np.abs(g.x) > med) & ~spine & inner
    labels[lungs & (g.x > 0)] = 2
    labels[lungs & (g.x < 0)] = 3
    hu[lungs] = p["lung_hu"]
    return lungs


def paint_mediastinal_fat(p, rho, ring, below, inner, hu, labels):
    """What is left of the mediastinum once its organs are in (label 'body' inside the cage,
    above the diaphragm) is mostly fat: about -60 HU, not soft tissue."""
    fat = (rho < ring - 10.0) & ~below & inner & (labels == 1)
    hu[fat] = HU_MEDIASTINAL_FAT
    return fat

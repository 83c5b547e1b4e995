"""Mediastinal contours and the lung trees of the realistic chest.

The frontal silhouette of the mediastinum is, from the top on the left: the aortic knob (the
arch, painted by :func:`.chest._paint_aorta` with a wider, more lateral arch), the pulmonary
trunk and left pulmonary artery below it, then the left ventricle; on the right: the
superior vena cava above the right atrium. The trachea (air) runs down the midline to the
carina, where the main bronchi leave for the hila. In each lung a random space-filling tree
of arteries (with the bronchi of its first generations running beside them) and one of veins
fan out from the hilum, tapering to the periphery.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from .chest import HU_AIR, HU_SOFT
from .tubes import Segment, add_polyline, add_tube, blend, space_filling_tree

HU_BLOOD = 40.0
#: Hilum (where each lung's tree starts) per side, +1 left: the left hilum is higher.
HILA = {+1: (42.0, 8.0, 28.0), -1: (-42.0, 8.0, 18.0)}
VEIN_ROOTS = {+1: (34.0, 22.0, 2.0), -1: (-36.0, 20.0, -4.0)}
AIRWAY_GENERATIONS = 3


def mediastinal_points(p) -> Dict[str, list]:
    """Centre lines (LPS mm) of the trachea, main bronchi, oesophagus, pulmonary arteries
    and SVC."""
    ty, hc = p["spine_y"] - 36.0, p["heart_c"]
    carina = np.array([-2.0, ty, p["arch_z"] - 22.0])
    bifurcation = np.array([8.0, -6.0, p["arch_z"] - 30.0])
    top = p["lung_top"] + 80.0
    return {
        "trachea": [np.array([0.0, ty - 12.0, top]), np.array([-3.0, ty, p["arch_z"] + 10.0]),
                    carina],
        "bronchus_r": [carina, np.array([-18.0, ty + 2.0, carina[2] - 22.0]),
                       np.array([-36.0, 12.0, HILA[-1][2] + 2.0])],
        "bronchus_l": [carina, np.array([20.0, ty + 4.0, carina[2] - 16.0]),
                       np.array([38.0, 14.0, HILA[+1][2] - 4.0])],
        "trunk": [np.array([12.0, hc[1] + 8.0, hc[2] + 40.0]), bifurcation],
        "lpa": [bifurcation, np.array([30.0, 2.0, bifurcation[2] + 2.0]), np.array(HILA[+1])],
        "rpa": [bifurcation, np.array([-18.0, -2.0, bifurcation[2] - 6.0]), np.array(HILA[-1])],
        "oesophagus": [np.array([2.0, ty + 10.0, top]), np.array([4.0, ty + 16.0, carina[2]]),
                       np.array([10.0, ty + 12.0, p["dome_l"] - 10.0])],
        "svc": [np.array([-24.0, hc[1] + 26.0, hc[2] + 30.0]),
                np.array([-22.0, hc[1] + 24.0, p["arch_z"] + 35.0])],
    }


def great_vessel_points(p):
    """Centre lines and radii of the arch's branches (brachiocephalic trunk, left common
    carotid, left subclavian) and the brachiocephalic veins joining the SVC: they fill the
    upper mediastinum between the arch and the thoracic inlet."""
    p0 = np.array([-5.0, p["heart_c"][1] + 15.0])                   # as chest._paint_aorta
    p1 = np.array([p["aorta_x"], p["spine_y"] - 27.0])
    mid, half = (p0 + p1) / 2, np.linalg.norm(p1 - p0) / 2
    inlet = p["lung_top"] + 30.0

    def on_arch(f):
        xy = mid - half * np.cos(np.pi * f) * (p1 - p0) / (2 * half)
        return np.array([xy[0], xy[1], p["arch_z"] + half * np.sin(np.pi * f)])

    svc_top = np.array([-22.0, p["heart_c"][1] + 24.0, p["arch_z"] + 35.0])
    return [([on_arch(0.3), np.array([-14.0, -12.0, inlet - 40.0]),
              np.array([-24.0, -10.0, inlet])], [7.0, 6.5, 5.5]),
            ([on_arch(0.45), np.array([6.0, -8.0, inlet])], [5.0, 4.5]),
            ([on_arch(0.62), np.array([22.0, 6.0, inlet - 30.0]),
              np.array([30.0, 10.0, inlet])], [6.0, 5.5, 5.0]),
            ([np.array([38.0, -24.0, inlet - 25.0]), np.array([6.0, -26.0, svc_top[2] + 12.0]),
              svc_top], [7.0, 7.5, 8.0]),
            ([np.array([-36.0, -16.0, inlet - 15.0]), svc_top], [7.5, 8.5])]


def paint_mediastinum(g, p, inner, hu, labels):
    """Pulmonary trunk and arteries, SVC, the arch's branches and the brachiocephalic
    veins, oesophagus, trachea and main bronchi (air in a soft wall);
    returns the occupancy of the large airways' lumen (for the bronchial tree to join)."""
    pts = mediastinal_points(p)
    vessels = np.zeros(g.shape, dtype=np.float32)
    add_polyline(vessels, g, pts["trunk"], [14.0, 13.0])
    add_polyline(vessels, g, pts["lpa"], [11.0, 10.0, 9.0])
    add_polyline(vessels, g, pts["rpa"], [11.0, 10.0, 9.0])
    pa = blend(hu, vessels, HU_BLOOD, inner & (labels != 4))
    labels[pa & (vessels >= 0.5)] = 14
    svc = np.zeros(g.shape, dtype=np.float32)
    add_polyline(svc, g, pts["svc"], [10.0, 9.0])
    sv = blend(hu, svc, HU_BLOOD, inner & (labels != 7))
    labels[sv & (svc >= 0.5)] = 16
    great = np.zeros(g.shape, dtype=np.float32)
    for points, radii in great_vessel_points(p):
        add_polyline(great, g, points, radii)
    gv = blend(hu, great, HU_BLOOD, inner & ~np.isin(labels, (4, 7)))
    labels[gv & (great >= 0.5)] = 17
    wall = np.zeros(g.shape, dtype=np.float32)
    lumen = np.zeros(g.shape, dtype=np.float32)
    add_polyline(wall, g, pts["oesophagus"], [7.0] * len(pts["oesophagus"]))   # collapsed
    for name, radius in (("trachea", 10.0), ("bronchus_r", 8.0), ("bronchus_l", 7.0)):
        add_polyline(wall, g, pts[name], [radius + 2.0] * len(pts[name]))
        add_polyline(lumen, g, pts[name], [radius] * len(pts[name]))
    blend(hu, wall, HU_SOFT, inner)
    air = blend(hu, lumen, HU_AIR, inner)
    labels[air & (lumen >= 0.5) & ~np.isin(labels, (2, 3))] = 15
    return lumen


def lung_trees(rng, g, p, lungs, labels) -> Dict[str, List[Segment]]:
    """Arterial and venous trees of both lungs, each filling a random sample of its lung."""
    coords = {}
    for side, lab in ((+1, 2), (-1, 3)):
        idx = np.argwhere((labels == lab) & lungs)
        take = idx[rng.choice(len(idx), size=min(len(idx), 1600), replace=False)]
        coords[side] = g.origin + take * g.spacing
    trees: Dict[str, List[Segment]] = {"arteries": [], "veins": []}
    for side in (+1, -1):
        if len(coords[side]) < 8:
            continue
        trees["arteries"] += space_filling_tree(rng, HILA[side], coords[side], 8.0,
                                                p["tree_generations"])
        trees["veins"] += space_filling_tree(rng, VEIN_ROOTS[side], coords[side], 7.0,
                                             p["tree_generations"] - 1, reach=0.5)
    return trees


def paint_lung_trees(rng, g, p, lungs, hu, labels) -> None:
    """Vessels (blood) of both trees and, beside the arteries of the first generations, the
    bronchi (a soft wall around air), inside the lungs only."""
    trees = lung_trees(rng, g, p, lungs, labels)
    vessels = np.zeros(g.shape, dtype=np.float32)
    wall = np.zeros(g.shape, dtype=np.float32)
    lumen = np.zeros(g.shape, dtype=np.float32)
    for seg in trees["arteries"] + trees["veins"]:
        add_tube(vessels, g, seg.p0, seg.p1, seg.r0, seg.r1)
    for seg in trees["arteries"]:
        if seg.generation > AIRWAY_GENERATIONS:
            continue
        d = seg.p1 - seg.p0
        side = np.cross(d, (0.0, 0.0, 1.0)) if abs(d[2]) < 0.9 * np.linalg.norm(d) else \
            np.cross(d, (1.0, 0.0, 0.0))
        shift = side / max(np.linalg.norm(side), 1e-9) * (2.0 * seg.r0 + 1.0)
        rb0, rb1 = 0.8 * seg.r0, 0.8 * seg.r1
        add_tube(wall, g, seg.p0 + shift, seg.p1 + shift, rb0 + 0.6 + 0.15 * rb0,
                 rb1 + 0.6 + 0.15 * rb1)
        add_tube(lumen, g, seg.p0 + shift, seg.p1 + shift, rb0, rb1)
    blend(hu, vessels, HU_BLOOD, lungs)
    blend(hu, wall, HU_SOFT, lungs)
    blend(hu, lumen, HU_AIR, lungs)

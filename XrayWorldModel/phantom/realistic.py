"""A more realistic procedural chest (``phantom:chest2``), where it matters for projections.

Beyond the procedural chest (:mod:`.chest`, unchanged and still the default) it has:

* a tapered thorax: a rounded-box cross-section, widest at the shoulders, narrowing to the
  neck; deltoids and **arms raised** above the head, as in the chest CTs that DRR training
  data come from (so in the field of view only the shoulders and upper arms, lateral to the
  ribs); breast tissue whose size is drawn, large only in women (``sex`` is drawn);
* clavicles (S-shaped, rising to the acromion), scapulae (blade, spine, acromion, neck) on
  the posterior chest wall, and a sternum (manubrium, body, xiphoid);
* ribs that rise a little to the rib angle and then descend round to the front, with costal
  cartilage (130 HU) to the sternum or the costal margin, two floating ribs
  (:mod:`.skeleton`);
* diaphragm domes (the right one higher) with deep posterior and lateral costophrenic
  recesses;
* mediastinal contours: a wider aortic arch (the knob), the pulmonary trunk and arteries,
  the superior vena cava, the trachea and main bronchi (:mod:`.airways`);
* in each lung a random space-filling tree of arteries (with bronchi beside the first
  generations) and one of veins, tapering to the periphery;
* smooth correlated texture in soft tissue, fat, breast and lung parenchyma, and a gravity
  gradient in the lungs (supine: denser posteriorly).

The heart (8 mm further right, so the right atrium borders the lung), aorta, domes, liver and
spine are placed by the parameters of the procedural chest of the same seed (drawn first, from
the same generator, then adjusted), so a seed has the same heart size and domes, and the
findings and calcium of :mod:`.findings` place themselves here unchanged. Everything new is
drawn from separate generators, seeded from the seed.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import numpy as np
from scipy.ndimage import gaussian_filter

from .chest import (CHEST_LABELS, HU_SOFT, _as_volumes, _chest_grid, _draw_parameters,
                    _ellipsoid_q, _jitters, _paint_aorta)
from .airways import paint_lung_trees, paint_mediastinum
from .skeleton import paint_ribs, paint_shoulder_girdle, paint_spine, paint_sternum
from .thorax import cage_polar, paint_abdomen, paint_body, paint_lungs, paint_mediastinal_fat
from .tubes import Grid

#: Labels of the realistic chest: those of the procedural chest (ribs include the sternum)
#: and the structures it adds.
REALISTIC_LABELS: Dict[int, str] = {**CHEST_LABELS, 9: "clavicle", 10: "scapula",
                                    11: "humerus", 12: "costal_cartilage", 13: "breast",
                                    14: "pulmonary_artery", 15: "airway", 16: "vena_cava",
                                    17: "great_vessels"}
_SALT = 0xC4E5_7002        # separates this variant's generators from the base chest's
SOURCE = "realistic_chest"


def realistic_parameters(seed: int = 0, heart_scale: Optional[float] = None) -> Dict[str, object]:
    """The anatomy of ``realistic_chest(seed)``: the procedural chest's parameters of the
    same seed (so the same heart, domes and spine) plus those of what this variant adds."""
    p = _draw_parameters(np.random.default_rng(seed), heart_scale)
    _add_parameters(p, np.random.default_rng(_streams(seed)[0]))
    return p


def _streams(seed: int):
    """(anatomy, trees, texture) seed sequences of this variant."""
    return np.random.SeedSequence([_SALT, int(seed)]).spawn(3)


def _add_parameters(p, rng) -> None:
    jit, add = _jitters(rng)
    female = bool(rng.uniform() < 0.5)
    hc = p["heart_c"]                   # a little to the right: the right atrium shows
    p.update(sex="female" if female else "male", rib_top=p["lung_top"] - 8.0,
             heart_c=(hc[0] - 8.0 + add(3.0), hc[1], hc[2]),
             aorta_x=25.0 + add(3.0), aorta_r=12.5 * jit(0.1),
             shoulder_z=p["lung_top"] - 10.0 + add(6.0), shoulder_x=0.74 * p["ax"] * jit(0.04),
             shoulder_y=8.0 + add(5.0), arm_tilt=0.22 * jit(0.3),
             clavicle_rise=22.0 + add(5.0), scapula_length=145.0 * jit(0.08),
             scapula_rotation=1.0 + add(0.08), inlet_shift=10.0 + add(4.0),
             rib_drop=88.0 * jit(0.12), rib_rise=5.0 * jit(0.4),
             sternum_shift=add(5.0), sternum_body=4.0 * p["vert_h"] * jit(0.06),
             recess_post=32.0 * jit(0.2), recess_lat=24.0 * jit(0.2),
             lung_hu=-860.0 + add(20.0), tree_generations=7)
    depth = rng.uniform(12.0, 36.0) if female else rng.uniform(0.0, 6.0)
    p.update(breast_depth=depth, breast_width=(62.0 + 0.4 * depth) * jit(0.08),
             breast_x=0.5 * p["ax"] * jit(0.06), breast_z=p["heart_c"][2] + 10.0 + add(10.0))


def realistic_chest(seed: int = 0, shape: Tuple[int, int, int] = (128, 128, 96),
                    spacing: Union[float, Tuple[float, float, float]] = (2.8, 2.8, 3.5),
                    return_labels: bool = False, noise_hu: float = 10.0,
                    heart_scale: Optional[float] = None):
    """The realistic synthetic chest CT in HU (float32), same grid and arguments as
    :func:`.chest.procedural_chest`; labels in :data:`REALISTIC_LABELS`."""
    hu, labels, ctx = build_realistic_chest(seed, shape, spacing, noise_hu, heart_scale)
    return as_realistic_volumes(hu, labels, ctx, seed, return_labels)


def as_realistic_volumes(hu, labels, ctx, seed, return_labels, extra_meta=None):
    """:func:`.chest._as_volumes` with this variant's source, sex and label names."""
    meta = {"source": SOURCE, "variant": "chest2", "sex": ctx["params"]["sex"]}
    meta.update(extra_meta or {})
    out = _as_volumes(hu, labels, ctx, seed, return_labels, meta)
    if return_labels:
        out[1].metadata.update(labels=dict(REALISTIC_LABELS), source=SOURCE)
    return out


def build_realistic_chest(seed, shape, spacing, noise_hu, heart_scale):
    """(hu, labels, context) with the same context keys as :func:`.chest._build_chest`, so
    :func:`.findings.render_findings` can place findings and calcium in it."""
    shape, h, origin, (x, y, z) = _chest_grid(shape, spacing)
    g = Grid(x, y, z, origin, h, shape)
    rng = np.random.default_rng(seed)
    p = _draw_parameters(rng, heart_scale)
    s_anat, s_tree, s_tex = _streams(seed)
    _add_parameters(p, np.random.default_rng(s_anat))
    hu = np.full(shape, -1000.0, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)

    body, inner, breast = paint_body(g, p, hu, labels)
    z_dome, below = paint_abdomen(g, p, inner, hu, labels)
    rho, alpha, ring = cage_polar(g, p)
    paint_lungs(g, p, inner, below, rho, ring, hu, labels)
    aorta, asc_xy = _paint_aorta(x, y, z, p, inner, hu, labels)
    heart = _paint_heart(g, p, inner, z_dome, hu, labels)
    paint_mediastinum(g, p, inner, hu, labels)
    paint_mediastinal_fat(p, rho, ring, below, inner, hu, labels)
    lungs = np.isin(labels, (2, 3))
    paint_lung_trees(np.random.default_rng(s_tree), g, p, lungs, hu, labels)
    tex_rng = np.random.default_rng(s_tex)
    soft_tex = _smooth_field(tex_rng, shape, 6.0 / h)
    spine = paint_spine(g, p, inner, soft_tex, hu, labels)
    ribs = paint_ribs(g, p, rho, alpha, ring, spine, hu, labels)
    ribs |= paint_sternum(g, p, hu, labels)
    girdle = paint_shoulder_girdle(g, p, (rho, alpha, ring), body, hu, labels)
    bone = spine | ribs | girdle
    _add_texture(tex_rng, hu, labels, lungs, breast, bone, soft_tex, p, y, h)
    if noise_hu > 0:
        hu[body] += (noise_hu * tex_rng.standard_normal(int(body.sum()))).astype(np.float32)
    ctx = {"params": p, "spacing": h, "origin": origin, "shape": shape, "x": x, "y": y, "z": z,
           "body": body, "inner": inner, "below": below, "z_dome": z_dome, "lungs": lungs,
           "rho": rho, "ring": ring, "heart": heart, "aorta": aorta, "bone": bone,
           "asc_xy": asc_xy, "desc_xy": (p["aorta_x"], p["spine_y"] - 27.0),
           "noise_hu": noise_hu}
    return hu, labels, ctx


def _paint_heart(g, p, inner, z_dome, hu, labels):
    """The procedural chest's heart (the findings rebuild it from the same parameters)."""
    heart = (_ellipsoid_q(g.x, g.y, g.z, p["heart_c"], p["heart_semi"], p["heart_rot"]) <= 1.0) \
        & inner & (g.z >= z_dome - 5.0)
    hu[heart] = HU_SOFT
    labels[heart] = 4
    return heart


def _smooth_field(rng, shape, sigma_vox):
    """Unit-variance smooth random field, filtered on a half-resolution grid and brought
    back by repetition and a light blur: half the cost of filtering at full resolution, at
    correlation lengths of a voxel or more."""
    small = tuple(max(2, (n + 1) // 2) for n in shape)
    f = gaussian_filter(rng.standard_normal(small).astype(np.float32),
                        np.maximum(np.asarray(sigma_vox) / 2.0, 0.4), mode="wrap")
    f = f.repeat(2, axis=0).repeat(2, axis=1).repeat(2, axis=2)[: shape[0], : shape[1], : shape[2]]
    f = gaussian_filter(f, 0.7, truncate=2.0, mode="wrap")
    return f / (f.std() + 1e-12)


def _add_texture(rng, hu, labels, lungs, breast, bone, soft_tex, p, y, h):
    """Correlated texture: lung parenchyma (fine, plus the gravity gradient of a supine
    patient), soft tissue and fat (coarse), breast (fibroglandular strands in fat)."""
    lung_tex = _smooth_field(rng, hu.shape, 2.5 / h)
    gravity = np.broadcast_to(np.clip(y / p["iay"], -1.0, 1.0), hu.shape)
    hu[lungs] += (30.0 * gravity[lungs] + 22.0 * lung_tex[lungs]).astype(np.float32)
    soft = (labels > 0) & ~lungs & ~bone & ~breast & (hu > -300.0)
    hu[soft] += (12.0 * soft_tex[soft]).astype(np.float32)
    gland = np.clip(0.35 + 0.45 * lung_tex[breast], 0.0, 1.0)
    hu[breast] = (-100.0 + 135.0 * gland).astype(np.float32)


__all__ = ["REALISTIC_LABELS", "realistic_chest", "realistic_parameters",
           "build_realistic_chest", "as_realistic_volumes"]

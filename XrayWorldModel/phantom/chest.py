"""Procedural chest CTs: unlimited labelled synthetic chests for tests and in-silico studies.

Anatomy is built from analytic shapes in LPS millimetres (+x patient left, +y posterior,
+z superior), so orientation is known exactly and a test can check that a renderer or a
reader keeps left/right and anterior/posterior straight. The seed jitters sizes and
positions; everything is vectorised numpy, well under a second at the default size.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple, Union

import numpy as np
from scipy.ndimage import gaussian_filter

from ..errors import InputError
from ..volume import Volume
from .ellipsoid import rotation_matrix

#: Label values of ``procedural_chest(..., return_labels=True)``; 0 is outside air.
#: 'ribs' includes the sternum; 'spine' is vertebral bone (the canal is 'body').
CHEST_LABELS: Dict[int, str] = {1: "body", 2: "lung_left", 3: "lung_right", 4: "heart",
                                5: "spine", 6: "ribs", 7: "aorta", 8: "liver"}

HU_AIR = -1000.0
HU_FAT = -100.0
HU_SOFT = 40.0
HU_LUNG = -850.0
HU_BONE = 700.0
HU_RIB = 600.0
HU_LIVER = 60.0
HU_DISC = 80.0
HU_CSF = 15.0


def _ellipsoid_q(x, y, z, center, semi, rot=None):
    """Squared unit-sphere radius of each grid point for an (optionally rotated) ellipsoid."""
    dx, dy, dz = x - center[0], y - center[1], z - center[2]
    if rot is not None:   # local = R^T d; R columns are the ellipsoid axes
        dx, dy, dz = (rot[0, 0] * dx + rot[1, 0] * dy + rot[2, 0] * dz,
                      rot[0, 1] * dx + rot[1, 1] * dy + rot[2, 1] * dz,
                      rot[0, 2] * dx + rot[1, 2] * dy + rot[2, 2] * dz)
    return (dx / semi[0]) ** 2 + (dy / semi[1]) ** 2 + (dz / semi[2]) ** 2


def _smooth_noise(rng, shape, sigma_vox):
    """Unit-variance smooth Gaussian random field (texture for vessels and parenchyma)."""
    f = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="wrap")
    return f / (f.std() + 1e-12)


def chest_parameters(seed: int = 0, heart_scale: Optional[float] = None) -> Dict[str, object]:
    """The scalar anatomy ``procedural_chest(seed)`` samples first (sizes and positions, mm),
    without building any voxels: cheap enough to draw labels for thousands of chests.

    The heart-size jitter is always drawn, so an explicit ``heart_scale`` changes the heart
    and nothing else: the same patient with a bigger (or smaller) heart.
    """
    return _draw_parameters(np.random.default_rng(seed), heart_scale)


def _jitters(rng: np.random.Generator):
    """(jit, add): ``jit(rel)`` draws a factor 1 +- rel, ``add(abs_mm)`` an offset +- abs_mm."""
    def jit(rel):
        return 1.0 + rel * rng.uniform(-1.0, 1.0)

    def add(abs_mm):
        return abs_mm * rng.uniform(-1.0, 1.0)

    return jit, add


def _draw_parameters(rng: np.random.Generator, heart_scale: Optional[float]) -> Dict[str, object]:
    jit, add = _jitters(rng)
    p: Dict[str, object] = {}
    ax, ay = 160.0 * jit(0.06), 110.0 * jit(0.06)          # body semi-axes (L-R, A-P)
    fat = 12.0 * jit(0.3)
    p.update(ax=ax, ay=ay, fat=fat, iax=ax - fat, iay=ay - fat)   # inside the fat layer
    p["cage_x"], p["cage_y"] = p["iax"] - 10.0, p["iay"] - 8.0    # rib ring (rib tube centres)
    p["spine_y"] = 0.42 * ay + add(3.0)
    p["dome_r"] = dome_r = -65.0 + add(10.0)               # right dome apex z (higher)
    p["dome_l"] = dome_l = dome_r - 15.0 + add(5.0)
    p["dome_curv"] = 95.0 * jit(0.15)
    p["lung_top"] = lung_top = 138.0 + add(8.0)
    hs_jitter = 1.0 * jit(0.08)
    p["heart_scale"] = hs = hs_jitter if heart_scale is None else float(heart_scale)
    p["heart_c"] = (28.0 + add(6.0), -0.32 * ay + add(5.0), dome_l + 45.0 + add(6.0))
    p["heart_semi_unit"] = (58.0 * jit(0.08), 42.0 * jit(0.08), 50.0 * jit(0.08))
    p["heart_semi"] = tuple(s * hs for s in p["heart_semi_unit"])
    p["heart_rot"] = rotation_matrix((add(8.0), 18.0 + add(8.0), -35.0 + add(10.0)))
    p["aorta_x"], p["aorta_r"] = 20.0 + add(3.0), 11.0 * jit(0.1)
    p["arch_z"] = lung_top - 70.0 + add(8.0)
    p["vert_h"] = vert_h = 26.0 * jit(0.05)                # vertebral level height
    p["vert_phase"] = rng.uniform(0.0, vert_h)
    p["rib_drop"] = 70.0 * jit(0.15)
    return p


def procedural_chest(seed: int = 0, shape: Tuple[int, int, int] = (128, 128, 96),
                     spacing: Union[float, Tuple[float, float, float]] = (2.8, 2.8, 3.5),
                     return_labels: bool = False, noise_hu: float = 10.0,
                     heart_scale: Optional[float] = None):
    """A synthetic chest CT in HU (float32) on a grid centred on the LPS origin.

    ``seed`` controls every jittered size and position and the textures, so the same seed
    gives the same volume. ``heart_scale`` (default: jittered around 1) enlarges the heart,
    e.g. to simulate cardiomegaly; it changes the heart only, the rest of the anatomy is that
    of the same seed. With ``return_labels`` also returns a uint8 label Volume
    (values in :data:`CHEST_LABELS`). The sampled anatomy is stored in
    ``volume.metadata['anatomy']``. Findings (pathology, calcium) are added by
    :mod:`XrayWorldModel.phantom.findings`.
    """
    hu, labels, ctx = _build_chest(seed, shape, spacing, noise_hu, heart_scale)
    return _as_volumes(hu, labels, ctx, seed, return_labels)


def _as_volumes(hu, labels, ctx, seed, return_labels, extra_meta=None):
    p, h, origin = ctx["params"], ctx["spacing"], ctx["origin"]
    anatomy = {
        "body_semi_axes_mm": [p["ax"], p["ay"]], "fat_mm": p["fat"], "spine_y_mm": p["spine_y"],
        "dome_right_z_mm": p["dome_r"], "dome_left_z_mm": p["dome_l"],
        "lung_top_z_mm": p["lung_top"], "heart_center_mm": list(p["heart_c"]),
        "heart_semi_axes_mm": list(p["heart_semi"]), "heart_scale": p["heart_scale"],
        "aorta_x_mm": p["aorta_x"], "aorta_radius_mm": p["aorta_r"],
    }
    meta = {"units": "HU", "source": "procedural_chest", "seed": seed,
            "anatomy": {k: (float(v) if np.isscalar(v) else [float(e) for e in v])
                        for k, v in anatomy.items()}}
    meta.update(extra_meta or {})
    vol = Volume.from_spacing(hu, spacing=h, origin=origin, metadata=meta)
    if not return_labels:
        return vol
    lab = Volume.from_spacing(labels, spacing=h, origin=origin,
                              metadata={"labels": dict(CHEST_LABELS), "source": "procedural_chest",
                                        "seed": seed})
    return vol, lab


def _build_chest(seed, shape, spacing, noise_hu, heart_scale):
    """(hu, labels, context): the arrays and the intermediate geometry (grids, masks,
    parameters) that findings need to place themselves in this anatomy.

    The organs are painted in a fixed order (later ones overwrite earlier ones) and draw from
    one random generator in a fixed order, so a seed always gives the same arrays.
    """
    shape, h, origin, (x, y, z) = _chest_grid(shape, spacing)
    rng = np.random.default_rng(seed)
    prm = _draw_parameters(rng, heart_scale)
    hu = np.full(shape, HU_AIR, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)

    body, inner = _paint_body(x, y, prm, shape, hu, labels)
    z_dome, below = _paint_abdomen(x, y, z, prm, inner, hu, labels)
    rho, alpha, ring = _rib_cage_ring(x, y, z, prm)
    lungs, n1, n2 = _paint_lungs(rng, x, y, z, prm, h, shape, below, rho, ring, hu, labels)
    aorta, asc_xy = _paint_aorta(x, y, z, prm, inner, hu, labels)
    heart = (_ellipsoid_q(x, y, z, prm["heart_c"], prm["heart_semi"], prm["heart_rot"]) <= 1.0) \
        & inner & (z >= z_dome - 5.0)
    hu[heart] = HU_SOFT
    labels[heart] = 4
    bone = _paint_spine(x, y, z, prm, inner, n2, hu, labels)
    ribs = _paint_ribs(x, y, z, prm, inner, rho, alpha, ring, bone, n1, hu, labels)

    if noise_hu > 0:
        hu[body] += (noise_hu * rng.standard_normal(int(body.sum()))).astype(np.float32)
    ctx = {"params": prm, "spacing": h, "origin": origin, "shape": shape, "x": x, "y": y, "z": z,
           "body": body, "inner": inner, "below": below, "z_dome": z_dome, "lungs": lungs,
           "rho": rho, "ring": ring, "heart": heart, "aorta": aorta, "bone": bone | ribs,
           "asc_xy": asc_xy, "desc_xy": (prm["aorta_x"], prm["spine_y"] - 27.0),
           "noise_hu": noise_hu}
    return hu, labels, ctx


# The painters below each add one part of the anatomy to ``hu`` and ``labels`` (in place) on
# the grid ``x, y, z`` (LPS mm, float32, broadcastable to the volume) and return its masks.
def _chest_grid(shape, spacing):
    """(shape, spacing, origin, (x, y, z)): the checked grid, centred on the LPS origin."""
    shape = tuple(int(n) for n in np.broadcast_to(np.asarray(shape), (3,)))
    if min(shape) < 2:
        raise InputError(f"procedural chest shape must be at least 2 in every axis, got {shape}")
    h = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)).copy()
    if not np.all(np.isfinite(h) & (h > 0)):
        raise InputError(f"procedural chest spacing must be positive, got {h.tolist()}")
    origin = -(np.asarray(shape) - 1) / 2 * h
    f32 = np.float32
    x = (origin[0] + np.arange(shape[0]) * h[0]).astype(f32)[:, None, None]
    y = (origin[1] + np.arange(shape[1]) * h[1]).astype(f32)[None, :, None]
    z = (origin[2] + np.arange(shape[2]) * h[2]).astype(f32)[None, None, :]
    return shape, h, origin, (x, y, z)


def _paint_body(x, y, prm, shape, hu, labels):
    """The body (fat under the skin, soft tissue inside); returns (body, inner) masks."""
    body = (x / prm["ax"]) ** 2 + (y / prm["ay"]) ** 2 <= 1.0
    body = np.broadcast_to(body, shape)
    inner = np.broadcast_to((x / prm["iax"]) ** 2 + (y / prm["iay"]) ** 2 <= 1.0, shape)
    hu[body] = HU_FAT
    hu[inner] = HU_SOFT
    labels[body] = 1
    return body, inner


def _paint_abdomen(x, y, z, prm, inner, hu, labels):
    """The diaphragm domes, the liver below the right one and the gastric air bubble under
    the left one; returns (z_dome, below): the dome height and the abdomen mask."""
    dome_r, dome_l, dome_curv = prm["dome_r"], prm["dome_l"], prm["dome_curv"]
    z_dome = np.maximum(dome_r - ((x + 60.0) ** 2 + y ** 2) / (2 * dome_curv),
                        dome_l - ((x - 60.0) ** 2 + (y - 5.0) ** 2) / (2 * dome_curv))
    below = z < z_dome                                      # abdomen, [nx, ny, nz]
    liver = inner & below & (x < 35.0 - 0.3 * y) & (z > z_dome - 160.0)
    hu[liver] = HU_LIVER
    labels[liver] = 8
    bubble = _ellipsoid_q(x, y, z, (70.0, -25.0, dome_l - 25.0), (28.0, 20.0, 14.0)) <= 1.0
    hu[bubble & inner & below & ~liver] = HU_AIR + 100.0     # gastric air under the left dome
    return z_dome, below


def _rib_cage_ring(x, y, z, prm):
    """(rho, alpha, ring): radius and angle about the cage axis (alpha 0 posterior, pi/2
    lateral, pi anterior) and the cage's radius at that angle, tapering towards the apex."""
    taper = 1.0 - 0.30 * np.clip((z - 40.0) / (prm["lung_top"] - 40.0), 0.0, 1.0) ** 2
    yc = 0.0
    rho = np.sqrt(x ** 2 + (y - yc) ** 2)
    alpha = np.arctan2(np.abs(x), y - yc)
    ring = 1.0 / np.sqrt((np.sin(alpha) / prm["cage_x"]) ** 2 + (np.cos(alpha) / prm["cage_y"]) ** 2)
    return rho, alpha, ring * taper                          # ring: [nx, ny, nz]


def _paint_lungs(rng, x, y, z, prm, h, shape, below, rho, ring, hu, labels):
    """Both lungs inside the cage and above the domes, with vessel texture; returns (lungs,
    n1, n2): the mask and the two smooth random fields (they texture the bones too)."""
    jit, add = _jitters(rng)
    iax, iay, lung_top = prm["iax"], prm["iay"], prm["lung_top"]
    lungs = np.zeros(shape, dtype=bool)
    for side, lab in ((1.0, 2), (-1.0, 3)):
        c = (side * (0.45 * iax + add(4.0)), 5.0 + add(4.0), (lung_top + prm["dome_r"]) / 2 - 30.0)
        semi = (0.42 * iax * jit(0.05), 0.86 * iay * jit(0.05), (lung_top - c[2]) * jit(0.02))
        q = (np.abs(x - c[0]) / semi[0]) ** 2.6 + (np.abs(y - c[1]) / semi[1]) ** 2.6 \
            + ((z - c[2]) / semi[2]) ** 2
        lung = (q <= 1.0) & ~below & (rho < ring - 9.0) & (side * x > 12.0)
        lungs |= lung
        labels[lung] = lab
    # texture: vessels are where two smooth random fields are both near zero (tubes)
    sig = 5.0 / h
    n1, n2 = _smooth_noise(rng, shape, sig), _smooth_noise(rng, shape, sig)
    tube = np.exp(-(n1 ** 2 + n2 ** 2) / (2 * 0.18 ** 2))
    hil = np.minimum(np.sqrt((x - 40.0) ** 2 + (y - 10.0) ** 2 + (z - 20.0) ** 2),
                     np.sqrt((x + 40.0) ** 2 + (y - 10.0) ** 2 + (z - 20.0) ** 2))
    near = np.clip(1.0 - hil / 160.0, 0.15, 1.0)
    hu[lungs] = (HU_LUNG + 650.0 * (tube * near)[lungs] + 12.0 * n1[lungs]).astype(np.float32)
    return lungs, n1, n2


def _paint_aorta(x, y, z, prm, inner, hu, labels):
    """Ascending aorta, arch and descending aorta; returns (mask, ascending centre (x, y))."""
    aorta_x, aorta_r, arch_z = prm["aorta_x"], prm["aorta_r"], prm["arch_z"]
    spine_y, heart_c = prm["spine_y"], prm["heart_c"]
    desc = ((x - aorta_x) ** 2 + (y - (spine_y - 27.0)) ** 2 <= aorta_r ** 2) & (z <= arch_z) \
        & (z > prm["dome_l"] - 120.0)
    asc_x, asc_y = -5.0, heart_c[1] + 15.0
    asc = ((x - asc_x) ** 2 + (y - asc_y) ** 2 <= (1.25 * aorta_r) ** 2) & (z <= arch_z) \
        & (z >= heart_c[2])
    p0, p1 = np.array([asc_x, asc_y]), np.array([aorta_x, spine_y - 27.0])
    mid, half = (p0 + p1) / 2, np.linalg.norm(p1 - p0) / 2
    dvec = (p1 - p0) / (2 * half)
    s = (x - mid[0]) * dvec[0] + (y - mid[1]) * dvec[1]
    nrm = -(x - mid[0]) * dvec[1] + (y - mid[1]) * dvec[0]
    t = z - arch_z
    arch = ((np.sqrt(s ** 2 + t ** 2) - half) ** 2 + nrm ** 2 <= aorta_r ** 2) & (t >= 0)
    aorta = (desc | asc | arch) & inner
    hu[aorta] = HU_SOFT
    labels[aorta] = 7
    return aorta, (asc_x, asc_y)


def _paint_spine(x, y, z, prm, inner, n2, hu, labels):
    """Vertebral bodies, discs, canal, arches, spinous and transverse processes; returns the
    bone mask."""
    spine_y = prm["spine_y"]
    zl = np.mod(z - prm["vert_phase"], prm["vert_h"])        # position within a level
    disc = zl < 5.0
    vb = ((x / 21.0) ** 2 + ((y - spine_y) / 16.0) ** 2 <= 1.0)
    canal_c = spine_y + 27.0
    canal = x ** 2 + (y - canal_c) ** 2 <= 9.0 ** 2
    arch_ring = (x ** 2 + (y - canal_c) ** 2 <= 15.0 ** 2) & ~canal & (y > spine_y + 12.0)
    spinous = (np.abs(x) <= 4.5) & (y > canal_c) & (y <= canal_c + 36.0) & (zl > 8.0)
    transverse = (np.abs(x) <= 32.0) & (np.abs(y - (canal_c - 2.0)) <= 5.0) & (zl > 10.0) & (zl < 20.0)
    bone = ((vb & ~disc) | arch_ring & ~disc | spinous | transverse) & inner
    hu[vb & disc & inner] = HU_DISC
    hu[canal & inner] = HU_CSF
    hu[bone] = HU_BONE + 60.0 * n2[bone]
    labels[bone] = 5
    return bone


def _paint_ribs(x, y, z, prm, inner, rho, alpha, ring, bone, n1, hu, labels):
    """Twelve rib pairs (the last three floating) and the sternum; returns their mask."""
    # unwarp the anterior drop, then each rib is a flat tube around the cage ring
    vert_h = prm["vert_h"]
    frac = np.clip(alpha / math.pi, 0.0, 1.0)
    w = z + prm["rib_drop"] * frac ** 1.4
    rib_top = prm["lung_top"] - 8.0
    idx = np.round((rib_top - w) / vert_h)
    dz = w - (rib_top - idx * vert_h)
    amax = np.where(idx >= 9, 1.9, 2.7)                       # floating ribs stop laterally
    ribs = (((rho - ring) / 5.5) ** 2 + (dz / 8.0) ** 2 <= 1.0) & (idx >= 0) & (idx <= 11) \
        & (alpha > 0.22) & (alpha < amax) & inner
    iay = prm["iay"]
    sternum = (np.abs(x) <= 14.0) & (y >= -iay + 3.0) & (y <= -iay + 15.0) \
        & (z <= rib_top - 20.0) & (z >= prm["dome_r"] - 50.0) & inner
    ribs |= sternum
    ribs &= ~bone
    hu[ribs] = HU_RIB + 60.0 * n1[ribs]
    labels[ribs] = 6
    return ribs

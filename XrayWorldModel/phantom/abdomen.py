"""Procedural abdomen/pelvis CTs: a body region the chest world model has never seen.

The chest model must recognise what is *not* a chest: a frontal radiograph of the abdomen
and pelvis has no lungs (no dark fields either side of the mediastinum), a liver and spleen
under no diaphragm, bowel gas scattered through soft tissue, lumbar vertebrae, the iliac
wings, sacrum, femoral heads and pubic bones. :func:`procedural_abdomen` builds such a CT in
HU on the same LPS grid as :func:`~XrayWorldModel.phantom.chest.procedural_chest` (+x patient
left, +y posterior, +z superior, centred on the origin), so the same DRR geometry frames it;
the trust tests render it as a PA DICOM and check that inference flags it out of
distribution. Vectorised numpy, seeded: the same seed gives the same volume.
"""
from __future__ import annotations

from typing import Dict, Tuple, Union

import numpy as np

from ..volume import Volume
from .chest import (HU_AIR, HU_BONE, HU_DISC, HU_FAT, HU_LIVER, HU_SOFT, _chest_grid,
                    _ellipsoid_q, _jitters, _smooth_noise)

#: Label values of ``procedural_abdomen(..., return_labels=True)``; 0 is outside air.
ABDOMEN_LABELS: Dict[int, str] = {1: "body", 2: "liver", 3: "spleen", 4: "kidneys",
                                  5: "bowel_gas", 6: "spine", 7: "pelvis", 8: "femur",
                                  9: "bladder"}
HU_GAS = -950.0
HU_FLUID = 10.0
HU_TRABECULAR = 250.0


def abdomen_parameters(seed: int = 0) -> Dict[str, float]:
    """The scalar anatomy of ``procedural_abdomen(seed)`` (sizes and positions, mm)."""
    rng = np.random.default_rng([0xAB_D0, int(seed)])
    jit, add = _jitters(rng)
    ax, ay = 165.0 * jit(0.06), 118.0 * jit(0.06)
    return {"ax": ax, "ay": ay, "fat": 20.0 * jit(0.3), "hip_ax": 185.0 * jit(0.05),
            "spine_y": 0.40 * ay + add(3.0), "vert_h": 33.0 * jit(0.05),
            "vert_phase": float(rng.uniform(0.0, 33.0)),
            "liver_top": 150.0 + add(10.0), "iliac_top": -25.0 + add(8.0),
            "femoral_z": -125.0 + add(6.0), "femoral_x": 92.0 * jit(0.05),
            "n_gas": int(rng.integers(18, 30)), "gas_seed": int(rng.integers(2 ** 31))}


def procedural_abdomen(seed: int = 0, shape: Tuple[int, int, int] = (128, 128, 96),
                       spacing: Union[float, Tuple[float, float, float]] = (2.8, 2.8, 3.5),
                       return_labels: bool = False, noise_hu: float = 10.0):
    """A synthetic abdomen/pelvis CT in HU (float32) on a grid centred on the LPS origin:
    body and subcutaneous fat, liver, spleen, kidneys, bowel gas and fluid-filled loops,
    lumbar spine, iliac wings, sacrum, femoral heads and necks, pubic bones and the bladder;
    no lungs. With ``return_labels`` also a uint8 label Volume (:data:`ABDOMEN_LABELS`)."""
    shape, h, origin, (x, y, z) = _chest_grid(shape, spacing)
    p = abdomen_parameters(seed)
    rng = np.random.default_rng(p["gas_seed"])
    hu = np.full(shape, HU_AIR, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    inner = _paint_trunk(x, y, z, p, shape, hu, labels)
    _paint_organs(x, y, z, p, inner, hu, labels)
    _paint_bowel(rng, x, y, z, p, h, inner, hu, labels)
    _paint_lumbar_spine(x, y, z, p, inner, hu, labels)
    _paint_pelvis(x, y, z, p, inner, hu, labels)
    body = labels > 0
    if noise_hu > 0:
        hu[body] += (noise_hu * rng.standard_normal(int(body.sum()))).astype(np.float32)
    meta = {"units": "HU", "source": "procedural_abdomen", "seed": int(seed),
            "anatomy": {k: float(v) for k, v in p.items()}}
    vol = Volume.from_spacing(hu, spacing=h, origin=origin, metadata=meta)
    if not return_labels:
        return vol
    return vol, Volume.from_spacing(labels, spacing=h, origin=origin,
                                    metadata={"labels": dict(ABDOMEN_LABELS),
                                              "source": "procedural_abdomen", "seed": int(seed)})


# The painters each add one part of the anatomy to ``hu`` and ``labels`` in place, on the
# grid ``x, y, z`` (LPS mm, broadcastable to the volume).
def _paint_trunk(x, y, z, p, shape, hu, labels):
    """Body outline widening to the hips below the iliac crests, fat under the skin, soft
    tissue (muscle, viscera) inside; returns the inner (sub-fat) mask."""
    widen = np.clip((p["iliac_top"] - z) / 60.0, 0.0, 1.0)
    ax = p["ax"] + (p["hip_ax"] - p["ax"]) * widen
    body = (x / ax) ** 2 + (y / p["ay"]) ** 2 <= 1.0
    inner = (x / (ax - p["fat"])) ** 2 + (y / (p["ay"] - p["fat"])) ** 2 <= 1.0
    body, inner = np.broadcast_to(body, shape), np.broadcast_to(inner, shape)
    hu[body] = HU_FAT
    hu[inner] = HU_SOFT
    labels[body] = 1
    return inner


def _paint_organs(x, y, z, p, inner, hu, labels):
    """Liver (right upper quadrant, to the top of the volume), spleen, kidneys, bladder."""
    liver = (_ellipsoid_q(x, y, z, (-70.0, -5.0, p["liver_top"] - 40.0), (95.0, 85.0, 105.0))
             <= 1.0) & inner
    hu[liver], labels[liver] = HU_LIVER, 2
    spleen = (_ellipsoid_q(x, y, z, (95.0, 45.0, p["liver_top"] - 45.0), (35.0, 45.0, 55.0))
              <= 1.0) & inner
    hu[spleen], labels[spleen] = HU_SOFT + 5.0, 3
    for side in (-1.0, 1.0):
        kidney = (_ellipsoid_q(x, y, z, (side * 62.0, p["spine_y"] - 5.0, 55.0 - 8.0 * side),
                               (28.0, 22.0, 55.0)) <= 1.0) & inner
        hu[kidney], labels[kidney] = HU_SOFT + 10.0, 4
    bladder = (_ellipsoid_q(x, y, z, (0.0, -45.0, p["femoral_z"] - 10.0), (45.0, 35.0, 35.0))
               <= 1.0) & inner
    hu[bladder], labels[bladder] = HU_FLUID, 9


def _paint_bowel(rng, x, y, z, p, h, inner, hu, labels):
    """Fluid-filled loops (a smooth random field's ridges) and scattered gas pockets, in the
    mid and lower abdomen where no solid organ is."""
    free = inner & (labels <= 1) & (z < p["liver_top"] - 60.0) & (y < p["spine_y"] - 25.0)
    loops = np.abs(_smooth_noise(rng, free.shape, 6.0 / h)) < 0.25
    hu[free & loops] = HU_FLUID + 20.0
    for _ in range(p["n_gas"]):
        c = (rng.uniform(-120.0, 120.0), rng.uniform(-80.0, 20.0), rng.uniform(-110.0, 90.0))
        semi = tuple(rng.uniform(8.0, 26.0, 3))
        gas = (_ellipsoid_q(x, y, z, c, semi) <= 1.0) & free
        hu[gas], labels[gas] = HU_GAS, 5


def _paint_lumbar_spine(x, y, z, p, inner, hu, labels):
    """Lumbar vertebral bodies (larger than thoracic ones) with discs, the canal, laminae and
    wide transverse processes, plus the psoas muscles beside them."""
    sy = p["spine_y"]
    zl = np.mod(z - p["vert_phase"], p["vert_h"])
    disc = zl < 8.0
    vb = (x / 26.0) ** 2 + ((y - sy) / 20.0) ** 2 <= 1.0
    canal_c = sy + 32.0
    canal = x ** 2 + (y - canal_c) ** 2 <= 11.0 ** 2
    arch = (x ** 2 + (y - canal_c) ** 2 <= 18.0 ** 2) & ~canal & (y > sy + 14.0)
    transverse = (np.abs(x) <= 48.0) & (np.abs(y - canal_c + 4.0) <= 6.0) & (zl > 12.0) \
        & (zl < 24.0)
    above_sacrum = z > p["iliac_top"] - 40.0
    bone = ((vb & ~disc) | (arch & ~disc) | transverse) & inner & above_sacrum
    hu[vb & disc & inner & above_sacrum] = HU_DISC
    hu[bone] = HU_BONE
    hu[bone & vb & ~disc] = HU_TRABECULAR + 150.0    # cancellous body, denser end plates aside
    labels[bone] = 6


def _paint_pelvis(x, y, z, p, inner, hu, labels):
    """Iliac wings (curved plates flaring from the sacrum), the sacrum, acetabula with the
    femoral heads, necks and shafts, and the pubic rami meeting at the symphysis."""
    top, fz, fx = p["iliac_top"], p["femoral_z"], p["femoral_x"]
    sy = p["spine_y"]
    depth = np.clip((top - z) / (top - fz), 0.0, 1.0)                 # 0 at the crest
    ax_ = np.abs(x)
    # a broad fan in a coronal-oblique plane: wide at the crest, narrowing to the acetabulum
    lateral, medial = 145.0 - 45.0 * depth, 38.0 + 40.0 * depth
    plane_y = sy - 5.0 - 0.45 * (ax_ - 38.0)
    wing = (ax_ > medial) & (ax_ < lateral) & (np.abs(y - plane_y) < 7.0) & (z < top) \
        & (z > fz + 10.0)
    sacrum = ((x / (42.0 - 18.0 * depth)) ** 2 + ((y - sy - 8.0) / 16.0) ** 2 <= 1.0) \
        & (z < top - 10.0) & (z > fz - 15.0)
    bone = (wing | sacrum) & inner
    femur = np.zeros(bone.shape, dtype=bool)
    for side in (-1.0, 1.0):
        head = _ellipsoid_q(x, y, z, (side * fx, 0.0, fz), (24.0, 24.0, 24.0)) <= 1.0
        socket = (_ellipsoid_q(x, y, z, (side * fx, 0.0, fz + 6.0), (34.0, 32.0, 30.0)) <= 1.0) \
            & ~head & (z > fz - 5.0)
        neck = ((np.abs(x) - fx - 25.0) ** 2 + y ** 2 <= 14.0 ** 2) & (z < fz - 10.0) \
            & (z > fz - 60.0)
        shaft = ((x - side * (fx + 35.0)) ** 2 + y ** 2 <= 15.0 ** 2) & (z <= fz - 45.0)
        femur |= (head | neck | shaft) & inner
        bone |= socket & inner
    pubic = (np.abs(y + 70.0) < 12.0) & (np.abs(z - fz + 25.0) < 14.0) & (np.abs(x) < fx) & inner
    bone |= pubic
    hu[bone & ~femur] = HU_BONE
    labels[bone & ~femur] = 7
    hu[femur] = HU_BONE
    labels[femur] = 8

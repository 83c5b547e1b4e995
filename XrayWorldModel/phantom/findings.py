"""Findings for the procedural chest: five pathologies and calcium deposits, as a layer on
top of the base anatomy.

:func:`sample_findings` draws what a case has (presence, severity in (0, 1], side, lobe,
relative place, whether its frontal evidence is hidden by superposition) from a seed, without
voxels. :func:`render_findings` places those findings in a built chest and changes its HU only
inside each finding's mask (returned), so subtracting the base chest of the same seed shows
exactly the findings. Placement is in anatomy-relative terms, so one case spec renders
consistently at any grid size.

HU and shape (LPS mm, +x left, +y posterior, +z superior; supine CT, gravity along +y):

* **edema**: bilateral perihilar ("bat-wing") increase of lung density, graded: up to
  ``100 + 450 * severity`` HU at the hila, scaled by the air left in each voxel, patchy, more
  in the dependent (posterior) lung, fading to nothing 70-120 mm from the hila.
* **atelectasis**: one lobe (right/left lower, right/left upper) collapses towards its pivot
  (lower lobes: posteromedial, paravertebral; upper lobes: superomedial or anterior): the lobe
  shrunk to ``(1 - 0.6 * severity)^3`` of its volume (most across, towards the mediastinum)
  keeps its tissue, so its density rises as its
  volume falls (from about -750 HU up to soft tissue); the rest of the old lobe space is
  taken by normal lung (the fissure moves); a collapsed lower lobe also lifts its
  hemidiaphragm (up to 15 mm). Hidden variant: left lower lobe collapse, the retrocardiac triangle.
* **consolidation**: a lobulated patchy region of one lung at ``-100 + 140 * severity`` HU
  (15-40 mm radius) keeping a faint vessel texture. Hidden variant: in the left lung behind
  the heart, confined to the heart's frontal shadow.
* **pleural_effusion**: fluid (8-18 HU) layering in the dependent pleural space: the part of
  a hemithorax below a gravity level (posterior in a supine CT) tilted towards the base, with a
  meniscus climbing along the chest wall; ``35 * severity`` % of the hemithorax (left, right
  or both). Hidden variant: a small (0.5-2 %) strongly basal collection in the posterior
  costophrenic recess, behind the diaphragm dome in a frontal view.
* **cardiomegaly**: the heart enlarged to ``heart_scale = 1.2 + 0.3 * severity`` (the rest of
  the anatomy unchanged); its mask is the added heart; the cardiothoracic ratio is measured.
* **calcium**: dense (300-1500 HU) ellipsoidal deposits on the coronary paths over the heart
  surface (LAD, LCx and RCA in their grooves, left main) and on the aortic wall (arch,
  descending), drawn by :mod:`.risk`. They are rendered with exact partial volume (supersampled
  occupancy, blended with the tissue they replace), so the occupancy-weighted volume equals
  the true volume at any voxel size; a voxel the deposit fills has the deposit's HU, a voxel it
  fills in part a partial-volume mix (as a scanner would show).
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
from scipy.ndimage import gaussian_filter

from . import names
from .chest import CHEST_LABELS, HU_LIVER, HU_LUNG, HU_SOFT, _ellipsoid_q
from .ellipsoid import rotation_matrix

FINDINGS: Tuple[str, ...] = names.FINDINGS
#: Bit of each finding in a finding-mask volume (a voxel may carry several).
MASK_BITS: Dict[str, int] = {"atelectasis": 1, "cardiomegaly": 2, "consolidation": 4,
                             "edema": 8, "pleural_effusion": 16, "calcium": 32}
#: Findings with a deliberately hidden (superposed in the frontal view) variant.
HIDEABLE: Tuple[str, ...] = ("atelectasis", "consolidation", "pleural_effusion")
DEFAULT_PREVALENCE: Dict[str, float] = {f: 0.3 for f in FINDINGS}
DEFAULT_HIDDEN: Dict[str, float] = {f: 0.4 for f in HIDEABLE}

_LAB = {v: k for k, v in CHEST_LABELS.items()}
_LUNG = {+1: _LAB["lung_left"], -1: _LAB["lung_right"]}   # side: +1 left (+x), -1 right
_HILUM = (40.0, 10.0, 20.0)                                # |x|, y, z of each hilum (mm)
_N_DRAWS = 10                                              # uniforms per finding, fixed


# ============================================================================ sampling
def sample_findings(rng: np.random.Generator, prevalence: Mapping[str, float],
                    hidden: Mapping[str, float]) -> Dict[str, Optional[Dict[str, object]]]:
    """For each finding, ``None`` (absent) or its parameters (``severity`` in (0, 1],
    ``hidden``, placement). A fixed number of draws per finding, so changing one prevalence
    never changes another finding's draws."""
    out: Dict[str, Optional[Dict[str, object]]] = {}
    for name in FINDINGS:
        u = rng.uniform(size=_N_DRAWS)
        present = bool(u[0] < float(prevalence.get(name, 0.0)))
        is_hidden = bool(name in HIDEABLE and u[1] < float(hidden.get(name, 0.0)))
        out[name] = _PARAMS[name](u, is_hidden) if present else None
    return out


def _atelectasis_params(u, hidden):
    if hidden:
        side, lobe = +1, "lower"
    else:   # right lower, right upper, left upper
        side, lobe = ((-1, "lower"), (-1, "upper"), (+1, "upper"))[min(int(u[2] * 3), 2)]
    return {"severity": 0.2 + 0.8 * u[3], "hidden": hidden, "side": side, "lobe": lobe}


def _cardiomegaly_params(u, hidden):
    sev = 0.1 + 0.9 * u[3]
    return {"severity": sev, "hidden": False, "heart_scale": 1.2 + 0.3 * sev}


def _consolidation_params(u, hidden):
    sev = (0.2 + 0.4 * u[3]) if hidden else (0.2 + 0.8 * u[3])
    side = +1 if (hidden or u[2] < 0.5) else -1
    lo, hi = (0.3, 0.7) if hidden else (0.15, 0.85)
    rel = [lo + (hi - lo) * v for v in u[4:7]]
    return {"severity": sev, "hidden": hidden, "side": side, "rel": rel,
            "aspect": [0.8 + 0.45 * v for v in u[7:10]]}


def _edema_params(u, hidden):
    return {"severity": 0.15 + 0.85 * u[3], "hidden": False, "asymmetry": 0.8 + 0.4 * u[4]}


def _effusion_params(u, hidden):
    sides = (+1, -1) if u[2] < 0.3 else ((+1,) if u[4] < 0.5 else (-1,))
    if hidden:   # small, strongly basal: the posterior costophrenic recess
        sev, tilt = (0.005 + 0.015 * u[3]) / 0.35, 4.0 + 2.0 * u[5]
    else:
        sev, tilt = 0.2 + 0.8 * u[3], 0.2 + 0.6 * u[5]
    return {"severity": sev, "hidden": hidden, "sides": list(sides), "tilt": tilt,
            "fluid_hu": 8.0 + 10.0 * u[6]}


_PARAMS = {"atelectasis": _atelectasis_params, "cardiomegaly": _cardiomegaly_params,
           "consolidation": _consolidation_params, "edema": _edema_params,
           "pleural_effusion": _effusion_params}


# ============================================================================ rendering
def render_findings(hu: np.ndarray, labels: np.ndarray, ctx: dict,
                    findings: Mapping[str, Optional[Mapping[str, object]]],
                    deposits: List[Mapping[str, float]], rng: np.random.Generator,
                    base_heart_scale: Optional[float] = None):
    """Add ``findings`` and calcium ``deposits`` to a chest built by ``chest._build_chest``
    (``hu`` is changed in place; ``labels`` are the anatomy and stay as built).

    Returns ``(masks, measures)``: a bool mask per finding (and ``calcium``) marking every
    voxel whose HU it changed, ``calcium_fraction`` (the deposits' voxel occupancy), and
    measurements (volumes in mL, cardiothoracic ratio, voxel calcium volume, frontal overlap).
    """
    vox_mm3 = float(np.prod(ctx["spacing"]))
    masks: Dict[str, np.ndarray] = {}
    measures: Dict[str, float] = {}
    noise_hu = float(ctx.get("noise_hu", 10.0))

    def fresh_noise(n):
        return (noise_hu * rng.standard_normal(n)).astype(np.float32)

    if findings.get("cardiomegaly") and base_heart_scale is not None:
        masks["cardiomegaly"] = _added_heart(labels, ctx, base_heart_scale)
    if findings.get("edema"):
        masks["edema"] = _edema(hu, labels, ctx, findings["edema"], rng)
    if findings.get("atelectasis"):
        masks["atelectasis"] = _atelectasis(hu, labels, ctx, findings["atelectasis"], fresh_noise)
    if findings.get("consolidation"):
        masks["consolidation"] = _consolidation(hu, labels, ctx, findings["consolidation"], rng,
                                                fresh_noise)
    if findings.get("pleural_effusion"):
        masks["pleural_effusion"] = _effusion(hu, labels, ctx, findings["pleural_effusion"],
                                              fresh_noise)
    frac = _calcium(hu, ctx, deposits)
    masks["calcium"] = frac > 0
    masks["calcium_fraction"] = frac

    heart = labels == _LAB["heart"]
    measures["heart_ml"] = float(heart.sum()) * vox_mm3 / 1000.0
    measures["ctr"] = float(cardiothoracic_ratio(labels, ctx["spacing"][0]))
    measures["calcium_voxel_mm3"] = float(frac.sum(dtype=np.float64)) * vox_mm3
    for name in FINDINGS:
        m = masks.get(name)
        measures[f"{name}_ml"] = 0.0 if m is None else float(m.sum()) * vox_mm3 / 1000.0
        if m is not None:
            measures[f"{name}_frontal_overlap"] = frontal_overlap(m, labels, ctx)
    return masks, measures


def finding_mask_volume_array(masks: Mapping[str, np.ndarray], shape) -> np.ndarray:
    """The masks as one uint8 array of :data:`MASK_BITS` (0 where no finding)."""
    out = np.zeros(shape, dtype=np.uint8)
    for name, bit in MASK_BITS.items():
        if name in masks:
            out[masks[name]] |= np.uint8(bit)
    return out


# ---------------------------------------------------------------------------- measures
def cardiothoracic_ratio(labels: np.ndarray, dx: float) -> float:
    """Widest transverse extent of the heart over the widest inner thorax (lungs), both
    measured on the frontal projection: the radiographic CTR."""
    def widest(mask_xz):
        cols = mask_xz.any(axis=0)
        if not cols.any():
            return 0.0
        m = mask_xz[:, cols]
        first = m.argmax(axis=0)
        last = m.shape[0] - 1 - m[::-1].argmax(axis=0)
        return float((last - first + 1).max()) * dx

    heart = (labels == _LAB["heart"]).any(axis=1)
    lungs = np.isin(labels, (_LAB["lung_left"], _LAB["lung_right"])).any(axis=1)
    hx = heart.any(axis=1)
    heart_w = 0.0 if not hx.any() else float(np.ptp(np.nonzero(hx)[0]) + 1) * dx
    thorax = widest(lungs | heart)
    return heart_w / thorax if thorax > 0 else float("nan")


def frontal_overlap(mask: np.ndarray, labels: np.ndarray, ctx: dict) -> float:
    """Fraction of a finding's voxels whose frontal (PA, along y) ray also crosses the heart
    or the subdiaphragmatic soft tissue: how much superposition hides it in a frontal view."""
    dense = (labels == _LAB["heart"]) | (ctx["below"] & ctx["inner"])
    cover = dense.any(axis=1)                       # [nx, nz]
    per_col = mask.sum(axis=1)                      # [nx, nz]
    total = per_col.sum()
    return float((per_col * cover).sum() / total) if total else 0.0


# ---------------------------------------------------------------------------- helpers
def _grid(ctx):
    return ctx["x"], ctx["y"], ctx["z"]


def _side_lung(labels, side):
    return labels == _LUNG[side]


def _smooth(rng, shape, sigma_mm, spacing):
    f = gaussian_filter(rng.standard_normal(shape).astype(np.float32),
                        np.asarray(sigma_mm) / np.asarray(spacing), mode="nearest")
    return f / (f.std() + 1e-12)


def _pick_point(cand: np.ndarray, ctx: dict, rel) -> Optional[np.ndarray]:
    """The candidate voxel nearest to the point at relative position ``rel`` (0..1 per
    axis) of the candidates' bounding box, as LPS mm."""
    idx = np.argwhere(cand)
    if len(idx) == 0:
        return None
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    target = lo + np.asarray(rel) * (hi - lo)
    best = idx[np.argmin(((idx - target) ** 2).sum(axis=1))]
    return ctx["origin"] + best * ctx["spacing"]


def _crop(center, radius_mm, ctx):
    """Index slices of the box of half-size ``radius_mm`` around ``center`` (LPS mm)."""
    o, h, shape = ctx["origin"], ctx["spacing"], ctx["shape"]
    lo = np.floor((np.asarray(center) - radius_mm - o) / h).astype(int)
    hi = np.ceil((np.asarray(center) + radius_mm - o) / h).astype(int) + 1
    lo, hi = np.clip(lo, 0, shape), np.clip(hi, 0, shape)
    return tuple(slice(a, b) for a, b in zip(lo, hi))


def _dome_z(ctx, side):
    p = ctx["params"]
    return p["dome_l"] if side > 0 else p["dome_r"]


# ---------------------------------------------------------------------------- findings
def _added_heart(labels, ctx, base_heart_scale):
    """Cardiomegaly mask: heart voxels outside the heart the same patient would have had."""
    p = ctx["params"]
    x, y, z = _grid(ctx)
    semi = tuple(s * base_heart_scale for s in p["heart_semi_unit"])
    normal = _ellipsoid_q(x, y, z, p["heart_c"], semi, p["heart_rot"]) <= 1.0
    return (labels == _LAB["heart"]) & ~normal


def _edema(hu, labels, ctx, f, rng):
    x, y, z = _grid(ctx)
    sev = float(f["severity"])
    amp, reach = 100.0 + 450.0 * sev, 70.0 + 50.0 * sev
    lungs = np.isin(labels, (_LAB["lung_left"], _LAB["lung_right"]))
    w = np.zeros(hu.shape, dtype=np.float32)
    hx, hy, hz = _HILUM
    for side, gain in ((+1, float(f.get("asymmetry", 1.0))), (-1, 1.0)):
        d2 = (x - side * hx) ** 2 + ((y - hy) / 1.1) ** 2 + ((z - hz) / 1.6) ** 2
        w = np.maximum(w, gain * np.clip(1.0 - d2 / reach ** 2, 0.0, 1.0) ** 2)
    mask = lungs & (w > 0)
    ay = float(ctx["params"]["ay"])
    grav = 1.0 + 0.25 * np.clip(y / ay, -1.0, 1.0)               # dependent lung more
    patch = np.clip(1.0 + 0.35 * _smooth(rng, hu.shape, 8.0, ctx["spacing"]), 0.3, 1.7)
    delta = (amp * w * grav * patch)[mask]
    air = np.clip(-hu[mask] / 1000.0, 0.0, 1.0)                  # fluid only where air was
    hu[mask] = hu[mask] + (delta * air).astype(np.float32)
    return mask


def _lobe(points_x, points_y, points_z, side, lobe):
    """Which of the given LPS points are in ``lobe`` (by fissure planes through the hilum)."""
    hx, hy, hz = _HILUM
    a = math.radians(50.0)                                       # oblique fissure slope
    lower = (points_y - hy) * math.sin(a) - (points_z - hz) * math.cos(a) > 0
    if lobe == "lower":
        return lower
    upper = ~lower
    if side < 0:                                                 # right: above the minor fissure
        upper &= points_z > hz + 5.0
    return upper


def _lobe_pivot(ctx, side, lobe):
    p = ctx["params"]
    if lobe == "lower":                                          # posteromedial, paravertebral
        return np.array([side * 22.0, 0.5 * p["iay"], _dome_z(ctx, side) + 20.0])
    if side < 0:                                                 # right upper: superomedial
        return np.array([side * 25.0, 0.0, p["lung_top"] - 30.0])
    return np.array([side * 25.0, -0.35 * p["iay"], _HILUM[2] + 25.0])   # left upper: anterior


def _atelectasis(hu, labels, ctx, f, fresh_noise):
    side, lobe, sev = int(f["side"]), str(f["lobe"]), float(f["severity"])
    x, y, z = _grid(ctx)
    lung = _side_lung(labels, side)
    idx = np.nonzero(lung)
    px, py, pz = x.ravel()[idx[0]], y.ravel()[idx[1]], z.ravel()[idx[2]]
    k = 1.0 - 0.6 * sev                                          # mean linear shrink
    # a lower lobe folds medially and back (a paravertebral triangle), an upper lobe
    # medially and up; the volume ratio is k^3 either way
    kv = k ** (np.array([1.6, 0.7, 0.7]) if lobe == "lower" else np.array([1.4, 0.4, 1.2]))
    piv = _lobe_pivot(ctx, side, lobe)
    # a voxel is in the collapsed lobe if its pre-image (scaled back out from the pivot) was
    # in the lobe and in this lung
    qx, qy, qz = (piv[0] + (px - piv[0]) / kv[0], piv[1] + (py - piv[1]) / kv[1],
                  piv[2] + (pz - piv[2]) / kv[2])
    o, h, shape = ctx["origin"], ctx["spacing"], labels.shape
    ii = np.rint((np.stack([qx, qy, qz], 1) - o) / h).astype(int)
    inside = np.all((ii >= 0) & (ii < shape), axis=1)
    ii = np.clip(ii, 0, np.asarray(shape) - 1)
    pre_lung = inside & lung[ii[:, 0], ii[:, 1], ii[:, 2]]
    collapsed = pre_lung & _lobe(qx, qy, qz, side, lobe)
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(a[collapsed] for a in idx)] = True
    if mask.any():
        # the lobe's tissue kept in a volume k^3 as large: density rises, texture crowds;
        # the lobe space it leaves is taken by the neighbouring (normal) lung
        base = hu[mask]
        m = float(base.mean())
        target = min(-1000.0 + (1000.0 + m) / k ** 3, 30.0)
        hu[mask] = np.clip(target + 0.5 * (base - m), -1000.0, 120.0).astype(np.float32)
    if lobe == "lower":                                          # volume loss lifts the dome
        lift = lung & (z < ctx["z_dome"] + 15.0 * sev) & ~mask
        hu[lift] = (HU_LIVER if side < 0 else HU_SOFT) + fresh_noise(int(lift.sum()))
        mask |= lift
    return mask


def _consolidation(hu, labels, ctx, f, rng, fresh_noise):
    side, sev, hidden = int(f["side"]), float(f["severity"]), bool(f["hidden"])
    lung = _side_lung(labels, side)
    heart_cols = (labels == _LAB["heart"]).any(axis=1)[:, None, :]     # frontal heart shadow
    cand = lung & heart_cols if hidden else lung & ~heart_cols
    if not cand.any():
        cand = lung
    c = _pick_point(cand, ctx, f["rel"])
    if c is None:
        return np.zeros(hu.shape, dtype=bool)
    r = 15.0 + 25.0 * sev
    semi = tuple(r * a for a in f["aspect"])
    rot = rotation_matrix(rng.uniform(-45.0, 45.0, 3))
    box = _crop(c, 1.6 * max(semi), ctx)
    x, y, z = _grid(ctx)
    x, y, z = x[box[0]], y[:, box[1]], z[:, :, box[2]]
    q = _ellipsoid_q(x, y, z, c, semi, rot)
    sub_shape = q.shape
    lob = _smooth(rng, sub_shape, 6.0, ctx["spacing"])
    blob = (np.sqrt(q) + 0.25 * lob) <= 1.0
    mask = np.zeros(hu.shape, dtype=bool)
    sub = blob & lung[box]
    if hidden:
        sub &= np.broadcast_to(heart_cols[box[0], :, box[2]], sub_shape)
    mask[box] = sub
    target = -100.0 + 140.0 * sev
    patch = _smooth(rng, sub_shape, 5.0, ctx["spacing"])[sub]
    old = hu[box][sub]
    new = target + 30.0 * patch + 0.2 * (old - HU_LUNG) + fresh_noise(int(sub.sum()))
    region = hu[box]
    region[sub] = np.clip(new, -250.0, 90.0).astype(np.float32)
    hu[box] = region
    return mask


def _effusion(hu, labels, ctx, f, fresh_noise):
    x, y, z = _grid(ctx)
    frac = 0.35 * float(f["severity"])
    wall = np.clip(ctx["ring"] - 9.0 - ctx["rho"], 0.0, None)     # mm inside the chest wall
    dome_top = ctx["z_dome"].max(axis=1, keepdims=True)          # [nx, 1, 1]
    mask = np.zeros(hu.shape, dtype=bool)
    for side in f["sides"]:
        lung = _side_lung(labels, side)
        n = int(lung.sum())
        want = int(round(frac * n))
        if want < 1:
            continue
        # gravity level (posterior in a supine CT), tilted towards the base (depth below the
        # top of the diaphragm in the same frontal column), plus a meniscus along the wall
        score = (y + float(f["tilt"]) * (dome_top - z) + 15.0 * np.exp(-wall / 6.0))
        s = np.broadcast_to(score, hu.shape)[lung]
        level = np.partition(s, n - want)[n - want]
        fluid = lung & (np.broadcast_to(score, hu.shape) >= level)
        mask |= fluid
    hu[mask] = float(f["fluid_hu"]) + fresh_noise(int(mask.sum()))
    return mask


# ---------------------------------------------------------------------------- calcium
def _coronary_point(ctx, site, t):
    """A point on the heart surface along a coronary path, and the outward normal there."""
    p = ctx["params"]
    c, semi, R = np.asarray(p["heart_c"]), np.asarray(p["heart_semi"]), np.asarray(p["heart_rot"])
    e0 = np.array([1.0, 0.0, 0.0])
    ant = R.T @ np.array([0.0, -1.0, 0.0])                        # anterior, heart-local
    ant -= ant[0] * e0
    ant /= np.linalg.norm(ant)
    left = R.T @ np.array([1.0, 0.0, 0.0])
    left -= left[0] * e0 + (left @ ant) * ant
    left /= np.linalg.norm(left)

    def on_sphere(s, d):
        d = d / np.linalg.norm(d)
        return np.array([s, *(0.0 for _ in range(2))]) + math.sqrt(max(1 - s * s, 0.0)) * d

    if site == "lad":        # anterior interventricular groove, base to near the apex
        u = on_sphere(-0.35 + 1.05 * t, ant + 0.3 * left)
    elif site == "lm":       # short left main at the base
        u = on_sphere(-0.62 + 0.1 * t, ant + 0.8 * left)
    else:                    # atrioventricular groove: LCx to the left, RCA to the right
        phi = (0.3 + 0.7 * t) * math.pi * (1 if site == "lcx" else -1)
        u = on_sphere(-0.5, math.cos(phi) * ant + math.sin(phi) * left)
    pos = c + R @ (semi * u)
    nrm = R @ (u / semi)
    return pos, nrm / np.linalg.norm(nrm)


def _inside_drawn_heart(ctx, pos, nrm, r):
    """``pos`` moved inwards along ``-nrm`` until the deposit clears the chest wall, ribs,
    sternum and diaphragm that clip the drawn heart (an enlarged heart reaches past them)."""
    p = ctx["params"]
    m = 16.0 + r                                                  # rib ring and sternum depth
    ex, ey = max(p["iax"] - m, 1.0), max(p["iay"] - m, 1.0)
    for step in np.arange(0.0, 60.0, 1.0):
        c = pos - step * nrm
        x, y, z = c
        dome = max(p["dome_r"] - ((x + 60.0) ** 2 + y ** 2) / (2 * p["dome_curv"]),
                   p["dome_l"] - ((x - 60.0) ** 2 + (y - 5.0) ** 2) / (2 * p["dome_curv"]))
        if (x / ex) ** 2 + (y / ey) ** 2 <= 1.0 and z >= dome - 5.0 + r:
            return c
    return pos


def _aortic_frame(ctx, site, t, theta):
    """Centre-line point, tangent, and the wall direction at angle ``theta``."""
    p = ctx["params"]
    (ax_, ay_), (dx_, dy_) = ctx["asc_xy"], ctx["desc_xy"]
    if site == "arch":
        p0, p1 = np.array([ax_, ay_]), np.array([dx_, dy_])
        mid, half = (p0 + p1) / 2, np.linalg.norm(p1 - p0) / 2
        dvec = (p1 - p0) / (2 * half)
        a = math.pi * (0.1 + 0.8 * t)
        centre = np.array([*(mid - half * math.cos(a) * dvec), p["arch_z"] + half * math.sin(a)])
        radial = np.array([*(-math.cos(a) * dvec), math.sin(a)])
        binorm = np.array([-dvec[1], dvec[0], 0.0])
        tangent = np.cross(binorm, radial)
    else:                     # descending, from the arch down to above the diaphragm
        zmin = ctx["origin"][2] + 15.0
        z_lo = max(p["dome_l"] - 30.0, zmin)
        z_hi = max(p["arch_z"] - 5.0, z_lo)
        centre = np.array([dx_, dy_, z_hi - t * (z_hi - z_lo)])
        radial, binorm, tangent = np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 1.0])
    wall = math.cos(theta) * radial + math.sin(theta) * binorm
    return centre, tangent / np.linalg.norm(tangent), wall / np.linalg.norm(wall)


def deposit_geometry(ctx: dict, d: Mapping[str, float]):
    """(centre mm, semi-axes mm, rotation) of one calcium deposit in this anatomy."""
    r, k = float(d["radius_mm"]), float(d["elongation"])
    if d["coronary"]:
        t = float(d["t"])
        pos, nrm = _coronary_point(ctx, d["site"], t)
        tangent = (_coronary_point(ctx, d["site"], min(t + 0.005, 1.0))[0]
                   - _coronary_point(ctx, d["site"], max(t - 0.005, 0.0))[0])
        centre = _inside_drawn_heart(ctx, pos, nrm, r)          # in the epicardial groove
    else:
        c, tangent, wall = _aortic_frame(ctx, d["site"], float(d["t"]), float(d["theta"]))
        centre = c + (float(ctx["params"]["aorta_r"]) - 0.5 * r) * wall   # intimal, in the wall
        nrm = wall
    e0 = tangent - (tangent @ nrm) * nrm
    e0 /= np.linalg.norm(e0)
    e2 = np.cross(e0, nrm)
    rot = np.stack([e0, nrm, e2], axis=1)
    semi = (r * k ** (2.0 / 3.0), r * k ** (-1.0 / 3.0), r * k ** (-1.0 / 3.0))  # volume kept
    return centre, semi, rot


def _calcium(hu, ctx, deposits):
    """Blend each deposit in with its exact voxel occupancy (supersampled); returns the
    occupancy (0..1) per voxel."""
    frac = np.zeros(hu.shape, dtype=np.float32)
    if not deposits:
        return frac
    frac_hu = np.zeros(hu.shape, dtype=np.float32)
    h, o, shape = ctx["spacing"], ctx["origin"], np.asarray(hu.shape)
    ss = np.clip(np.ceil(h / 0.35).astype(int), 2, 16)           # sub-samples per axis
    offs = [((np.arange(n) + 0.5) / n - 0.5) * hh for n, hh in zip(ss, h)]
    for d in deposits:
        centre, semi, rot = deposit_geometry(ctx, d)
        ext = max(semi)
        lo = np.floor((centre - ext - o) / h - 0.5).astype(int)
        hi = np.ceil((centre + ext - o) / h + 0.5).astype(int) + 1
        lo, hi = np.clip(lo, 0, shape), np.clip(hi, 0, shape)
        if np.any(hi <= lo):
            continue
        axes = [o[a] + np.arange(lo[a], hi[a])[:, None] * h[a] + offs[a][None, :] for a in range(3)]
        X = axes[0].reshape(-1, 1, 1, ss[0], 1, 1)
        Y = axes[1].reshape(1, -1, 1, 1, ss[1], 1)
        Z = axes[2].reshape(1, 1, -1, 1, 1, ss[2])
        inside = _ellipsoid_q(X, Y, Z, centre, semi, rot) <= 1.0
        f = inside.mean(axis=(3, 4, 5)).astype(np.float32)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        frac[box] += f
        frac_hu[box] += f * np.float32(d["hu"])
    touched = frac > 0
    total = frac[touched]
    dep_hu = frac_hu[touched] / total                            # occupancy-weighted density
    fill = np.minimum(total, 1.0)
    hu[touched] = ((1.0 - fill) * hu[touched] + fill * dep_hu).astype(np.float32)
    frac[touched] = fill
    return frac


__all__ = ["FINDINGS", "MASK_BITS", "HIDEABLE", "DEFAULT_PREVALENCE", "DEFAULT_HIDDEN",
           "sample_findings", "render_findings", "finding_mask_volume_array",
           "cardiothoracic_ratio", "frontal_overlap", "deposit_geometry"]

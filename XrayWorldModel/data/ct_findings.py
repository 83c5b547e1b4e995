"""Findings drawn into a real chest CT, where no label map exists: pleural effusion,
consolidation and edema, placed with the lungs that thresholds find.

The procedural chest (:mod:`XrayWorldModel.phantom.findings`) knows its lobes, heart and
coronary paths. A real CT, augmented or not, knows only what :mod:`.anatomy` finds by
thresholds: the body, the aerated lungs (split into left and right at the body's midline) and
the heart's centre. The three findings that live in the lungs' air are drawn here with the
phantom's HU rules, so a cohort can carry labelled findings on real anatomy too:

* **pleural_effusion**: fluid (8-18 HU) filling the most dependent ``35 * severity`` % of one
  or both lungs, "dependent" meaning posterior (a supine CT) and towards the base;
* **consolidation**: a lobulated region of one lung (15-40 mm radius) at
  ``-100 + 140 * severity`` HU that keeps a faint trace of the vessels it covers;
* **edema**: bilateral perihilar density, up to ``100 + 450 * severity`` HU at the hila,
  scaled by the air left in each voxel, patchy, more in the dependent lung, fading to
  nothing 70-120 mm from the hila.

Not drawn here: cardiomegaly, atelectasis and calcium. They need the heart's outline, the
lobes and the coronary paths, which thresholds do not give; the anatomy augmentation's
heart growth changes the heart's size without a label.

Each finding changes HU only inside its mask (returned), and every mask lies inside what
the thresholds call lungs (on a CT without a chest, such as an abdomen, that can be bowel
gas: the caller must know it gives a chest CT); the draw is deterministic per seed. Like the anatomy augmentation it is meant
for the preprocessed training cube (it holds every voxel's coordinates: 12 bytes a voxel).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..volume import Volume
from .anatomy import body_mask, find_landmarks, lung_mask

#: The findings this module can draw into a real CT (a subset of ``phantom.names.FINDINGS``).
CT_FINDINGS: Tuple[str, ...] = ("consolidation", "edema", "pleural_effusion")
SIDES: Tuple[str, ...] = ("left", "right")
#: Mixed into every seed, so these draws never share a stream with other seeded draws.
_SALT = 0xF1D0


@dataclass(frozen=True)
class CTFinding:
    """One finding to draw: its severity in (0, 1], side ("left", "right" or "both") and the
    uniform numbers that place it (consolidation: which lung voxel is its centre, its radius
    and lobulation; edema: its fade distance; effusion: its fluid HU)."""

    name: str
    severity: float
    side: str
    place: Tuple[float, ...]


def draw_ct_findings(seed: int, prevalence: float = 0.3) -> Dict[str, CTFinding]:
    """Which of :data:`CT_FINDINGS` a case has (each present with ``prevalence``) and how,
    from ``seed``; absent findings are left out."""
    if not 0.0 <= prevalence <= 1.0:
        raise InputError(f"prevalence must be in [0, 1], got {prevalence}")
    rng = np.random.default_rng([int(seed), _SALT])
    out = {}
    for name in CT_FINDINGS:
        present = rng.random() < prevalence
        severity = float(rng.uniform(0.2, 1.0))
        side = ("both", "left", "right")[int(rng.integers(3))] if name == "pleural_effusion" \
            else ("both" if name == "edema" else SIDES[int(rng.integers(2))])
        place = tuple(float(v) for v in rng.random(6))
        if present:
            out[name] = CTFinding(name, severity, side, place)
    return out


@dataclass
class _Chest:
    """What the findings are placed with: LPS coordinates of every voxel (mm), the lungs of
    each side, the hila and the lungs' extent along the superior axis."""

    lps: np.ndarray                   # [*shape, 3]
    lungs: Dict[str, np.ndarray]
    hilum: Dict[str, np.ndarray]
    lung_top: float
    lung_bottom: float


def _chest(volume: Volume) -> _Chest:
    lm = find_landmarks(volume)
    lungs = lung_mask(volume, body_mask(volume))
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij"), -1)
    lps = volume.index_to_lps(idx.reshape(-1, 3)).astype(np.float32).reshape(volume.shape + (3,))
    midline = lm.body_center[0]
    sides = {"left": lungs & (lps[..., 0] > midline), "right": lungs & (lps[..., 0] <= midline)}
    hilum = {}
    for s, m in sides.items():           # the lung's medial fifth, level with the heart's top
        x = lps[..., 0][m] if m.any() else np.array([midline])
        medial = np.percentile(x, 20 if s == "left" else 80)
        hilum[s] = np.array([medial, lm.heart_center[1], lm.heart_center[2] + 0.6 * lm.heart_radius])
    return _Chest(lps, sides, hilum, lm.lung_top, lm.lung_bottom)


def _effusion(hu: np.ndarray, chest: _Chest, f: CTFinding) -> np.ndarray:
    """The most dependent share of each lung of its side, by posterior depth plus a third of
    the height above the lung base; filled with fluid."""
    mask = np.zeros(hu.shape, bool)
    fluid = 8.0 + 10.0 * f.place[0]
    depth = chest.lps[..., 1] - (chest.lps[..., 2] - chest.lung_bottom) / 3.0
    for s in (SIDES if f.side == "both" else (f.side,)):
        lung = chest.lungs[s]
        if not lung.any():
            continue
        level = np.quantile(depth[lung], 1.0 - 0.35 * f.severity)
        mask |= lung & (depth >= level)
    hu[mask] = fluid
    return mask


def _consolidation(hu: np.ndarray, chest: _Chest, f: CTFinding) -> np.ndarray:
    """A lobulated ball (radius 15-40 mm, +-25 % along three random directions) around a
    lung voxel chosen by the draw, inside that lung."""
    lung = chest.lungs[f.side]
    if not lung.any():
        return np.zeros(hu.shape, bool)
    voxels = np.argwhere(lung)
    centre = chest.lps[tuple(voxels[int(f.place[0] * len(voxels)) % len(voxels)])]
    radius = 15.0 + 25.0 * f.place[1]
    rel = chest.lps - centre
    dist = np.linalg.norm(rel, axis=-1)
    angle = 2.0 * np.pi * np.asarray(f.place[2:5])
    lobes = sum(np.cos(rel @ np.array([np.cos(a), np.sin(a), np.cos(2 * a)]) / (0.6 * radius) + a)
                for a in angle)
    mask = lung & (dist <= radius * (1.0 + 0.25 * lobes / 3.0))
    target = -100.0 + 140.0 * f.severity
    texture = 0.1 * (hu[mask] - float(np.median(hu[lung])))     # the vessels, faintly
    hu[mask] = target + texture
    return mask


def _edema(hu: np.ndarray, chest: _Chest, f: CTFinding, seed_noise: np.ndarray) -> np.ndarray:
    """Perihilar density in both lungs: largest at the hila, fading linearly to nothing at
    70-120 mm, scaled by each voxel's air, patchy and heavier posteriorly."""
    fade = 70.0 + 50.0 * f.place[0]
    peak = 100.0 + 450.0 * f.severity
    add = np.zeros(hu.shape, np.float64)
    for s in SIDES:
        lung = chest.lungs[s]
        if not lung.any():
            continue
        d = np.linalg.norm(chest.lps[lung] - chest.hilum[s], axis=-1)
        air = np.clip(-hu[lung] / 1000.0, 0.0, 1.0)
        y = chest.lps[..., 1][lung]
        posterior = (y - y.min()) / max(float(np.ptp(y)), 1e-6)
        patch = 0.6 + 0.4 * seed_noise[lung]
        add[lung] = peak * np.clip(1.0 - d / fade, 0.0, 1.0) * air * patch * (0.8 + 0.4 * posterior)
    mask = add > 20.0
    hu[mask] += add[mask]
    return mask


def render_ct_findings(volume: Volume, findings: Mapping[str, CTFinding],
                       seed: int = 0) -> Tuple[Volume, Dict[str, np.ndarray], Dict[str, float]]:
    """(``volume`` with the ``findings`` drawn in, each finding's mask, the labels: every
    name of :data:`CT_FINDINGS` with its severity, 0 when absent). Findings are drawn in the
    order edema, consolidation, effusion (fluid last: it replaces what lay there)."""
    unknown = set(findings) - set(CT_FINDINGS)
    if unknown:
        raise InputError(f"cannot draw {sorted(unknown)} into a real CT; it draws {list(CT_FINDINGS)}")
    hu = np.array(volume.array, dtype=np.float32)
    masks: Dict[str, np.ndarray] = {}
    if findings:
        chest = _chest(volume)
        if "edema" in findings:
            noise = np.random.default_rng([int(seed), _SALT, 1]).random(volume.shape)
            sigma = 12.0 / np.asarray(volume.spacing, float)               # ~12 mm patches
            noise = ndimage.gaussian_filter(noise, sigma)
            noise = (noise - noise.min()) / max(float(np.ptp(noise)), 1e-9)
            masks["edema"] = _edema(hu, chest, findings["edema"], noise)
        if "consolidation" in findings:
            masks["consolidation"] = _consolidation(hu, chest, findings["consolidation"])
        if "pleural_effusion" in findings:
            masks["pleural_effusion"] = _effusion(hu, chest, findings["pleural_effusion"])
    labels = {name: float(findings[name].severity) if name in findings else 0.0
              for name in CT_FINDINGS}
    meta = dict(volume.metadata, ct_findings={k: v.side for k, v in findings.items()})
    return Volume(hu, volume.affine.copy(), meta), masks, labels


def draw_into_ct(volume: Volume, seed: int, prevalence: float = 0.3,
                 findings: Optional[Mapping[str, CTFinding]] = None):
    """:func:`draw_ct_findings` then :func:`render_ct_findings`, one seed for both."""
    chosen = draw_ct_findings(seed, prevalence) if findings is None else findings
    return render_ct_findings(volume, chosen, seed)


__all__ = ["CT_FINDINGS", "CTFinding", "draw_ct_findings", "render_ct_findings", "draw_into_ct"]

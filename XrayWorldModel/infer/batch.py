"""``xray2xray infer FOLDER --out DIR``: every radiograph in a folder through one loaded model.

Why a batch mode: a reader study or an audit has hundreds of radiographs, and a fresh
``infer`` per file pays for starting Python, importing torch and loading the model each time.
Here the model loads once, before any file, so a bad model fails the batch at once. A file
that is refused (unreadable, not a radiograph, a lateral view) does not stop the batch: its
reason goes to ``summary.csv``. A radiograph whose ``results.json`` is already in its output
folder, made from the same file (SHA256), is kept, so an interrupted batch resumes where it
stopped.

``summary.csv`` lists the consistency and the trust verdict of each file, not its scores:
the scores come from a demonstration model and belong next to the trust verdict and the
model card in each ``results.json``, not in a table that travels without them.
"""
from __future__ import annotations

import csv
import json
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..console import EXIT_INPUT_ERROR, PROG, emit, emit_error, progress_bar, show_progress
from ..errors import EmptyFolderError, InputError, NotARadiographError
from ..fileutil import atomic_path, check_output_folder, sha256_file
from ..io.ct import looks_like_dicom
from ..io.cxr import screen_dicom_radiograph

#: File endings taken as radiographs (besides DICOM files without one, found by content).
RADIOGRAPH_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg")
SUMMARY = "summary.csv"
SUMMARY_COLUMNS = ("file", "status", "output", "consistency", "in_distribution", "ood_score",
                   "reason")


def radiograph_files(folder: Path) -> List[Path]:
    """The folder's radiographs in name order: files with an image ending, or DICOM by
    content; subfolders, hidden files and other files (notes, CSVs) are not looked at."""
    files = [p for p in sorted(folder.iterdir())
             if p.is_file() and not p.name.startswith(".") and _may_be_radiograph(p)]
    if not files:
        raise EmptyFolderError("holds no radiograph files (DICOM, PNG or JPEG)", folder)
    return files


def _may_be_radiograph(path: Path) -> bool:
    try:
        return path.suffix.lower() in RADIOGRAPH_SUFFIXES or looks_like_dicom(path)
    except InputError:      # unreadable: listed, so that summary.csv says why it was refused
        return True


def screened_out(files: Sequence[Path]) -> Dict[Path, str]:
    """Why each file refused from its header alone (a CT slice, an MR image) was, so that a
    folder of CT slices is refused before the model loads."""
    refused = {}
    for path in files:
        try:
            screen_dicom_radiograph(path)
        except InputError as exc:
            refused[path] = str(exc)
    return refused


def output_names(files: Sequence[Path]) -> Dict[Path, str]:
    """Each file's output folder: its name without the ending, or with the ending as
    ``_png`` where two files share a stem (``a.png`` and ``a.dcm``)."""
    stems = Counter(p.stem for p in files)
    return {p: p.stem if stems[p.stem] == 1 else p.name.replace(".", "_") for p in files}


def finished_results(folder: Path, sha256: str) -> Optional[Dict]:
    """The ``results.json`` in ``folder`` if an earlier run wrote it from this very file."""
    try:
        data = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("input", {}).get("sha256") == sha256 else None


def summary_row(path: Path, folder: str, status: str, data: Optional[Dict],
                reason: str = "") -> Dict:
    """One line of ``summary.csv``; the reason of a file kept out of the scores is the
    trust verdict's."""
    row = {"file": path.name, "status": status, "output": folder, "reason": reason}
    if data is not None:
        trust = data["trust"]
        ood = trust.get("ood_score")
        row.update(consistency=f"{data['consistency']['ncc']:.3f}",
                   in_distribution=str(bool(trust["in_distribution"])).lower(),
                   ood_score="" if ood is None else f"{ood:.1f}",
                   reason="" if trust["in_distribution"] else "; ".join(trust["reasons"]))
    return row


def write_summary(path: Path, rows: Sequence[Dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, SUMMARY_COLUMNS, restval="")
            writer.writeheader()
            writer.writerows(rows)


def run_batch(folder: Path, args, infer_file) -> int:
    """Every radiograph of ``folder`` through ``infer_file(path, out, args, model)`` (the
    single-file ``infer``, returning (result, results dict)), into one output folder each;
    2 when any was refused."""
    if args.json:
        raise InputError("--json prints one radiograph's results; for a folder they are in "
                         "each output folder's results.json and in summary.csv")
    out = check_output_folder(args.out, "--out", "one output folder per radiograph and "
                              + SUMMARY)
    files = radiograph_files(folder)
    refused = screened_out(files)
    if len(refused) == len(files):
        raise NotARadiographError(f"is a folder with no radiograph in it: its {len(files)} "
                                  f"files are refused before any model loads (first: "
                                  f"{next(iter(refused.values()))})", folder)
    from .pipeline import load_inference_model
    model = load_inference_model(args.model, args.device)
    names, rows, t0 = output_names(files), [], time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    for path in progress_bar(files, show_progress(), desc="radiographs", unit="file"):
        reason = refused.get(path)
        if reason is None:
            dest = out / names[path]
            data, status = finished_results(dest, sha256_file(path)), "kept"
            if data is None:
                try:
                    data, status = infer_file(path, dest, args, model)[1], "done"
                except InputError as exc:   # this file only: the batch goes on
                    reason = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
        if reason is None:
            rows.append(summary_row(path, names[path], status, data))
        else:
            emit(f"{PROG}: refused: {reason}")
            rows.append(summary_row(path, "", "refused", None, reason))
        write_summary(out / SUMMARY, rows)     # after each file: readable while it runs
    counts = Counter(r["status"] for r in rows)
    print(f"{counts['done']} done, {counts['kept']} kept from an earlier run, "
          f"{counts['refused']} refused, of {len(files)} radiographs in {folder} "
          f"({time.perf_counter() - t0:.1f} s); summary: {out / SUMMARY}")
    if counts["refused"]:
        emit_error(f"{counts['refused']} of {len(files)} radiographs refused; the reasons "
                   f"are in {out / SUMMARY}")
        return EXIT_INPUT_ERROR
    return 0

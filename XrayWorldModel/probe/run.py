"""A probe from end to end: labels CSV -> matched CTs -> features -> cross-validated
metrics and final heads -> JSON (and optionally a model file whose card carries them);
:func:`probe_task` runs it all, as ``xray2xray probe`` does.

Labels are a CSV keyed by an ``id`` column that matches the CT item ids of the data source
(``phantom-00000`` for ``phantom:N``, the file name without its suffix for a folder, the
``id`` column, else the file stem, for a manifest). A manifest CSV can be its own labels
file. Empty cells are missing labels: those CTs are left out of that label only.
"""
from __future__ import annotations

import datetime
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..data import resolve_source
from ..errors import InputError
from ..fileutil import atomic_path, sha256_of
from ..weights.loading import export_checkpoint, load_world_model
from ..weights.model_file import ModelFileError, load_model_file, read_card, save_model_file
from ..weights.registry import resolve_model
from . import PATHOLOGIES, RISK_LABELS
from .evaluate import cv_cox, cv_logistic
from .acquisition import (DEFAULT_VIEWS, acquisition_summary, render_acquired_views,
                          render_display_views)
from .features import DEFAULT_IMAGINED, extract_features, feature_spec, render_frontal_views
from .heldout import first_views, heldout_report, write_diagrams
from .heads import average_logistic, check_binary, fit_cox, task_entry
from .calibration import calibrate_labels
from .metrics import ProbeError, c_index_ci, multilabel_auroc_ci, shared_clusters
from .ood import fit_reference
from .datasets import read_csv, rows_by_id

TASKS = ("pathology", "risk")
TIME_COLUMN, EVENT_COLUMN = "time", "event"


class LabelsError(ProbeError):
    """A labels CSV that does not fit the probe (missing columns, ids, classes)."""


@dataclass
class LabelTable:
    """Label columns by CT id, as floats (NaN = missing)."""

    rows: Dict[str, Dict[str, str]]
    columns: List[str]
    path: Optional[Path] = None

    def values(self, ids: Sequence[str], column: str) -> np.ndarray:
        out = np.full(len(ids), np.nan)
        for k, i in enumerate(ids):
            raw = (self.rows[i].get(column) or "").strip()
            if raw == "":
                continue
            try:
                out[k] = float(raw)
            except ValueError:
                raise LabelsError(f"column {column!r}, id {i!r}: {raw!r} is not a number",
                                  self.path) from None
        return out


def read_labels_csv(path, id_column: str = "id") -> LabelTable:
    """The labels CSV at ``path`` (needs a header with ``id_column``; ids unique)."""
    path = Path(path).expanduser()
    header, rows = read_csv(path, LabelsError, "labels CSV")
    if id_column not in header:
        raise LabelsError(f"labels CSV has no {id_column!r} column (columns: "
                          f"{', '.join(header) or 'none'})", path)
    table = rows_by_id(rows, id_column, path, LabelsError)
    if not table:
        raise LabelsError("labels CSV has a header but no rows", path)
    return LabelTable(table, [c for c in header if c != id_column], path)


def table_from_items(items) -> LabelTable:
    """The labels carried by the CT items themselves (a manifest's extra columns)."""
    rows, columns = {}, []
    for it in items:
        rows[it.id] = {k: repr(float(v)) for k, v in it.labels.items()}
        columns += [k for k in it.labels if k not in columns]
    if not columns:
        raise LabelsError("no --labels CSV given and the data source carries no label columns")
    return LabelTable(rows, columns, None)


def parse_columns(spec: Union[str, Sequence[str], None], default: Sequence[str]
                  ) -> List[Tuple[str, str]]:
    """``"a,b"`` or ``["name=column", ...]`` -> [(label name, CSV column)]; ``none`` -> []."""
    if spec is None:
        tokens = list(default)
    else:
        parts = [spec] if isinstance(spec, str) else list(spec)
        tokens = [t.strip() for p in parts for t in str(p).split(",") if t.strip()]
    if [t.lower() for t in tokens] == ["none"]:
        return []
    out = []
    for t in tokens:
        name, _, column = t.partition("=")
        name, column = name.strip(), (column.strip() if _ else name.strip())
        if not name or not column:
            raise InputError(f"--labels-columns: bad entry {t!r} (use COLUMN or NAME=COLUMN)")
        out.append((name, column))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise InputError(f"--labels-columns: a label name appears twice ({', '.join(names)})")
    return out


@dataclass
class Targets:
    """What a task is fitted to, aligned with ``ids``."""

    task: str
    ids: List[str]
    labels: List[str] = field(default_factory=list)      # binary label names
    Y: Optional[np.ndarray] = None                        # [N, L], NaN = missing
    time: Optional[np.ndarray] = None                     # Cox, rows with both known
    event: Optional[np.ndarray] = None
    survival_rows: Optional[np.ndarray] = None

    @property
    def columns_used(self) -> List[str]:
        return self.labels + (["time", "event"] if self.time is not None else [])


def build_targets(task: str, table: LabelTable, ids: Sequence[str],
                  columns: Sequence[Tuple[str, str]], time_column: Optional[str] = TIME_COLUMN,
                  event_column: str = EVENT_COLUMN) -> Targets:
    """Check the table has every needed column, both classes for each binary label, and
    enough events; returns the targets of the CTs ``ids`` (all present in the table)."""
    if task not in TASKS:
        raise InputError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    where = table.path
    need = [c for _, c in columns]
    if time_column:
        need += [time_column, event_column]
    missing = [c for c in dict.fromkeys(need) if c not in table.columns]
    if missing:
        raise LabelsError(f"labels CSV lacks column{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(map(repr, missing))} (has: {', '.join(table.columns)}); "
                          "choose columns with --labels-columns"
                          + (" / --time-column / --event-column" if task == "risk" else ""),
                          where)
    if not columns and not time_column:
        raise InputError(f"task {task}: no label columns to fit")
    t = Targets(task, list(ids), [n for n, _ in columns])
    if columns:
        t.Y = np.stack([table.values(ids, c) for _, c in columns], axis=1)
        for j, (name, column) in enumerate(columns):
            y = t.Y[~np.isnan(t.Y[:, j]), j]
            if y.size == 0:
                raise LabelsError(f"column {column!r} has no value for any of the "
                                  f"{len(ids)} matched CTs", where)
            try:
                check_binary(y, name)
            except ProbeError as exc:
                raise LabelsError(f"column {column!r}: {exc.reason}", where) from None
    if time_column:
        time = table.values(ids, time_column)
        event = table.values(ids, event_column)
        keep = np.flatnonzero(~np.isnan(time) & ~np.isnan(event))
        if np.any(time[keep] < 0) or not np.all(np.isin(event[keep], (0.0, 1.0))):
            raise LabelsError(f"column {time_column!r} must be times >= 0 and "
                              f"{event_column!r} 0 (censored) or 1 (event)", where)
        if event[keep].sum() < 2:
            raise LabelsError(f"column {event_column!r}: a Cox head needs at least 2 events "
                              f"among the matched CTs, got {int(event[keep].sum())}", where)
        t.time, t.event, t.survival_rows = time[keep], event[keep].astype(bool), keep
    return t


def match_ids(item_ids: Sequence[str], table: LabelTable) -> List[str]:
    """The item ids that have a row in the labels table; an error when none do."""
    matched = [i for i in item_ids if i in table.rows]
    if not matched:
        ex_items = ", ".join(repr(i) for i in list(item_ids)[:3])
        ex_rows = ", ".join(repr(i) for i in list(table.rows)[:3])
        raise LabelsError(f"no CT id of the data source has a row in the labels CSV "
                          f"(CT ids: {ex_items}...; CSV ids: {ex_rows}...)", table.path)
    if len(matched) < len(item_ids):
        warnings.warn(f"{len(item_ids) - len(matched)} of {len(item_ids)} CTs have no row in "
                      "the labels CSV and are left out", UserWarning, stacklevel=2)
    return matched


def _fit_labels(X, targets: Targets, groups, folds, seed, n_boot, C, metrics, used,
                fold_groups):
    """Logistic heads with their Platt calibration (on out-of-fold logits), AUROC metrics on
    one view per CT, ECE before and after calibration. The head of each label is the mean
    of its K cross-validation heads (:func:`.heads.average_logistic`): the heads whose
    out-of-fold logits the calibration saw. ``fold_groups``: rows kept in one fold."""
    Y = targets.Y[groups]
    folds_heads: Dict[str, list] = {}
    oof = cv_logistic(X, Y, targets.labels, folds, seed, C, used, fold_groups, logits=True,
                      fold_heads=folds_heads)
    first = first_views(groups)
    metrics.update(multilabel_auroc_ci(targets.Y, oof[first], targets.labels, n_boot, seed,
                                       clusters=shared_clusters(fold_groups[first])))
    for name in targets.labels:
        metrics["labels"][name]["folds"] = used[name]
    cal = calibrate_labels(oof, Y, targets.labels, folds, seed, fold_groups)
    metrics["calibration"] = {
        name: {"ece_before": cal["ece_before"][j], "ece_after": cal["ece_after"][j],
               "reliability": cal["reliability"][name]}
        for j, name in enumerate(targets.labels)}
    head = average_logistic(folds_heads, targets.labels, X)
    head["calibration"] = {k: v for k, v in cal.items() if k != "reliability"}
    return head


def _fit_survival(X, targets: Targets, groups, folds, seed, n_boot, alpha, metrics, used,
                  fold_groups):
    """The Cox head on the views of the CTs with a time and an event; C-index on one view
    per CT. ``fold_groups``: rows kept in one fold."""
    n_ct = len(targets.ids)
    time, event = np.full(n_ct, np.nan), np.zeros(n_ct, dtype=bool)
    time[targets.survival_rows], event[targets.survival_rows] = targets.time, targets.event
    rows = np.flatnonzero(np.isin(groups, targets.survival_rows))
    g, fg = groups[rows], fold_groups[rows]
    oof = cv_cox(X[rows], time[g], event[g], folds, seed, alpha, used, fg)
    first = first_views(g)
    metrics["c_index"] = dict(c_index_ci(time[g][first], event[g][first], oof[first], n_boot,
                                         seed, clusters=shared_clusters(fg[first])),
                              folds=used["c_index"])
    return fit_cox(X[rows], time[g], event[g], alpha=alpha, seed=seed, groups=fg)


def fit_task(features: np.ndarray, targets: Targets, feature_spec: Mapping[str, Any],
             folds: int = 5, seed: int = 0, n_boot: int = 1000, C="auto", alpha="auto",
             trained_on: Optional[Mapping[str, Any]] = None,
             groups: Optional[Sequence[int]] = None,
             patients: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """Cross-validated metrics and the final heads: a task entry. A logistic label's head is
    the mean of its K cross-validation heads, calibrated on their out-of-fold logits; the
    Cox head is fitted on all cases.

    ``features`` has one row per view; ``groups`` gives each row's CT (an index into
    ``targets.ids``; default one view per CT). Folds keep a CT's views together, metrics use
    each CT's first view, and logistic heads carry a Platt calibration fitted on their
    out-of-fold logits (:mod:`.calibration`). ``patients`` (one id per row, e.g. the
    patient of each radiograph) keeps those rows in one fold instead of a CT's views."""
    X = np.asarray(features, dtype=np.float64)
    groups = np.arange(X.shape[0]) if groups is None else np.asarray(groups, dtype=np.int64)
    fold_groups = groups if patients is None else np.asarray(patients, dtype=np.int64)
    heads, used = [], {}
    metrics = {"n": len(targets.ids), "n_views": int(X.shape[0]), "folds": int(folds),
               "seed": int(seed), "n_boot": int(n_boot), "cross_validated": True}
    if targets.labels:
        heads.append(_fit_labels(X, targets, groups, folds, seed, n_boot, C, metrics, used,
                                 fold_groups))
    if targets.time is not None:
        heads.append(_fit_survival(X, targets, groups, folds, seed, n_boot, alpha, metrics,
                                   used, fold_groups))
    info = {"n": len(targets.ids), "date": datetime.date.today().isoformat(),
            **dict(trained_on or {})}
    return task_entry(targets.task, heads, feature_spec, metrics, info)


def save_heads_into(model_spec, out_path, entries: Mapping[str, Mapping[str, Any]],
                    card_updates: Optional[Mapping[str, Any]] = None) -> Path:
    """Write a new model file: the model of ``model_spec`` (model file or training
    checkpoint) with ``entries`` merged into its card's ``heads`` (tasks not in ``entries``
    keep their existing heads) and ``card_updates`` (e.g. the OOD reference, ``ood``)
    replacing those card fields."""
    updates = dict(card_updates or {})
    path = resolve_model(model_spec)
    is_model_file = False
    if path.is_file() and path.suffix == ".safetensors":
        try:
            read_card(path)
            is_model_file = True
        except ModelFileError:
            pass
    if not is_model_file:
        return export_checkpoint(path, out_path,
                                 {"heads": {k: dict(v) for k, v in entries.items()}, **updates})
    tensors, card = load_model_file(path)
    old = card.get("heads") if isinstance(card.get("heads"), Mapping) else {}
    card["heads"] = {**old, **{k: dict(v) for k, v in entries.items()}}
    card.update(updates)
    return save_model_file(out_path, tensors, card)


def _model_id(card: Mapping[str, Any]) -> Dict[str, Any]:
    return {"name": card.get("name", card.get("model")), "version": card.get("version"),
            "sha256": card.get("content_sha256", card.get("sha256"))}


def _trained_on(data: str, labels, columns, time_column, event_column, model_id) -> Dict:
    info = {"data": data, "labels": str(Path(labels).resolve()) if labels else "data source",
            "columns": dict(columns), "model": model_id}
    if time_column:
        info.update(time_column=time_column, event_column=event_column)
    if labels:
        info["labels_sha256"] = sha256_of(Path(labels))
    return info


def _write_entry(entry: Mapping[str, Any], out) -> str:
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        Path(tmp).write_text(json.dumps(entry, indent=1))
    return str(out)


def _view_features(world_model, card, items, views: int, seed: int, angle: float,
                   imagined, device, progress, presentation: str = "line-integrals"
                   ) -> Tuple[np.ndarray, List[str], np.ndarray]:
    """(features [N_views, F], ids of the CTs read, the CT of each row): ``views``
    acquisitions per CT (:mod:`.acquisition`), or the one clean view when ``views`` is 0
    (as line integrals, or as a display image through the inference preprocessing)."""
    if views > 0:
        if angle != 0.0:
            raise InputError("--views N renders frontal acquisitions; use --views 0 for "
                             "another --angle")
        images, got, groups = render_acquired_views(items, card, views, seed, device=device,
                                                    progress=progress)
    elif presentation == "display":
        if angle != 0.0:
            raise InputError("--presentation display renders the frontal view; leave --angle 0")
        images, got = render_display_views(items, card, device=device, progress=progress)
        groups = np.arange(len(got))
    else:
        images, got = render_frontal_views(items, card, angle, device=device, progress=progress)
        groups = np.arange(len(got))
    if not got:
        raise InputError("none of the CTs could be read")
    return extract_features(world_model, images, angle, imagined, progress=progress), got, groups


def _heldout_labels(items, table: Optional[LabelTable], ids, columns):
    """[N, L] labels of held-out CTs from their manifest's columns, else from ``table``;
    None when neither has them all."""
    for source in (lambda: table_from_items(items), lambda: table):
        try:
            t = source()
            if t is not None and all(i in t.rows for i in ids) and \
                    all(c in t.columns for _, c in columns):
                return np.stack([t.values(ids, c) for _, c in columns], axis=1)
        except LabelsError:
            continue
    return None


def _trust_fields(ctx: Dict[str, Any], entry, features, groups, spec, got, heldout, columns):
    """The OOD reference (threshold from ``heldout`` when given) and the held-out report."""
    ood = fit_reference(features, feature_spec=spec,
                        fitted_on={"data": ctx["data"], "n": len(got), "n_views": len(groups)})
    if not heldout:
        return ood, None
    items = resolve_source(heldout)
    hf, hids, hg = _view_features(ctx["model"], ctx["card"], items, ctx["views"],
                                  ctx["seed"] + 1, ctx["angle"], ctx["imagined"],
                                  ctx["device"], ctx["progress"], ctx["presentation"])
    keep = [it for it in items if it.id in set(hids)]
    Y = _heldout_labels(keep, ctx["table"], hids, columns) if columns else None
    return heldout_report(entry, ood, hf, hg, heldout, Y, [n for n, _ in columns])


def probe_task(data: str, task: str, model=None, labels=None,
               columns: Optional[Sequence[Tuple[str, str]]] = None, id_column: str = "id",
               time_column: Optional[str] = TIME_COLUMN, event_column: str = EVENT_COLUMN,
               folds: int = 5, imagined: Sequence[float] = DEFAULT_IMAGINED, angle: float = 0.0,
               C="auto", alpha="auto", n_boot: int = 1000, seed: int = 0, out=None,
               save_into=None, device="cpu", progress: bool = False,
               views: int = DEFAULT_VIEWS, heldout: Optional[str] = None,
               diagrams=None, presentation: str = "line-integrals") -> Dict[str, Any]:
    """Fit and cross-validate the heads of ``task`` (pathology or risk) for ``model`` on the
    labelled CTs of ``data``, each seen through ``views`` random acquisitions
    (:mod:`.acquisition`; 0: one clean view); calibrate the logistic heads (Platt, on
    out-of-fold logits) and fit the OOD reference (:mod:`.ood`) on the same features, its
    threshold from the ``heldout`` CTs (a data source never used for fitting; labelled ones
    also get held-out AUROC and ECE). Writes the task entry to ``out`` (JSON), a model file
    carrying the heads and the reference to ``save_into``, and reliability diagrams to
    ``diagrams`` (a folder; default: beside ``out`` or ``save_into``). ``columns``: (label
    name, CSV column) pairs, default the task's (:func:`parse_columns`); ``time_column``
    (risk only, None: no Cox head). ``presentation`` (with ``views`` 0): the clean view as
    ``line-integrals`` or as a ``display`` image through the inference preprocessing
    (:func:`.acquisition.display_view`). Returns the summary ``xray2xray probe`` prints."""
    columns = parse_columns(None, RISK_LABELS if task == "risk" else PATHOLOGIES) \
        if columns is None else list(columns)
    time_col = time_column if task == "risk" else None
    # labels first: a bad CSV fails in a second, before any model is loaded or CT rendered
    items = resolve_source(data)
    table = read_labels_csv(labels, id_column) if labels else table_from_items(items)
    ids = match_ids([it.id for it in items], table)
    build_targets(task, table, ids, columns, time_col, event_column)

    world_model, card = load_world_model(model, device)
    keep = set(ids)
    features, got, groups = _view_features(world_model, card, [it for it in items if it.id in keep],
                                           views, seed, angle, imagined, device, progress,
                                           presentation)
    targets = build_targets(task, table, got, columns, time_col, event_column)
    spec = dict(feature_spec(world_model, angle, imagined),
                acquisition=acquisition_summary(views, seed, presentation))
    model_id = _model_id(card)
    trained_on = _trained_on(data, labels, columns, time_col, event_column, model_id)
    entry = fit_task(features, targets, spec, folds, seed, n_boot, C, alpha, trained_on, groups)
    ctx = {"data": data, "model": world_model, "card": card, "views": views, "seed": seed,
           "angle": angle, "imagined": imagined, "device": device, "progress": progress,
           "table": table, "presentation": presentation}
    ood, report = _trust_fields(ctx, entry, features, groups, spec, got, heldout, columns)
    written = _write_all(entry, ood, report, task, model, out, save_into, diagrams)
    return _summary(task, model_id, data, trained_on, got, spec, entry, ood, report, written)


def _write_all(entry, ood, report, task, model, out, save_into, diagrams) -> Dict[str, Any]:
    written: Dict[str, Any] = {}
    if out:
        written["out"] = _write_entry(entry, out)
    if save_into:
        written["saved_into"] = str(save_heads_into(model, Path(save_into).expanduser(),
                                                    {task: entry}, {"ood": ood}))
    folder = diagrams or (Path(out).expanduser().parent if out else
                          Path(save_into).expanduser().parent if save_into else None)
    if folder is not None:
        cv = {k: v["reliability"] for k, v in entry["metrics"].get("calibration", {}).items()}
        written["diagrams"] = write_diagrams(folder, task, cv, (report or {}).get("labels"))
    return written


def _summary(task, model_id, data, trained_on, got, spec, entry, ood, report, written):
    """What ``xray2xray probe`` prints: metrics, the ECE table, the OOD reference."""
    metrics = dict(entry["metrics"])
    calibration = {k: {"ece_before": v["ece_before"], "ece_after": v["ece_after"]}
                   for k, v in metrics.pop("calibration", {}).items()}
    ood_info = {k: ood[k] for k in ("method", "n", "n_features", "shrinkage",
                                    "explained_fraction") if k in ood}
    ood_info["components"] = len(ood["variances"])
    ood_info["threshold"] = ood.get("threshold")
    if report and "labels" in report:
        maps = sorted({h["calibration"].get("method", "platt") for h in entry["heads"]
                       if "calibration" in h})
        report = dict(report, calibration=f"{' and '.join(maps)} map refitted on these CTs; "
                                          "ECE after: cross-fitted by CT",
                      labels={k: {m: v[m] for m in ("n", "auroc", "ece_before", "ece_after")}
                              for k, v in report["labels"].items()})
    return {"task": task, "model": model_id, "data": data, "labels": trained_on["labels"],
            "n": len(got), "features": spec, "metrics": metrics,
            "calibration": {"method": "platt on out-of-fold logits; ECE after: cross-fitted",
                            "labels": calibration},
            "ood": ood_info, "heldout": report,
            "heads": [{"kind": h["kind"], **({"labels": h["labels"]} if h["kind"] == "logistic"
                                              else {"name": h["name"]})}
                      for h in entry["heads"]], **written}

"""``xray2xray probe`` on radiograph datasets (issue 17): NIH ChestX-ray14, CheXpert and
MIMIC-CXR-JPG label files, manifests and folders; features through the inference path,
cached and resumable, sharded; patient-level folds; a test split; bad input.

Radiographs here are real files written by the project's own commands: synthetic chests
from ``xray2xray phantom --cohort``, their frontal DRRs from ``xray2xray drr --png --dicom``
at the model's own detector. The tiny model keeps the default suite fast; the acceptance
comparison with the CT path runs on the built-in model (slow)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import sigint_as_in_a_terminal
from test_probe import tiny_model_file
from XrayWorldModel.cli import main
from XrayWorldModel.probe import PATHOLOGIES

REPO = Path(__file__).resolve().parents[1]
NIH = {"atelectasis": "Atelectasis", "cardiomegaly": "Cardiomegaly",
       "consolidation": "Consolidation", "edema": "Edema", "pleural_effusion": "Effusion"}
CHEXPERT = dict(NIH, pleural_effusion="Pleural Effusion")
NIH_HEADER = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
              "Patient Gender", "View Position", "OriginalImage[Width", "Height]",
              "OriginalImagePixelSpacing[x", "y]", ""]
CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding",
                   "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                   "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
                   "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]


def _write_csv(path, header, rows):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(result, message):
    code, out, err = result
    lines = err.strip().splitlines()
    assert code == 2 and out == "", (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("xray2xray: error: ") and \
        message in lines[0], err


def _cohort(root: Path, n: int, size: int, spacing: float, pixels: int, pitch: float):
    """``phantom --cohort`` CTs on exactly the model's preprocessing cube (``size``^3 voxels
    of ``spacing`` mm), and their frontal DRRs from ``drr --png --dicom`` at the model's own
    detector (``pixels`` of ``pitch`` mm). Returns (case ids, the cohort's label rows)."""
    assert main(["phantom", "--cohort", str(n), "--out", str(root / "ct"), "--shape", str(size),
                 "--spacing", str(spacing), "--quiet"]) == 0
    cts = sorted(str(p) for p in (root / "ct").glob("cohort-*.nii.gz"))
    assert main(["drr", *cts, "--angles", "0", "--detector", str(pixels), str(pixels),
                 "--pixel-spacing", str(pitch), "--png", "--dicom", "--out", str(root / "drr"),
                 "--quiet", "--device", "cpu"]) == 0
    ids = [Path(c).name[: -len(".nii.gz")] for c in cts]
    with open(root / "ct" / "labels.csv", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    return ids, rows


def _png(drr: Path, case: str) -> Path:
    return drr / f"{case}_png" / f"{case}_000_angle0000.0.png"


def _dcm(drr: Path, case: str) -> Path:
    return drr / f"{case}_dicom" / f"{case}_000_angle0000.0.dcm"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model file; 12 cohort chests on its 32^3 x 11 mm cube and their DRRs (PNG,
    DICOM) at its 32-pixel, 15 mm detector; balanced labels of our own."""
    from XrayWorldModel.config import TrainConfig
    from XrayWorldModel.weights.model_file import read_card
    root = tmp_path_factory.mktemp("probe-radiographs")
    path = tiny_model_file(root / "tiny.safetensors")
    cfg = read_card(path)["config"]
    pitch = TrainConfig.from_dict(cfg).views.pixel_spacing
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XRAY2XRAY_CACHE", str(root / "cache"))
        mp.setenv("XRAY2XRAY_MODELS", str(root / "models"))
        ids, cohort = _cohort(root, 12, 32, 11.0, 32, pitch)
        rng = np.random.default_rng(0)
        labels = {i: {} for i in ids}
        for name in PATHOLOGIES:                     # balanced 0/1 per label, shuffled
            for i, v in zip(ids, rng.permutation([0, 1] * 6)):
                labels[i][name] = int(v)
        yield {"root": root, "model": path, "ids": ids, "drr": root / "drr", "pitch": pitch,
               "labels": labels, "cohort": cohort, "config": cfg}


def _nih(folder: Path, images, pitch: float, width: int = 32):
    """An NIH Data_Entry CSV for ``images`` [(source file, image name, our labels, patient,
    view)], the PNGs copied into ``folder/images``."""
    rows = []
    for src, name, labels, patient, view in images:
        (folder / "images").mkdir(parents=True, exist_ok=True)
        shutil.copy(src, folder / "images" / name)
        found = "|".join(NIH[k] for k, v in labels.items() if v == 1) or "No Finding"
        rows.append([name, found, 0, patient, 50, "F", view, width, width, pitch, pitch, ""])
    return _write_csv(folder / "Data_Entry_2017_v2020.csv", NIH_HEADER, rows)


def _variant_png(src: Path, dst: Path, k: int) -> Path:
    """A distinct image (other bytes) from a DRR PNG: a few pixels shifted by one grey level."""
    from PIL import Image
    a = np.array(Image.open(src)).astype(np.int16)
    a[k % a.shape[0], :: 3] = np.clip(a[k % a.shape[0], :: 3] + 1, 0, 255)
    dst.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a.astype(np.uint8)).save(dst)
    return dst


# ----------------------------------------------------------------------------- label files
def test_label_files_map_findings_views_patients_and_uncertain_labels(tmp_path):
    """Each published format read as published: the five findings through the one table,
    -1 by policy, blank as not mentioned, views filtered and counted, patients parsed."""
    from PIL import Image
    from XrayWorldModel.probe.datasets import read_dataset
    cols = [(n, n) for n in PATHOLOGIES]
    img = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (40, 1))

    def png(p):
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(p)
    # NIH: pipe-separated findings, "No Finding", PA/AP kept, a lateral skipped and counted
    for name in ("a.png", "b.png", "c.png", "d.png"):
        png(tmp_path / "nih" / "images_001" / "images" / name)
    nih = _write_csv(tmp_path / "nih" / "Data_Entry_2017.csv", NIH_HEADER, [
        ["a.png", "Cardiomegaly|Effusion|Mass", 0, 7, 60, "M", "PA", 2500, 2048, 0.168, 0.168, ""],
        ["b.png", "No Finding", 1, 7, 61, "M", "AP", 2500, 2048, 0.168, 0.168, ""],
        ["c.png", "Atelectasis|Edema", 0, 9, 40, "F", "PA", 3000, 2500, 0.139, 0.139, ""],
        ["d.png", "Consolidation", 0, 10, 40, "F", "LL", 3000, 2500, 0.139, 0.139, ""]])
    d = read_dataset(nih, cols)
    assert [r.id for r in d.records] == ["a.png", "b.png", "c.png"]
    assert d.skipped_views == {"lateral": 1}
    assert d.records[0].labels == {"atelectasis": 0, "cardiomegaly": 1, "consolidation": 0,
                                   "edema": 0, "pleural_effusion": 1}
    assert set(d.records[1].labels.values()) == {0.0}
    assert d.records[2].labels["atelectasis"] == 1 and d.records[2].labels["edema"] == 1
    assert [r.patient for r in d.records] == ["7", "7", "9"]
    assert d.records[0].width_mm == pytest.approx(2500 * 0.168)
    assert d.records[0].path == tmp_path / "nih" / "images_001" / "images" / "a.png"

    # CheXpert: 1 / 0 / -1 / blank, the three policies; patients from the path
    for rel in ("patient00001/study1/view1_frontal.jpg", "patient00001/study1/view2_lateral.jpg",
                "patient00002/study1/view1_frontal.jpg"):
        png(tmp_path / "CheXpert-v1.0-small" / "train" / rel)
    cells = {"Cardiomegaly": ["-1", "1", ""], "Edema": ["1", "0", "-1"],
             "Atelectasis": ["", "", "0"], "Consolidation": ["0", "0", "1"],
             "Pleural Effusion": ["-1", "", "-1"]}
    rows = []
    for k, (rel, view) in enumerate((("patient00001/study1/view1_frontal.jpg", "Frontal"),
                                     ("patient00001/study1/view2_lateral.jpg", "Lateral"),
                                     ("patient00002/study1/view1_frontal.jpg", "Frontal"))):
        row = {c: "" for c in CHEXPERT_HEADER}
        row.update({"Path": f"CheXpert-v1.0-small/train/{rel}", "Frontal/Lateral": view,
                    "AP/PA": "PA" if view == "Frontal" else ""})
        row.update({f: v[k] for f, v in cells.items()})
        rows.append([row[c] for c in CHEXPERT_HEADER])
    chex = _write_csv(tmp_path / "CheXpert-v1.0-small" / "train.csv", CHEXPERT_HEADER, rows)
    expect = {"zeros": (0.0, 0.0), "ones": (1.0, 1.0), "ignore": (np.nan, np.nan)}
    for policy, (u1, u2) in expect.items():
        d = read_dataset(chex, cols, uncertain=policy)
        a, b = d.records
        assert (a.id, b.id) == ("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg",
                                "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg")
        assert (a.patient, b.patient) == ("patient00001", "patient00002")
        np.testing.assert_equal([a.labels["cardiomegaly"], a.labels["pleural_effusion"],
                                 b.labels["edema"]], [u1, u1, u2])
        assert a.labels["atelectasis"] == 0 and b.labels["cardiomegaly"] == 0   # blank: 0
        assert a.labels["edema"] == 1 and b.labels["consolidation"] == 1
        assert d.uncertain == {"atelectasis": 0, "cardiomegaly": 1, "consolidation": 0,
                               "edema": 1, "pleural_effusion": 2}
        assert d.skipped_views == {"lateral": 1} and d.policy == policy

    # MIMIC-CXR-JPG: metadata + CheXpert-labeler CSV joined on subject and study
    mimic = tmp_path / "mimic"
    for sub, study, dicom in (("10000032", "50414267", "d1"), ("10000032", "50414267", "d2"),
                              ("10000764", "57375967", "d3"), ("10000898", "50771383", "d4")):
        png(mimic / "files" / f"p{sub[:2]}" / f"p{sub}" / f"s{study}" / f"{dicom}.jpg")
    meta = _write_csv(mimic / "mimic-cxr-2.0.0-metadata.csv",
                      ["dicom_id", "subject_id", "study_id", "ViewPosition"],
                      [["d1", "10000032", "50414267", "PA"],
                       ["d2", "10000032", "50414267", "LATERAL"],
                       ["d3", "10000764", "57375967", "AP"],
                       ["d4", "10000898", "50771383", "PA"]])
    lab = _write_csv(mimic / "mimic-cxr-2.0.0-chexpert.csv",
                     ["subject_id", "study_id"] + list(CHEXPERT_HEADER[5:]),
                     [["10000032", "50414267"] + ["1.0" if f == "Pleural Effusion" else ""
                                                  for f in CHEXPERT_HEADER[5:]],
                      ["10000764", "57375967"] + ["-1.0" if f == "Edema" else "0.0"
                                                  for f in CHEXPERT_HEADER[5:]]])
    d = read_dataset(meta, cols, labels=str(lab), uncertain="ones")
    assert [(r.id, r.patient) for r in d.records] == [("d1", "10000032"), ("d3", "10000764")]
    assert d.records[0].labels["pleural_effusion"] == 1 and d.records[0].labels["edema"] == 0
    assert d.records[1].labels["edema"] == 1 and d.uncertain["edema"] == 1
    assert d.skipped_views == {"lateral": 1} and "1 images of studies" in d.notes[0]


def test_patient_level_folds_never_split_a_patient(tmp_path):
    """Folds drawn as the probe draws them (per label, grouped by patient) keep every
    patient's images in one fold, whatever the labels of the images."""
    from PIL import Image
    from XrayWorldModel.probe.datasets import patient_groups, read_dataset
    from XrayWorldModel.probe.heads import grouped_folds
    rng = np.random.default_rng(3)
    rows, expected = [], {}
    (tmp_path / "images").mkdir()
    for patient in range(1, 41):
        for follow_up in range(int(rng.integers(1, 5))):
            name = f"{patient:08d}_{follow_up:03d}.png"
            Image.fromarray(np.full((8, 8), patient, np.uint8)).save(tmp_path / "images" / name)
            found = [NIH[k] for k in PATHOLOGIES if rng.random() < 0.4]
            rows.append([name, "|".join(found) or "No Finding", follow_up, patient, 50, "M",
                         "PA", 8, 8, 1.0, 1.0, ""])
            expected[name] = str(patient)
    data = read_dataset(_write_csv(tmp_path / "Data_Entry_2017.csv", NIH_HEADER, rows),
                        [(n, n) for n in PATHOLOGIES])
    groups = patient_groups(data.records)
    assert [r.patient for r in data.records] == [expected[r.id] for r in data.records]
    same = np.equal.outer([expected[r.id] for r in data.records],
                          [expected[r.id] for r in data.records])
    assert np.array_equal(same, np.equal.outer(groups, groups))     # a group = a patient
    for name in PATHOLOGIES:
        y = np.array([r.labels[name] for r in data.records], dtype=np.int64)
        folds = grouped_folds(y, 5, 0, groups)
        assert sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(len(y)))
        for tr, te in folds:
            assert not set(groups[tr]) & set(groups[te])


# ----------------------------------------------------------------------------- features
def test_features_are_the_inference_path_and_match_the_ct_path_for_dicom(tiny):
    """A DICOM written by ``drr --dicom`` at the model's detector gives the features of the
    same CT's view through the CT path (``--presentation display``) to float precision,
    and exactly what ``infer``'s heads would read for the file."""
    from XrayWorldModel.data import resolve_source
    from XrayWorldModel.infer.domain import radiograph_input
    from XrayWorldModel.io import read_cxr
    from XrayWorldModel.probe.acquisition import render_display_views
    from XrayWorldModel.probe.datasets import RadiographRecord
    from XrayWorldModel.probe.features import extract_features, extract_for_heads, feature_spec
    from XrayWorldModel.probe.radiograph_features import extract_dataset_features
    from XrayWorldModel.weights import load_world_model
    model, card = load_world_model(tiny["model"])
    spec = feature_spec(model, 0.0, [90.0])
    ids = tiny["ids"]
    dicoms = [RadiographRecord(i, _dcm(tiny["drr"], i)) for i in ids]
    pngs = [RadiographRecord(i, _png(tiny["drr"], i), spacing_mm=tiny["pitch"]) for i in ids]
    cache = tiny["root"] / "feature-cache-equal"
    fd = extract_dataset_features(dicoms, model, card, spec, cache, batch_size=5).features
    fp = extract_dataset_features(pngs, model, card, spec, cache, batch_size=5).features
    images, got = render_display_views(resolve_source(str(tiny["root"] / "ct" / "labels.csv")),
                                       card)
    assert got == ids
    fc = extract_features(model, images, 0.0, [90.0])
    scale = np.abs(fc).max()
    assert np.abs(fd - fc).max() < 2e-3 * scale                    # DICOM: uint16 rounding
    assert np.abs(fp - fc).max() < 5e-2 * scale                    # PNG: 8 bits
    assert np.abs(fp - fc).max() > np.abs(fd - fc).max()
    rad = read_cxr(_dcm(tiny["drr"], ids[3]), check=True)
    x = torch.from_numpy(radiograph_input(rad, card).image)[None, None]
    infer_feats = extract_for_heads(model, x, {"pathology": {"features": spec}})["pathology"]
    np.testing.assert_allclose(fd[3], infer_feats[0], rtol=1e-5, atol=1e-6)


def test_cache_resumes_and_counts(tiny):
    """A second extraction takes cached images from disk; only the missing ones are encoded,
    and a damaged cache file is encoded again."""
    from XrayWorldModel.probe.datasets import RadiographRecord
    from XrayWorldModel.probe.features import feature_spec
    from XrayWorldModel.probe.radiograph_features import extract_dataset_features, image_key
    from XrayWorldModel.weights import load_world_model
    model, card = load_world_model(tiny["model"])
    spec = feature_spec(model, 0.0, [90.0])
    records = [RadiographRecord(i, _dcm(tiny["drr"], i)) for i in tiny["ids"]]
    cache = tiny["root"] / "feature-cache-resume"
    first = extract_dataset_features(records[:5], model, card, spec, cache, batch_size=2)
    assert (first.encoded, first.from_cache) == (5, 0)
    files = sorted(p for p in cache.rglob("*.npy") if not p.name.startswith("."))
    assert len(files) == 5
    files[0].write_bytes(b"cut short")                  # a crash mid-write
    again = extract_dataset_features(records, model, card, spec, cache, batch_size=4)
    assert (again.encoded, again.from_cache) == (8, 4)
    assert again.counter() == "encoded 8, from cache 4, skipped 0 unreadable"
    damaged = next(k for k, r in enumerate(records[:5])
                   if files[0].stem.startswith(image_key(r.path)))
    for k in range(5):                  # cached: the same numbers; encoded again: to rounding
        check = np.testing.assert_allclose if k == damaged else np.testing.assert_array_equal
        check(again.features[k], first.features[k], **({"rtol": 1e-5} if k == damaged else {}))
    other = extract_dataset_features(records[:3], model, card, feature_spec(model, 0.0, [270.0]),
                                     cache)
    assert other.encoded == 3                           # other settings: other cache entries


def test_cache_is_not_reused_once_the_input_path_changes(tiny, monkeypatch):
    """Features cached before a change to what a file becomes as model input (the input
    path's version) are of another input: encoded again, not read back."""
    from XrayWorldModel.probe import radiograph_features as rf
    from XrayWorldModel.probe.datasets import RadiographRecord
    from XrayWorldModel.probe.features import feature_spec
    from XrayWorldModel.weights import load_world_model
    model, card = load_world_model(tiny["model"])
    spec = feature_spec(model, 0.0, [90.0])
    records = [RadiographRecord(i, _dcm(tiny["drr"], i)) for i in tiny["ids"][:2]]
    cache = tiny["root"] / "feature-cache-input-path"
    assert rf.extract_dataset_features(records, model, card, spec, cache).encoded == 2
    assert rf.extract_dataset_features(records, model, card, spec, cache).from_cache == 2
    monkeypatch.setattr(rf, "INPUT_PATH_VERSION", rf.INPUT_PATH_VERSION + 1)
    assert rf.extract_dataset_features(records, model, card, spec, cache).encoded == 2


def _nih_probe_set(tiny, folder: Path):
    """24 NIH-style images: each of the 12 DRR PNGs and a variant of it, one patient each."""
    images, rows = [], {}
    for k, case in enumerate(tiny["ids"]):
        src = _png(tiny["drr"], case)
        var = _variant_png(src, folder / "variants" / f"{case}.png", k)
        for j, s in enumerate((src, var)):
            name = f"{k + 1:08d}_{j:03d}.png"
            labels = tiny["labels"][case] if j == 0 else \
                {n: 1 - v for n, v in tiny["labels"][case].items()}
            images.append((s, name, labels, k + 1, "PA"))
            rows[name] = labels
    return _nih(folder, images, tiny["pitch"]), rows


def test_probe_nih_dataset_end_to_end(tiny, capsys):
    """NIH layout through ``xray2xray probe``: metrics, prevalence and counts, patient
    folds, a test split scored by the fitted heads, heads and an OOD reference saved into
    a model file; a second task on the same images encodes nothing."""
    from XrayWorldModel.weights import read_card
    folder = tiny["root"] / "nih-e2e"
    entry, rows = _nih_probe_set(tiny, folder)
    test_names = [f"{k:08d}_{j:03d}.png" for k in (11, 12) for j in (0, 1)]
    (folder / "test_list.txt").write_text("\n".join(test_names) + "\n")
    saved = folder / "probed.safetensors"
    code, out, err = _run(["probe", "--model", tiny["model"], "--data", entry, "--task",
                           "pathology", "--folds", "3", "--bootstrap", "20", "--C", "1",
                           "--workers", "0", "--batch-size", "7", "--test-csv",
                           folder / "test_list.txt", "--save-into", saved], capsys)
    assert code == 0, err
    res = json.loads(out)
    train = {n: v for n, v in rows.items() if n not in test_names}
    assert res["n"] == len(train) == 20 and res["dataset"]["format"] == "NIH ChestX-ray14"
    assert res["dataset"]["patients"] == 10 and res["metrics"]["folds_grouped_by"] == "patient"
    for name in PATHOLOGIES:
        pos = sum(v[name] for v in train.values())
        assert res["label_counts"][name] == {"n": 20, "positive": pos, "negative": 20 - pos,
                                             "missing": 0, "prevalence": pos / 20}
        assert 0 <= res["metrics"]["labels"][name]["auroc"] <= 1
    assert res["extraction"]["counter"] == "encoded 20, from cache 0, skipped 0 unreadable"
    assert res["lateral_skipped"] == 0
    test = res["test"]
    assert test["n"] == 4 and test["extraction"]["encoded"] == 4
    assert set(test["labels"]) == set(PATHOLOGIES) and 0 <= test["macro_auroc"]["auroc"] <= 1
    card = read_card(saved)
    assert card["heads"]["pathology"]["features"]["source"] == "radiographs"
    assert card["heads"]["pathology"]["trained_on"]["patients"] == 10
    assert card["ood"]["n"] == 20 and card["ood"]["threshold"] > 0
    assert "cross-fitted" in card["ood"]["heldout"]["source"]

    code, out, err = _run(["probe", "--model", saved, "--data", entry, "--task", "pathology",
                           "--labels-columns", "cardiomegaly,effusion=Effusion", "--folds", "3",
                           "--bootstrap", "0", "--C", "1", "--workers", "0"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["extraction"]["counter"] == "encoded 0, from cache 24, skipped 0 unreadable"
    assert set(res["metrics"]["labels"]) == {"cardiomegaly", "effusion"}


def test_shards_then_a_fit_from_the_cache(tiny, capsys):
    """``--shard I/N`` extracts and caches every Nth image and fits nothing; the run without
    a shard then encodes nothing, and takes its OOD threshold from ``--heldout`` images."""
    folder = tiny["root"] / "nih-shards"
    entry, _ = _nih_probe_set(tiny, folder)
    common = ["probe", "--model", tiny["model"], "--data", entry, "--task", "pathology",
              "--workers", "0", "--cache", folder / "cache", "--folds", "3", "--bootstrap", "0",
              "--C", "1"]
    counts = []
    for shard in ("0/3", "1/3", "2/3"):
        code, out, err = _run(common + ["--shard", shard], capsys)
        assert code == 0, err
        res = json.loads(out)
        assert res["shard"] == [int(shard[0]), 3] and "metrics" not in res
        counts.append(res["extraction"]["encoded"])
    assert counts == [8, 8, 8]
    held, _ = _nih_probe_set(tiny, tiny["root"] / "nih-heldout")     # same bytes: cached
    saved = folder / "with-threshold.safetensors"
    code, out, err = _run(common + ["--heldout", held, "--save-into", saved], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["extraction"]["counter"] == "encoded 0, from cache 24, skipped 0 unreadable"
    _one_line_error(_run(common + ["--shard", "3/3"], capsys), "--shard I/N needs 0 <= I < N")

    # the threshold is the 99th percentile of the held-out images' OOD scores (recomputed)
    from XrayWorldModel.probe.datasets import read_dataset
    from XrayWorldModel.probe.features import feature_spec
    from XrayWorldModel.probe.ood import scores
    from XrayWorldModel.probe.radiograph_features import extract_dataset_features
    from XrayWorldModel.weights import load_world_model, read_card
    model, card = load_world_model(tiny["model"])
    records = read_dataset(held, [(n, n) for n in PATHOLOGIES]).records
    feats = extract_dataset_features(records, model, card, feature_spec(model, 0.0, [90.0]),
                                     folder / "oracle-cache").features
    ood = read_card(saved)["ood"]
    assert ood["threshold"] == pytest.approx(np.quantile(scores(ood, feats), 0.99), rel=1e-5)
    assert res["heldout"]["n"] == 24 and set(res["heldout"]["labels"]) == set(PATHOLOGIES)


def test_corrupt_images_are_skipped_and_listed(tiny, capsys):
    """A folder with a truncated PNG, a text file named .png and a truncated DICOM: those
    three are listed with their reasons and the rest is probed."""
    folder = tiny["root"] / "folder-corrupt" / "images"
    folder.mkdir(parents=True)
    ids, rows = tiny["ids"], []
    for case in ids:
        shutil.copy(_dcm(tiny["drr"], case), folder / f"{case}.dcm")
        rows.append([case] + [tiny["labels"][case][n] for n in PATHOLOGIES])
    png = _png(tiny["drr"], ids[0]).read_bytes()
    (folder / "broken.png").write_bytes(png[: len(png) // 2])
    (folder / "notes.png").write_text("not an image")
    dcm = _dcm(tiny["drr"], ids[1]).read_bytes()
    (folder / "cut.dcm").write_bytes(dcm[: len(dcm) - 500])
    for name in ("broken", "notes", "cut"):
        rows.append([name] + [0] * 5)
    labels = _write_csv(folder.parent / "labels.csv", ["id"] + list(PATHOLOGIES), rows)
    code, out, err = _run(["probe", "--model", tiny["model"], "--data", folder, "--labels",
                           labels, "--task", "pathology", "--folds", "3", "--bootstrap", "0",
                           "--C", "1", "--workers", "1"], capsys)
    assert code == 0, err
    res = json.loads(out)
    ex = res["extraction"]
    assert res["n"] == 12 and ex["unreadable"] == 3
    assert sorted(f["id"] for f in ex["unreadable_files"]) == ["broken", "cut", "notes"]
    assert all(str(folder) in f["reason"] for f in ex["unreadable_files"])


def test_laterals_are_skipped_and_counted_or_probed_on_request(tiny, capsys):
    """A folder of frontal and lateral DICOMs (``drr --angles 0,90``; the view is in each
    header): the frontal probe skips and counts the laterals; ``--projection lateral``
    probes the laterals alone, seen at 90 degrees."""
    folder = tiny["root"] / "mixed"
    cts = sorted(str(p) for p in (tiny["root"] / "ct").glob("cohort-*.nii.gz"))
    assert main(["drr", *cts, "--angles", "0,90", "--detector", "32", "32", "--pixel-spacing",
                 str(tiny["pitch"]), "--dicom", "--out", str(folder), "--quiet",
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    rows = [[f"{c}_dicom/{c}_{k:03d}_angle{a:06.1f}"] + [tiny["labels"][c][n] for n in PATHOLOGIES]
            for c in tiny["ids"] for k, a in enumerate((0.0, 90.0))]
    labels = _write_csv(tiny["root"] / "mixed-labels.csv", ["id"] + list(PATHOLOGIES), rows)
    common = ["probe", "--model", tiny["model"], "--data", folder, "--labels", labels, "--task",
              "pathology", "--folds", "3", "--bootstrap", "0", "--C", "1", "--workers", "0"]
    code, out, err = _run(common, capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["n"] == 12 and res["lateral_skipped"] == 12 and res["features"]["angle"] == 0.0
    code, out, err = _run(common + ["--projection", "lateral"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["n"] == 12 and res["lateral_skipped"] == 0
    assert res["features"]["angle"] == 90.0 and res["features"]["projection"] == "lateral"
    assert res["extraction"]["skipped_views_in_files"] == {"frontal": 12}


def test_risk_probe_on_a_manifest_with_patients(tiny, capsys):
    """A manifest with patient ids and event / time columns: a logistic head on the event
    and a Cox head, folds by patient."""
    rng = np.random.default_rng(5)
    events = rng.permutation([0, 1] * 6)
    rows = [[c, _dcm(tiny["drr"], c), k // 2, int(e), round(float(rng.exponential(5)), 2)]
            for k, (c, e) in enumerate(zip(tiny["ids"], events))]
    manifest = _write_csv(tiny["root"] / "risk.csv", ["id", "path", "patient_id", "event",
                                                       "time"], rows)
    code, out, err = _run(["probe", "--model", tiny["model"], "--data", manifest, "--task",
                           "risk", "--folds", "3", "--bootstrap", "0", "--C", "1",
                           "--cox-alpha", "1", "--workers", "0"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert [h["kind"] for h in res["heads"]] == ["logistic", "cox"]
    assert res["dataset"]["patients"] == 6 and res["label_counts"]["event"]["positive"] == 6
    assert 0 <= res["metrics"]["c_index"]["c_index"] <= 1


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("case, message", [
    ("unknown-finding", "unknown finding name 'Cardiomegally' in 'Finding Labels'"),
    ("unknown-column", "unknown finding name 'Pneumothoraks' for NIH ChestX-ray14"),
    ("no-path-column", "a radiograph manifest needs a 'path' column"),
    ("missing-files", "the files its 'path' column names do not exist"),
    ("chexpert-missing-files", "the files its 'Path' column names do not exist"),
    ("no-frontal", "no PA/AP (frontal) images among its 12 images (12 lateral)"),
])
def test_bad_label_files_one_line(tiny, capsys, case, message):
    folder = tiny["root"] / f"bad-{case}"
    ids, extra = tiny["ids"], []
    if case.startswith("unknown"):
        entry = _nih(folder, [(_png(tiny["drr"], c), f"{k:08d}_000.png", tiny["labels"][c], k,
                               "PA") for k, c in enumerate(ids)], tiny["pitch"])
        if case == "unknown-finding":
            text = entry.read_text().replace("Cardiomegaly", "Cardiomegally", 1)
            entry.write_text(text)
        else:
            extra = ["--labels-columns", "pneumothorax=Pneumothoraks"]
    elif case in ("no-path-column", "missing-files"):
        header = ["file" if case == "no-path-column" else "path"] + list(PATHOLOGIES)
        entry = _write_csv(folder / "manifest.csv", header,
                           [[f"missing/{c}.png"] + [tiny["labels"][c][n] for n in PATHOLOGIES]
                            for c in ids])
    elif case == "chexpert-missing-files":
        entry = _write_csv(folder / "train.csv", ["Path", "Frontal/Lateral"] + list(CHEXPERT.values()),
                           [[f"CheXpert-v1.0-small/train/patient{k:05d}/study1/view1_frontal.jpg",
                             "Frontal"] + [1, 0, 1, 0, 1] for k in range(4)])
    else:                       # DICOMs whose header says LL: drr --angles 90
        ct = sorted((tiny["root"] / "ct").glob("cohort-*.nii.gz"))
        assert main(["drr", *map(str, ct), "--angles", "90", "--detector", "32", "32",
                     "--pixel-spacing", str(tiny["pitch"]), "--dicom", "--out",
                     str(folder / "lat"), "--quiet", "--device", "cpu"]) == 0
        capsys.readouterr()
        entry = _write_csv(folder / "manifest.csv", ["id", "path"] + list(PATHOLOGIES),
                           [[c, f"lat/{c}_dicom/{c}_000_angle0090.0.dcm"]
                            + [tiny["labels"][c][n] for n in PATHOLOGIES] for c in ids])
    _one_line_error(_run(["probe", "--model", tiny["model"], "--data", entry, "--task",
                          "pathology", "--workers", "0", "--source", "radiographs", *extra],
                         capsys), message)


# ----------------------------------------------------------------------------- acceptance
def _uncertain_variants(rows, ids, rng):
    """CheXpert cells for our labels: the truth with some positives and negatives made -1
    (uncertain) and some negatives left blank (not mentioned); and the truth each policy
    then gives, as a CT labels CSV would hold it."""
    cells, ones, zeros = {}, {}, {}
    for i in ids:
        cells[i], ones[i], zeros[i] = {}, {}, {}
        for n in PATHOLOGIES:
            v, r = int(rows[i][n]), rng.random()
            cell = "-1.0" if r < 0.15 else ("" if v == 0 and r < 0.4 else f"{v}.0")
            cells[i][n] = cell
            ones[i][n] = 1 if cell == "-1.0" else v
            zeros[i][n] = 0 if cell == "-1.0" else v
    return cells, ones, zeros


def _ct_probe(args, capsys, data, labels):
    code, out, err = _run(["probe", "--data", data, "--labels", labels, "--task", "pathology",
                           "--views", "0", "--presentation", "display", *args], capsys)
    assert code == 0, err
    return json.loads(out)


def _aurocs(res):
    return {k: v["auroc"] for k, v in res["metrics"]["labels"].items()}


@pytest.mark.slow
def test_same_answer_by_both_paths(tmp_path, capsys, monkeypatch):
    """Issue 17 acceptance, on the built-in model: a labelled cohort from ``phantom
    --cohort``, its frontal DRRs written as PNG and DICOM by ``drr`` at the model's own
    detector. ``probe`` on the radiograph files (a DICOM manifest; NIH-format labels over
    the PNGs; CheXpert-format labels with -1 under U-ones and U-zeros) gives per-label
    AUROC within 0.03 of ``probe`` on the same cases as CTs with the same labels.

    The same settings on both paths, with a fixed ridge (--C 0.01): on 60 cases the
    chance-level labels (consolidation) re-rank on any perturbation of the features when the
    fit is nearly unpenalised, so a weak penalty would measure the fit's instability rather
    than whether the two paths give the same features (at C = 1 the 8-bit PNG's AUROC moves
    by up to 0.06 on a chance label; the DICOM's does not move)."""
    from XrayWorldModel.config import TrainConfig
    from XrayWorldModel.weights import read_card
    from XrayWorldModel.weights.registry import resolve_model
    monkeypatch.setenv("XRAY2XRAY_CACHE", str(tmp_path / "cache"))
    n = 60
    cfg = TrainConfig.from_dict(read_card(resolve_model(None))["config"])
    ids, rows = _cohort(tmp_path, n, cfg.data.grid_size, cfg.data.grid_spacing,
                        cfg.views.image_size, cfg.views.pixel_spacing)
    capsys.readouterr()
    common = ["--folds", "5", "--bootstrap", "0", "--C", "0.01"]
    drr, ct_labels = tmp_path / "drr", tmp_path / "ct" / "labels.csv"

    truth = _ct_probe(common, capsys, ct_labels, ct_labels)
    manifest = _write_csv(drr / "dicoms.csv", ["id", "path"] + list(PATHOLOGIES),
                          [[i, _dcm(drr, i).relative_to(drr)] + [rows[i][p] for p in PATHOLOGIES]
                           for i in ids])
    nih = _nih(tmp_path / "nih", [(_png(drr, i), f"{k:08d}_000.png",
                                   {p: int(rows[i][p]) for p in PATHOLOGIES}, k, "PA")
                                  for k, i in enumerate(ids)], cfg.views.pixel_spacing,
               cfg.views.image_size)
    worst = {}
    for what, entry in (("dicom", manifest), ("nih png", nih)):
        code, out, err = _run(["probe", "--data", entry, "--task", "pathology", "--workers", "0",
                               *common], capsys)
        assert code == 0, err
        got, want = _aurocs(json.loads(out)), _aurocs(truth)
        worst[what] = max(abs(got[k] - want[k]) for k in PATHOLOGIES)
        assert worst[what] <= 0.03, (entry, got, want)

    cells, ones, zeros = _uncertain_variants(rows, ids, np.random.default_rng(17))
    chex_rows = []
    for k, i in enumerate(ids):
        rel = f"CheXpert-v1.0-small/train/patient{k + 1:05d}/study1/view1_frontal.png"
        (tmp_path / "chexpert" / rel).parent.mkdir(parents=True)
        shutil.copy(_png(drr, i), tmp_path / "chexpert" / rel)
        row = {c: "" for c in CHEXPERT_HEADER}
        row.update({"Path": rel, "Frontal/Lateral": "Frontal", "AP/PA": "PA"})
        row.update({CHEXPERT[p]: cells[i][p] for p in PATHOLOGIES})
        chex_rows.append([row[c] for c in CHEXPERT_HEADER])
    for k in range(3):                          # laterals: skipped and counted
        lat = dict(zip(CHEXPERT_HEADER, chex_rows[k]), **{"Frontal/Lateral": "Lateral"})
        lat["Path"] = lat["Path"].replace("view1_frontal", "view2_lateral")
        shutil.copy(_png(drr, ids[k]), tmp_path / "chexpert" / lat["Path"])
        chex_rows.append([lat[c] for c in CHEXPERT_HEADER])
    chex = _write_csv(tmp_path / "chexpert" / "CheXpert-v1.0-small" / "train.csv",
                      CHEXPERT_HEADER, chex_rows)
    for policy, values in (("ones", ones), ("zeros", zeros)):
        ct_csv = _write_csv(tmp_path / f"ct-{policy}.csv", ["id"] + list(PATHOLOGIES),
                            [[i] + [values[i][p] for p in PATHOLOGIES] for i in ids])
        want = _aurocs(_ct_probe(common, capsys, ct_labels, ct_csv))
        code, out, err = _run(["probe", "--data", chex, "--task", "pathology", "--uncertain",
                               policy, "--pixel-spacing", cfg.views.pixel_spacing,
                               "--workers", "0", *common], capsys)
        assert code == 0, err
        res = json.loads(out)
        got = _aurocs(res)
        worst[f"chexpert png u-{policy}"] = max(abs(got[k] - want[k]) for k in PATHOLOGIES)
        assert worst[f"chexpert png u-{policy}"] <= 0.03, (policy, got, want)
        assert res["lateral_skipped"] == 3
        if policy == "zeros":             # the second task on the same images: all cached
            assert res["extraction"]["counter"] == "encoded 0, from cache 60, skipped 0 unreadable"
        for p in PATHOLOGIES:
            assert res["label_counts"][p]["positive"] == sum(values[i][p] for i in ids)
            assert res["dataset"]["uncertain"][p] == sum(cells[i][p] == "-1.0" for i in ids)
    print("largest per-label AUROC difference from the CT path:",
          ", ".join(f"{k} {v:.3f}" for k, v in worst.items()))


def _wait_for(predicate, proc, timeout=120.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


@pytest.mark.slow
def test_killed_extraction_resumes_with_only_the_missing_images(tiny, tmp_path):
    """Issue 17 acceptance: ``xray2xray probe`` stopped half way (Ctrl-C, then SIGKILL),
    rerun: it encodes exactly the images not yet in the cache."""
    from PIL import Image
    folder = tmp_path / "many"
    folder.mkdir()
    rows = []
    for k in range(160):                        # large PNGs: decoding takes a while
        case = tiny["ids"][k % 12]
        a = np.array(Image.open(_png(tiny["drr"], case)).resize((640, 640)), dtype=np.int16)
        a[k % 640, :] = np.clip(a[k % 640, :] + 1, 0, 255)      # distinct bytes per file
        Image.fromarray(a.astype(np.uint8)).save(folder / f"img{k:03d}.png")
        rows.append([f"img{k:03d}"] + [tiny["labels"][case][n] for n in PATHOLOGIES])
    labels = _write_csv(tmp_path / "labels.csv", ["id"] + list(PATHOLOGIES), rows)
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "XrayWorldModel", "probe", "--model", str(tiny["model"]),
           "--data", str(folder), "--labels", str(labels), "--task", "pathology", "--folds", "3",
           "--bootstrap", "0", "--C", "1", "--workers", "0", "--batch-size", "4",
           "--pixel-spacing", "0.75", "--cache", str(cache), "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cached = lambda: sum(1 for p in cache.rglob("*.npy") if not p.name.startswith("."))

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            text=True, preexec_fn=sigint_as_in_a_terminal)
    assert _wait_for(lambda: cached() >= 4, proc), proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and out == "", err
    assert "interrupted: encoded" in err and "the same command resumes" in err
    after_int = cached()
    assert 4 <= after_int < 160

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert _wait_for(lambda: cached() >= after_int + 4, proc), proc.communicate()
    proc.kill()
    proc.communicate(timeout=60)
    after_kill = cached()
    assert after_int + 4 <= after_kill < 160

    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    ex = json.loads(done.stdout)["extraction"]
    assert (ex["encoded"], ex["from_cache"]) == (160 - after_kill, after_kill)
    assert ex["counter"] == f"encoded {160 - after_kill}, from cache {after_kill}, skipped 0 unreadable"


def test_cross_validation_through_fit_task_keeps_patients_together():
    """Leakage oracle: every patient's images share near-identical features and one label
    drawn at random, so no feature predicts the label across patients. Folds that keep a
    patient together score near chance; folds that split patients let a flexible head
    recognise the patient and score near 1."""
    from XrayWorldModel.probe.run import Targets, fit_task
    rng = np.random.default_rng(11)
    n_patients, per_patient = 60, 4
    patient = np.repeat(np.arange(n_patients), per_patient)
    centre = rng.normal(size=(n_patients, 48))
    X = centre[patient] + 0.01 * rng.normal(size=(len(patient), 48))
    y = (rng.random(n_patients) < 0.5).astype(float)[patient]
    targets = Targets("pathology", [f"img{i}" for i in range(len(patient))], ["finding"],
                      y[:, None])
    entry = fit_task(X, targets, {}, folds=5, seed=0, n_boot=50, C=100.0, patients=patient)
    assert entry["metrics"]["labels"]["finding"]["auroc"] < 0.75
    leaky = fit_task(X, targets, {}, folds=5, seed=0, n_boot=50, C=100.0)   # one image = one group
    assert leaky["metrics"]["labels"]["finding"]["auroc"] > 0.9              # the oracle can fail


def test_auroc_interval_counts_patients_not_images():
    """Four near-copies of each patient's image carry no more evidence than one: the CI
    that fit_task reports with patients is about as wide as on one image per patient
    (resampling images would make it about half as wide)."""
    from XrayWorldModel.probe.run import Targets, fit_task
    rng = np.random.default_rng(12)
    n_patients, per_patient = 80, 4
    y1 = (rng.random(n_patients) < 0.5).astype(float)
    centre = rng.normal(size=(n_patients, 8))
    centre[:, 0] += 1.2 * y1
    patient = np.repeat(np.arange(n_patients), per_patient)
    X = centre[patient] + 0.01 * rng.normal(size=(len(patient), 8))
    width = lambda e: np.diff(e["metrics"]["labels"]["finding"]["ci95"])[0]
    one = fit_task(centre, Targets("pathology", [f"p{i}" for i in range(n_patients)],
                                   ["finding"], y1[:, None]), {}, folds=5, seed=0,
                   n_boot=1000, C=1.0)
    many = fit_task(X, Targets("pathology", [f"img{i}" for i in range(len(patient))],
                               ["finding"], y1[patient][:, None]), {}, folds=5, seed=0,
                    n_boot=1000, C=1.0, patients=patient)
    assert 0.7 < width(many) / width(one) < 1.4, (width(many), width(one))

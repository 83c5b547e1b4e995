"""The labelled synthetic cohort: findings, calcium, the known risk model, and the writer/CLI."""
import csv
import math

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt
from scipy.stats import spearmanr

from XrayWorldModel.cli import main
from XrayWorldModel.data.sources import resolve_source
from XrayWorldModel.errors import InputError
from XrayWorldModel.io import read_ct
from XrayWorldModel.phantom import (CHEST_LABELS, CSV_COLUMNS, FINDINGS, MASK_BITS,
                                    CohortConfig, RiskModel, cohort_case, procedural_chest,
                                    sample_case_labels, write_cohort)
from XrayWorldModel.phantom.cohort import MEASURED_COLUMNS
from XrayWorldModel.phantom.findings import HIDEABLE, cardiothoracic_ratio
from XrayWorldModel.phantom.risk import agatston_weight

SHAPE, SPACING = (64, 64, 48), 5.0
ALL = CohortConfig.with_prevalence(1.0)
LAB = {v: k for k, v in CHEST_LABELS.items()}
LUNGS = (LAB["lung_left"], LAB["lung_right"])


@pytest.fixture(scope="module")
def cases():
    """Seeds 0-5 with every finding, their masks, and the base chest of the same seed."""
    out = {}
    for seed in range(6):
        vol, labels, masks = cohort_case(seed, SHAPE, SPACING, ALL, return_masks=True)
        out[seed] = (vol, labels, masks, procedural_chest(seed, SHAPE, SPACING))
    return out


def centroid(vol, mask):
    return vol.index_to_lps(np.argwhere(mask).mean(axis=0))


# ---------------------------------------------------------------------------- determinism
def test_same_seed_same_case_and_labels_need_no_volume():
    a, la = cohort_case(3, SHAPE, SPACING)
    b, lb = cohort_case(3, SHAPE, SPACING)
    np.testing.assert_array_equal(a.array, b.array)
    assert la == lb
    c, lc = cohort_case(4, SHAPE, SPACING)
    assert lc != la and np.mean(a.array != c.array) > 0.05
    # the drawn labels are sample_case_labels exactly, at any grid
    drawn = {k: v for k, v in la.items() if k not in MEASURED_COLUMNS}
    assert drawn == sample_case_labels(3)
    _, other_grid = cohort_case(3, (48, 48, 40), (7.0, 7.0, 8.0))
    assert {k: v for k, v in other_grid.items() if k not in MEASURED_COLUMNS} == drawn
    assert set(CSV_COLUMNS) - {"id", "path"} == set(la)


def test_findings_change_hu_only_inside_their_masks(cases):
    for seed, (vol, labels, masks, base) in cases.items():
        changed = vol.array != base.array
        union = np.zeros(vol.shape, bool)
        for name in (*FINDINGS, "calcium"):
            if name in masks:
                union |= masks[name]
        assert changed.any() and not (changed & ~union).any(), seed
        for name in FINDINGS:
            assert labels[name] == 1 and masks[name].any(), (seed, name)
            assert labels[f"{name}_ml"] == pytest.approx(masks[name].sum() * 125 / 1000)
            frac_changed = changed[masks[name]].mean()
            # the added heart replaces lung (changed) or soft tissue (same HU)
            assert frac_changed > (0.2 if name == "cardiomegaly" else 0.95), (seed, name)
        bits = masks["findings"].array
        for name, bit in MASK_BITS.items():
            np.testing.assert_array_equal((bits & bit) > 0, masks[name])


def test_no_findings_is_the_base_chest_plus_calcium():
    none = CohortConfig.with_prevalence(0.0)
    for seed in (0, 1):
        vol, labels, masks = cohort_case(seed, SHAPE, SPACING, none, return_masks=True)
        base = procedural_chest(seed, SHAPE, SPACING)
        assert all(labels[f] == 0 and labels[f"{f}_severity"] == 0 for f in FINDINGS)
        changed = vol.array != base.array
        assert not (changed & ~masks["calcium"]).any()
        np.testing.assert_array_equal(masks["anatomy"].array,
                                      procedural_chest(seed, SHAPE, SPACING, return_labels=True)[1].array)


def test_findings_are_plausible(cases):
    for seed, (vol, labels, masks, base) in cases.items():
        a, b = vol.array, base.array
        anat = masks["anatomy"].array
        cons = np.median(a[masks["consolidation"]])
        assert -160 < cons < 90, seed                            # -100..+40 HU plus texture
        eff = a[masks["pleural_effusion"]]
        assert 0 < np.median(eff) < 30 and np.isin(anat[masks["pleural_effusion"]], LUNGS).all()
        ed = masks["edema"]
        assert np.isin(anat[ed], LUNGS).all()
        later = masks["atelectasis"] | masks["consolidation"] | masks["pleural_effusion"] \
            | masks["calcium"]
        ed = ed & ~later                                          # edema alone: added density
        assert (a[ed] - b[ed]).mean() > 20 and (a[ed] >= b[ed]).all()
        at = masks["atelectasis"]
        assert np.median(a[at]) > np.median(b[at]) + 80           # collapsed: denser
        # cardiomegaly: a bigger heart than the same patient's, a larger CTR
        assert labels["heart_scale"] >= 1.2
        base_lab = procedural_chest(seed, SHAPE, SPACING, return_labels=True)[1].array
        assert (anat == LAB["heart"]).sum() > 1.3 * (base_lab == LAB["heart"]).sum()
        assert labels["ctr"] > cardiothoracic_ratio(base_lab, SPACING) + 0.05
    # edema is graded: more severe, denser
    sev = [c[1]["edema_severity"] for c in cases.values()]
    gain = [np.median((c[0].array - c[3].array)[c[2]["edema"]]) for c in cases.values()]
    assert spearmanr(sev, gain)[0] > 0.7


def test_effusion_layers_posteriorly_and_basally(cases):
    for seed, (vol, labels, masks, base) in cases.items():
        anat = masks["anatomy"].array
        eff = centroid(vol, masks["pleural_effusion"])
        lungs = centroid(vol, np.isin(anat, LUNGS))
        assert eff[1] > lungs[1] + 20, seed                       # posterior (+y), supine
        assert eff[2] < lungs[2], seed                            # basal


def test_hidden_variants_are_superposed_in_the_frontal_view():
    hidden = CohortConfig(prevalence={f: 1.0 for f in FINDINGS}, hidden={f: 1.0 for f in HIDEABLE})
    shown = CohortConfig(prevalence={f: 1.0 for f in FINDINGS}, hidden={f: 0.0 for f in HIDEABLE})
    over, clear_ml = {}, {}
    for name, cfg in (("hidden", hidden), ("shown", shown)):
        rows = []
        for seed in range(4):
            vol, labels = cohort_case(seed, SHAPE, SPACING, cfg)
            assert all(labels[f"{f}_hidden"] == (name == "hidden") for f in HIDEABLE)
            rows.append((vol.metadata["cohort"]["frontal_overlap"], labels))
        over[name] = {f: np.array([o[f] for o, _ in rows]) for f in HIDEABLE}
        # fluid whose frontal ray crosses neither heart nor the subdiaphragmatic tissue
        clear_ml[name] = np.mean([lab["pleural_effusion_ml"] * (1 - o["pleural_effusion"])
                                  for o, lab in rows])
    assert over["hidden"]["consolidation"].min() > 0.95           # behind the heart
    assert over["hidden"]["atelectasis"].min() > 0.75             # retrocardiac collapse
    assert over["hidden"]["pleural_effusion"].min() > 0.85        # behind the dome
    for f in ("atelectasis", "consolidation"):
        assert over["hidden"][f].mean() > over["shown"][f].mean() + 0.3, f
    assert clear_ml["hidden"] < 0.1 * clear_ml["shown"]


# ---------------------------------------------------------------------------- calcium
def test_calcium_is_dense_on_heart_and_aorta_with_its_true_volume(cases):
    for seed, (vol, labels, masks, base) in cases.items():
        ca = masks["calcium"]
        assert labels["calcium_count"] == 0 or ca.any()
        if not ca.any():
            continue
        # a partial-volume blend towards 300-1500 HU: denser than any soft tissue it fills
        soft = ca & (base.array < 250)
        assert (vol.array[soft] > base.array[soft]).all()
        # the excess attenuation is the deposits' (at 5 mm small ones are faint partial volumes)
        excess = (vol.array[ca] - base.array[ca]).astype(np.float64).sum() * 125.0
        assert excess > 250.0 * labels["calcium_volume_mm3"] - 1.0
        frac = masks["calcium_fraction"]
        assert labels["calcium_voxel_mm3"] == pytest.approx(frac.sum() * 125.0, rel=1e-4)
        assert labels["calcium_voxel_mm3"] == pytest.approx(labels["calcium_volume_mm3"],
                                                            rel=0.03, abs=2.0)
        anat = masks["anatomy"].array
        dist = distance_transform_edt(~np.isin(anat, (LAB["heart"], LAB["aorta"])),
                                      sampling=vol.spacing)
        assert dist[ca].max() <= math.sqrt(3) * SPACING + 1e-6      # within a voxel
        assert labels["calcium_volume_mm3"] == pytest.approx(
            labels["coronary_calcium_mm3"] + labels["aortic_calcium_mm3"])


def test_voxels_full_of_calcium_exceed_300_hu():
    """On a finer grid deposits fill whole voxels; those carry the deposit's 300-1500 HU."""
    full_voxels = 0
    for seed in (1, 2):
        vol, labels, masks = cohort_case(seed, (96, 96, 80), 2.0, return_masks=True)
        full = masks["calcium_fraction"] >= 1.0
        full_voxels += int(full.sum())
        assert (vol.array[full] > 300).all() and (vol.array[full] <= 1500).all()
        dist = distance_transform_edt(~np.isin(masks["anatomy"].array, (LAB["heart"], LAB["aorta"])),
                                      sampling=vol.spacing)
        assert dist[masks["calcium"]].max() <= 5.0                   # mm
    assert full_voxels > 0


# ---------------------------------------------------------------------------- labels
def test_prevalences_match_the_configuration():
    n = 400
    tol = 3.5 * math.sqrt(0.25 / n)                                 # ~0.09
    rows = [sample_case_labels(s) for s in range(n)]
    for f in FINDINGS:
        assert abs(np.mean([r[f] for r in rows]) - 0.3) < tol, f
        sev = [r[f"{f}_severity"] for r in rows]
        assert all((0 < s <= 1) == bool(r[f]) for s, r in zip(sev, rows))
    present = [r for r in rows if r["consolidation"]]
    assert 0.2 < np.mean([r["consolidation_hidden"] for r in present]) < 0.6
    cfg = CohortConfig(prevalence={"edema": 0.1, "pleural_effusion": 0.4})
    other = [sample_case_labels(s, cfg) for s in range(n)]
    assert abs(np.mean([r["edema"] for r in other]) - 0.1) < tol
    assert abs(np.mean([r["pleural_effusion"] for r in other]) - 0.4) < tol
    # changing one prevalence leaves every other finding's draws alone
    for f in ("atelectasis", "cardiomegaly", "consolidation"):
        assert [r[f] for r in rows] == [r[f] for r in other]
        assert [r[f"{f}_severity"] for r in rows] == [r[f"{f}_severity"] for r in other]


def test_risk_model_is_the_documented_logistic_and_rises_with_calcium():
    rm = RiskModel()
    rows = [sample_case_labels(s) for s in range(3000)]
    vol = np.array([r["calcium_volume_mm3"] for r in rows])
    event = np.array([r["event"] for r in rows])
    prob = np.array([r["risk_prob"] for r in rows])
    for r in rows[:200]:
        lp = (rm.intercept + rm.coronary * math.log1p(r["coronary_calcium_mm3"] / rm.calcium_ref_mm3)
              + rm.aortic * math.log1p(r["aortic_calcium_mm3"] / rm.calcium_ref_mm3)
              + rm.heart * (r["heart_scale"] - 1.0))
        assert r["risk_lp"] == pytest.approx(lp)
        assert r["risk_prob"] == pytest.approx(1 / (1 + math.exp(-lp)))
        assert r["agatston"] >= 0 and (r["agatston"] > 0) == (r["coronary_calcium_mm3"] > 0)
    assert [agatston_weight(h) for h in (129, 150, 250, 350, 450, 1500)] == [0, 1, 2, 3, 4, 4]
    assert 0.15 < event.mean() < 0.45
    assert abs(event.mean() - prob.mean()) < 0.03                    # calibrated
    lo, hi = np.quantile(vol, [1 / 3, 2 / 3])
    rates = [event[vol <= lo].mean(), event[(vol > lo) & (vol <= hi)].mean(), event[vol > hi].mean()]
    assert rates[0] < rates[1] < rates[2] and rates[2] - rates[0] > 0.2
    # times: events within the horizon, earlier for higher risk; the rest censored at it
    time = np.array([r["time"] for r in rows])
    cens = np.array([r["censored"] for r in rows])
    np.testing.assert_array_equal(cens, 1 - event)
    assert np.all(time[cens == 1] == rm.horizon_years)
    assert np.all((time > 0) & (time <= rm.horizon_years))
    lp = np.array([r["risk_lp"] for r in rows])
    assert spearmanr(lp[event == 1], time[event == 1])[0] < -0.1


def test_bad_cohort_input():
    with pytest.raises(InputError):
        sample_case_labels(-1)
    with pytest.raises(InputError):
        CohortConfig(prevalence={"edema": 1.5})
    with pytest.raises(InputError):
        CohortConfig(prevalence={"pneumothorax": 0.2})
    with pytest.raises(InputError):
        write_cohort(0, "unused")


# ---------------------------------------------------------------------------- writer, CLI
def test_cli_writes_a_resumable_cohort_readable_as_a_manifest(tmp_path, capsys):
    out, csv_path = tmp_path / "cts", tmp_path / "labels" / "labels.csv"
    args = ["phantom", "--cohort", "3", "--labels", str(csv_path), "--out", str(out),
            "--seed", "7", "--shape", "48", "48", "40", "--spacing", "7", "--masks"]
    assert main(args) == 0
    cts = sorted(out.glob("cohort-*[0-9].nii.gz"))
    assert [p.name for p in cts] == [f"cohort-{s:05d}.nii.gz" for s in (7, 8, 9)]
    assert len(list(out.glob("*_mask.nii.gz"))) == 3
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    assert [r["seed"] for r in rows] == ["7", "8", "9"]
    assert rows[0]["path"] == "../cts/cohort-00007.nii.gz"
    want_vol, want = cohort_case(7, (48, 48, 40), 7.0)
    got = read_ct(cts[0])
    np.testing.assert_allclose(got.array, want_vol.array, atol=1e-3)
    np.testing.assert_allclose(got.affine, want_vol.affine, atol=1e-4)
    for k in ("event", "censored", *FINDINGS):
        assert int(rows[0][k]) == want[k]
    for k in ("calcium_volume_mm3", "risk_lp", "risk_prob", "time", "ctr"):
        assert float(rows[0][k]) == pytest.approx(want[k], rel=1e-6)
    # a training manifest: ids, paths relative to the CSV, every other column a label
    items = resolve_source(str(csv_path))
    assert [i.id for i in items] == ["cohort-00007", "cohort-00008", "cohort-00009"]
    assert set(items[0].labels) == set(CSV_COLUMNS) - {"id", "path"}
    assert items[0].load().shape == (48, 48, 40)

    # resume: nothing rebuilt; a case whose sidecar is gone is rebuilt alone
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert main(args) == 0
    assert "kept 3 already complete" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    (out / "cohort-00008.json").unlink()
    assert main(args) == 0
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert after["cohort-00007.nii.gz"] == stamps["cohort-00007.nii.gz"]
    assert after["cohort-00008.nii.gz"] != stamps["cohort-00008.nii.gz"]
    with open(csv_path, newline="") as f:
        assert list(csv.DictReader(f)) == rows
    # other settings are another cohort: the cases are rebuilt
    res = write_cohort(3, out, csv_path, first_seed=7, shape=(48, 48, 40), spacing=7.0,
                       config=CohortConfig.with_prevalence(0.5), write_masks=True)
    assert res["written"] == 3 and res["skipped"] == 0
    # the default label file sits in the output folder
    res = write_cohort(1, tmp_path / "solo", shape=(32, 32, 24), spacing=10.0)
    assert res["csv"] == tmp_path / "solo" / "labels.csv" and res["written"] == 1


def test_cli_cohort_usage_errors(tmp_path, capsys):
    assert main(["phantom", "--labels", "x.csv", "--out", str(tmp_path / "a.nii.gz")]) == 2
    assert main(["phantom", "--cohort", "2", "--kind", "ellipsoid", "--out", str(tmp_path)]) == 2
    assert main(["phantom", "--cohort", "2", "--prevalence", "fever=0.2",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--labels goes with --cohort" in err and "unknown finding 'fever'" in err
    assert "Traceback" not in err

"""The realistic chest variant (``phantom:chest2``): anatomy checked by measurements on the HU
volume and its DRR (not by reading back the generator's own parameters), determinism, the
one phantom-source spelling, findings and cohorts on the variant, and the default chest left
exactly as it was."""
import csv
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import Delaunay

from XrayWorldModel.data.sources import PHANTOM_SHAPE, PHANTOM_SPACING, resolve_source
from XrayWorldModel.drr import render_drr
from XrayWorldModel.drr.batch import expand_inputs
from XrayWorldModel.errors import InputError
from XrayWorldModel.geometry import ProjectionGeometry
from XrayWorldModel.phantom import CSV_COLUMNS, CohortConfig, cohort_case, procedural_chest
from XrayWorldModel.phantom.chest import _build_chest
from XrayWorldModel.phantom.realistic import REALISTIC_LABELS, realistic_chest
from XrayWorldModel.phantom.source import PhantomSource, parse_phantom_source
from XrayWorldModel.phantom.variants import CHEST_VARIANTS, chest_volume

SMALL = dict(shape=(64, 64, 48), spacing=(5.6, 5.6, 7.0))
LAB = {v: k for k, v in REALISTIC_LABELS.items()}


@pytest.fixture(scope="module")
def chests():
    """Two realistic chests on the training grid, with their labels."""
    return {seed: realistic_chest(seed, return_labels=True) for seed in (0, 3)}


# ------------------------------------------------------------------ measurements
def axes(vol):
    """LPS coordinates (mm) of the grid lines: x (left+), y (posterior+), z (superior+)."""
    return [vol.origin[i] + np.arange(vol.shape[i]) * vol.spacing[i] for i in range(3)]


def lung_mask(hu):
    """Air inside the body (below -500 HU, not connected through air of -950 HU or less to
    the volume's faces: that excludes the outside and the airways): its two largest
    connected regions."""
    outside, _ = ndimage.label(hu < -950)
    faces = np.concatenate([outside[[0, -1]].ravel(), outside[:, [0, -1]].ravel(),
                            outside[:, :, [0, -1]].ravel()])
    open_air = np.isin(outside, np.unique(faces[faces > 0]))
    regions, n = ndimage.label((hu < -500) & ~open_air)
    sizes = ndimage.sum_labels(np.ones_like(regions), regions, np.arange(1, n + 1))
    return np.isin(regions, np.argsort(sizes)[-2:] + 1)


def dome_top(vol, side):
    """The most cranial diaphragm row under one lung (+1 left, -1 right): per column in the
    middle of the hemithorax, the row under its lowest lung voxel; the highest of those."""
    x, y, z = axes(vol)
    xs = (side * x > 45.0) & (side * x < 85.0)
    zs = (z > -160.0) & (z < 0.0)
    air = vol.array[np.ix_(xs, (y > 5.0) & (y < 40.0), zs)] < -500
    has = air.any(axis=2)
    lowest = air.argmax(axis=2)[has]
    return float(z[zs][lowest].max() - vol.spacing[2])


def frontal_drr(vol, n=128):
    geo = ProjectionGeometry(angles=(0.0,), detector_shape=(n, n), pixel_spacing=400.0 * 1.8 / n,
                             sdd=1800.0, sod=1000.0)
    return render_drr(vol, geo)[0]


def lung_fields(img):
    """The two lung fields of a frontal radiograph: inside the body, pixels darker than half
    way between their row's darkest value and its midline (the mediastinum); the largest
    connected region in each half."""
    n, mid = img.shape[1], img.shape[1] // 2
    img = ndimage.gaussian_filter(img, 1.0)
    dark = np.zeros(img.shape, dtype=bool)
    for r, row in enumerate(img):
        body = np.nonzero(row > 0.25 * row.max())[0]
        if len(body) < n // 4:
            continue
        a, b = body.min() + 3, body.max() - 2
        dark[r, a:b] = row[a:b] < 0.5 * (row[a:b].min() + row[mid])
    regions, k = ndimage.label(dark)
    fields = []
    for half in (slice(0, mid), slice(mid, n)):
        sizes = ndimage.sum_labels(np.ones_like(regions[:, half]), regions[:, half],
                                   np.arange(1, k + 1))
        fields.append(regions == np.argmax(sizes) + 1)
    return fields


def ctr_on_radiograph(img):
    """Cardiothoracic ratio read off a frontal radiograph: the widest gap between the lung
    fields in the lower half of the rows where both fields are at least half their widest
    (the heart), over the widest span across both fields."""
    right, left = lung_fields(img)          # PA: the patient's right is on the image's left
    cols = np.arange(img.shape[1])
    wr, wl = right.sum(axis=1), left.sum(axis=1)
    rows = np.nonzero((wr >= 0.5 * wr.max()) & (wl >= 0.5 * wl.max()))[0]
    lower = rows[rows >= (rows.min() + rows.max()) / 2]
    heart = max(cols[left[r]].min() - cols[right[r]].max() - 1 for r in lower)
    both = np.nonzero((wr > 0) & (wl > 0))[0]
    thorax = max(cols[left[r]].max() - cols[right[r]].min() + 1 for r in both)
    return heart / thorax


# ------------------------------------------------------------------ default untouched
def test_default_phantom_sources_still_build_the_procedural_chest():
    """Every spelling without a kind names the original generator: the shipped demo model,
    its OOD reference and the other tests depend on its exact voxels."""
    assert CHEST_VARIANTS["chest"].make is procedural_chest
    assert CHEST_VARIANTS["chest"].build is _build_chest
    for spec in ("phantom:4", "phantom:4:9", "phantom:chest:9", "phantom:chest"):
        assert parse_phantom_source(spec).kind == "chest"
    vol, units = PhantomSource("chest", 9).load()
    assert units == "hu" and vol.metadata["source"] == "procedural_chest"
    assert np.array_equal(vol.array, procedural_chest(9).array)
    item = resolve_source("phantom:1:9")[0]
    assert (item.id, item.spec) == ("phantom-00009", "phantom:chest:9")
    assert np.array_equal(item.load().array,
                          procedural_chest(9, PHANTOM_SHAPE, PHANTOM_SPACING).array)


def test_chest2_spellings_extend_the_one_phantom_syntax():
    assert parse_phantom_source("phantom:chest2") == PhantomSource("chest2", 0, 1)
    assert parse_phantom_source("phantom:CHEST2:7") == PhantomSource("chest2", 7, 1)
    many = parse_phantom_source("phantom:3:40:chest2")
    assert many == PhantomSource("chest2", 40, 3)
    assert many.specs() == ["phantom:chest2:40", "phantom:chest2:41", "phantom:chest2:42"]
    assert parse_phantom_source("phantom:2:chest2") == PhantomSource("chest2", 0, 2)
    items = resolve_source("phantom:2:40:chest2")
    assert [(i.id, i.spec) for i in items] == [("chest2-00040", "phantom:chest2:40"),
                                              ("chest2-00041", "phantom:chest2:41")]
    sources, _ = expand_inputs(["phantom:2:40:chest2"])              # the DRR job
    assert [src.spec for src in sources] == ["phantom:chest2:40", "phantom:chest2:41"]
    vol, units = sources[0].load()
    assert units == "hu" and vol.metadata["source"] == "realistic_chest"
    for bad in ("phantom:chest2:3:4", "phantom:3:1:chest3", "phantom:3:1:2:chest2",
                "phantom:3:ellipsoid"):
        with pytest.raises(InputError, match=r"phantom:N\[:FIRST_SEED\]:chest2"):
            parse_phantom_source(bad)


def test_chest2_is_deterministic_per_seed_and_differs_between_seeds():
    a = realistic_chest(5, **SMALL)
    b = chest_volume("chest2", seed=5, **SMALL)
    assert a.array.dtype == np.float32 and np.array_equal(a.array, b.array)
    assert not np.array_equal(a.array, realistic_chest(6, **SMALL).array)
    # the heart size and domes of the procedural chest of that seed (the cohort relies on it)
    base = procedural_chest(5, **SMALL)
    for key in ("heart_semi_axes_mm", "heart_scale", "dome_right_z_mm", "dome_left_z_mm"):
        assert a.metadata["anatomy"][key] == base.metadata["anatomy"][key]


# ------------------------------------------------------------------ anatomy
@pytest.mark.parametrize("seed", [0, 3])
def test_right_hemidiaphragm_is_higher(chests, seed):
    vol = chests[seed][0]
    right, left = dome_top(vol, -1), dome_top(vol, +1)
    assert right > left + 5.0, (right, left)
    assert -120.0 < left < right < -20.0


@pytest.mark.parametrize("seed", [0, 3])
def test_clavicles_cross_above_the_lung_apices_in_front(chests, seed):
    """Bone in the upper, anterior chest on both sides, near the top of the lungs; the
    procedural chest has (almost) none there, so the measurement tells them apart."""
    def upper_front_bone(vol):
        x, y, z = axes(vol)
        apex = z[np.nonzero(lung_mask(vol.array).any(axis=(0, 1)))[0].max()]
        region = (np.abs(x)[:, None, None] > 40) & (np.abs(x)[:, None, None] < 110) \
            & (y[None, :, None] < -30) & (z[None, None, :] > apex - 40)
        bone = (vol.array > 300) & region
        return int(bone[x > 0].sum()), int(bone[x < 0].sum())

    left, right = upper_front_bone(chests[seed][0])
    assert min(left, right) >= 100
    assert max(upper_front_bone(procedural_chest(seed))) < 0.2 * min(left, right)


@pytest.mark.parametrize("seed", [0, 3])
def test_lungs_lie_inside_the_rib_cage(chests, seed):
    """Slice by slice, the lung voxels lie inside the convex hull of the rib cage (bone and
    costal cartilage, above 110 HU) within +-2 slices."""
    hu = chests[seed][0].array
    lungs, cage = lung_mask(hu), hu > 110.0
    outside = total = 0
    for k in range(2, hu.shape[2] - 2):
        pts = np.argwhere(lungs[:, :, k])
        if len(pts) == 0:
            continue
        hull = Delaunay(np.argwhere(cage[:, :, k - 2:k + 3].any(axis=2)))
        outside += int((hull.find_simplex(pts) < 0).sum())
        total += len(pts)
    assert total > 100_000
    assert outside <= 0.001 * total, (outside, total)


@pytest.mark.parametrize("seed", [0, 3])
def test_raised_arms_lie_lateral_to_the_ribs(chests, seed):
    """In the top slices (shoulders and raised upper arms), bone lies well lateral to the
    lungs' apical parts on both sides, and soft tissue reaches the top of the volume there."""
    vol = chests[seed][0]
    x, y, z = axes(vol)
    lungs = lung_mask(vol.array)
    lung_z = np.nonzero(lungs.any(axis=(0, 1)))[0]
    apical = lungs[:, :, z > z[lung_z.max()] - 40.0]
    top = z > z.max() - 0.12 * np.ptp(z)
    bone_cols = (vol.array[:, :, top] > 300).any(axis=(1, 2))
    for side in (+1, -1):
        apical_width = (side * x[apical.any(axis=(1, 2)) & (side * x > 0)]).max()
        arm_bone = (side * x[bone_cols & (side * x > 0)]).max()
        assert arm_bone > apical_width + 30.0, (side, arm_bone, apical_width)
        top_slice = vol.array[:, :, -1]
        assert (top_slice[(side * x > apical_width + 30.0)] > -200).sum() > 50


@pytest.mark.parametrize("seed", [0, 3])
def test_ribs_descend_towards_the_front_and_end_in_cartilage(chests, seed):
    vol, lab = chests[seed]
    hu, labels = vol.array, lab.array
    x, y, z = axes(vol)
    # each bony rib (a connected piece of bone off the midline) is lower at its front
    rib_bone = (labels == LAB["ribs"]) & (hu > 250) & (np.abs(x)[:, None, None] > 35)
    pieces, n = ndimage.label(rib_bone)
    drops = []
    for i in range(1, n + 1):
        idx = np.argwhere(pieces == i)
        py, pz = y[idx[:, 1]], z[idx[:, 2]]
        if (py > 30).sum() >= 5 and (py < -30).sum() >= 5:
            drops.append(pz[py > 30].mean() - pz[py < -30].mean())
    assert len(drops) >= 8
    assert min(drops) > 15.0 and np.median(drops) > 35.0, drops
    cartilage = hu[labels == LAB["costal_cartilage"]]
    ribs = hu[labels == LAB["ribs"]]
    assert len(cartilage) > 200
    assert 60.0 < np.median(cartilage) < 250.0 < np.median(ribs) - 100.0
    # cartilage sits in front, between the bony ribs and the sternum
    cart_y = y[np.nonzero(labels == LAB["costal_cartilage"])[1]]
    assert np.median(cart_y) < -40.0


@pytest.mark.parametrize("seed", [0, 3])
def test_scapulae_sternum_and_mediastinal_vessels_are_where_they_belong(chests, seed):
    vol, lab = chests[seed]
    hu, labels = vol.array, lab.array
    x, y, z = axes(vol)
    pos = {name: np.argwhere(labels == LAB[name]) for name in
           ("scapula", "pulmonary_artery", "aorta", "airway")}
    scap = pos["scapula"]
    assert len(scap) > 300 and np.median(hu[labels == LAB["scapula"]]) > 300
    assert np.median(y[scap[:, 1]]) > 30.0                             # posterior
    assert (x[scap[:, 0]] > 60).sum() > 100 and (x[scap[:, 0]] < -60).sum() > 100
    pa = pos["pulmonary_artery"]
    assert x[pa[:, 0]].min() < -30.0 and x[pa[:, 0]].max() > 30.0      # to both hila
    assert 20.0 < np.median(hu[labels == LAB["pulmonary_artery"]]) < 80.0
    assert x[pos["aorta"][:, 0]].max() > 30.0                          # the knob
    trachea = hu[np.abs(x) < 8.0][:, (y > -20) & (y < 30)][:, :, z > 60.0]
    assert (trachea < -900).sum() > 50                                  # air in the midline


def test_lung_vessels_thin_out_towards_the_periphery(chests):
    """Per slice and lung, vessel-dense voxels (above -600 HU) are more frequent in the
    medial third of the lung's width than in its lateral third."""
    hu = chests[0][0].array
    lungs = ndimage.binary_fill_holes(lung_mask(hu))
    vessel = (hu > -600) & lungs
    x = axes(chests[0][0])[0]
    inner = outer = inner_n = outer_n = 0
    for k in range(hu.shape[2]):
        for side in (+1, -1):
            cols = np.nonzero((lungs[:, :, k].any(axis=1)) & (side * x > 0))[0]
            if len(cols) < 9:
                continue
            ax = np.abs(x[cols])
            lo, hi = ax.min(), ax.max()
            med = cols[ax < lo + (hi - lo) / 3]
            lat = cols[ax > hi - (hi - lo) / 3]
            inner += vessel[med, :, k].sum(); inner_n += lungs[med, :, k].sum()
            outer += vessel[lat, :, k].sum(); outer_n += lungs[lat, :, k].sum()
    assert inner / inner_n > 1.5 * outer / outer_n


def test_breast_tissue_depends_on_sex():
    """How far the front of the lower chest stands forward of the sternum, off the midline:
    larger in women (several centimetres) than in men."""
    forward = {"female": [], "male": []}
    for seed in range(8):
        vol = realistic_chest(seed, **SMALL)
        x, y, z = axes(vol)
        body = vol.array > -500
        band = (z > -90) & (z < 30)
        front = np.where(body.any(axis=1), y[body.argmax(axis=1)], np.inf)[:, band]
        lateral = front[(np.abs(x) > 40) & (np.abs(x) < 120)].min()
        midline = front[np.abs(x) < 10].min()
        forward[vol.metadata["sex"]].append(midline - lateral)
    assert forward["female"] and forward["male"]
    assert np.mean(forward["female"]) > np.mean(forward["male"]) + 10.0


# ------------------------------------------------------------------ findings on the variant
@pytest.mark.parametrize("seed", [1, 2])
def test_cardiomegaly_widens_the_heart_on_the_frontal_drr(seed):
    normal = CohortConfig.with_prevalence(0.0)
    enlarged = CohortConfig.with_prevalence({"cardiomegaly": 1.0, "atelectasis": 0.0,
                                             "consolidation": 0.0, "edema": 0.0,
                                             "pleural_effusion": 0.0})
    v0, l0 = cohort_case(seed, config=normal, kind="chest2")
    v1, l1 = cohort_case(seed, config=enlarged, kind="chest2")
    assert l0["cardiomegaly"] == 0 and l1["cardiomegaly"] == 1
    assert v0.metadata["variant"] == v1.metadata["variant"] == "chest2"
    ctr0, ctr1 = ctr_on_radiograph(frontal_drr(v0)), ctr_on_radiograph(frontal_drr(v1))
    assert ctr1 > ctr0 + 0.03, (ctr0, ctr1)


def test_findings_and_calcium_land_in_the_variant():
    """Every finding on: each changes HU only in its mask, inside the lungs or heart it
    belongs to, and the calcium's voxel volume matches its true volume."""
    cfg = CohortConfig.with_prevalence(1.0)
    vol, labels, masks = cohort_case(3, config=cfg, kind="chest2", return_masks=True)
    anatomy = masks["anatomy"].array
    lungs = np.isin(anatomy, (LAB["lung_left"], LAB["lung_right"]))
    for name in ("consolidation", "edema", "pleural_effusion"):
        assert masks[name].any() and (masks[name] & lungs).sum() >= 0.9 * masks[name].sum()
    assert labels["cardiomegaly_ml"] > 50 and labels["ctr"] > 0.45
    assert labels["calcium_voxel_mm3"] == pytest.approx(labels["calcium_volume_mm3"], rel=0.05)


def test_cli_writes_a_chest2_cohort_with_the_default_label_columns(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "XrayWorldModel", "phantom", *args,
                               "--shape", "48", "48", "36", "--spacing", "7", "7", "9.5",
                               "--quiet"], capture_output=True, text=True, timeout=300)

    r = run("--kind", "chest2", "--cohort", "2", "--seed", "4", "--out", str(tmp_path / "c2"))
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "c2" / "labels.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 3
    assert [row[0] for row in rows[1:]] == ["cohort-00004", "cohort-00005"]
    items = resolve_source(str(tmp_path / "c2" / "labels.csv"))
    vol = items[0].load()
    assert (vol.array > 300).sum() > 0 and set(items[0].labels) >= {"cardiomegaly", "ctr"}
    bad = run("--kind", "ellipsoid", "--cohort", "2", "--out", str(tmp_path / "e"))
    assert bad.returncode == 2 and "chest or chest2" in bad.stderr
    assert "Traceback" not in bad.stderr

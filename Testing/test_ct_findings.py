"""Findings drawn into a chest CT without a label map (``data/ct_findings.py``): each changes
HU only inside its mask, every mask lies in the lungs, the draw is deterministic, and each
finding is where and as dense as its rule says. The chest here is a procedural phantom
preprocessed onto a small training cube and treated as a real CT would be: through
thresholds only (its label map serves as an independent oracle for the lungs)."""
from __future__ import annotations

import numpy as np
import pytest

from XrayWorldModel.data.anatomy import body_mask, lung_mask
from XrayWorldModel.data.cache import Preprocessing, preprocess
from XrayWorldModel.data.ct_findings import (CT_FINDINGS, CTFinding, draw_ct_findings, draw_into_ct,
                                             render_ct_findings)
from XrayWorldModel.errors import InputError
from XrayWorldModel.phantom import procedural_chest

GRID = Preprocessing(64, 5.5)


@pytest.fixture(scope="module")
def chest():
    return preprocess(procedural_chest(3), GRID)


@pytest.fixture(scope="module")
def lungs(chest):
    return lung_mask(chest, body_mask(chest))


def _finding(name, severity=0.8, side="left", place=(0.3, 0.5, 0.1, 0.7, 0.2, 0.9)):
    return {name: CTFinding(name, severity, side, place)}


def test_draw_is_deterministic_and_follows_the_prevalence():
    assert draw_ct_findings(11) == draw_ct_findings(11)
    draws = [draw_ct_findings(s, 0.3) for s in range(400)]
    for name in CT_FINDINGS:
        share = np.mean([name in d for d in draws])
        assert 0.22 < share < 0.38, (name, share)
    assert draw_ct_findings(5, 0.0) == {} and set(draw_ct_findings(5, 1.0)) == set(CT_FINDINGS)
    with pytest.raises(InputError):
        draw_ct_findings(1, 1.5)


@pytest.mark.parametrize("name", CT_FINDINGS)
def test_each_finding_changes_hu_only_inside_its_mask_and_its_mask_lies_in_the_lungs(chest, lungs, name):
    out, masks, labels = render_ct_findings(chest, _finding(name))
    mask = masks[name]
    assert mask.sum() > 20, mask.sum()
    assert not (mask & ~lungs).any()
    changed = out.array != chest.array
    assert not (changed & ~mask).any()
    assert labels[name] == pytest.approx(0.8) and all(labels[n] == 0.0 for n in CT_FINDINGS if n != name)
    again, masks2, _ = render_ct_findings(chest, _finding(name))
    assert np.array_equal(again.array, out.array) and np.array_equal(masks2[name], mask)


def test_effusion_fills_the_dependent_share_of_its_lung_with_fluid(chest, lungs):
    out, masks, _ = render_ct_findings(chest, _finding("pleural_effusion", 0.6, "right"))
    mask = masks["pleural_effusion"]
    midline = chest.index_to_lps(np.argwhere(body_mask(chest))).mean(axis=0)[0]
    x = chest.index_to_lps(np.argwhere(lungs))[:, 0]
    right = np.zeros_like(lungs)
    right[tuple(np.argwhere(lungs)[x <= midline].T)] = True
    assert not (mask & ~right).any()                          # the right lung (LPS -x) only
    fluid = out.array[mask]
    assert (fluid >= 8.0).all() and (fluid <= 18.0).all()
    assert mask.sum() / right.sum() == pytest.approx(0.35 * 0.6, abs=0.02)
    y_fluid = chest.index_to_lps(np.argwhere(mask))[:, 1]
    y_rest = chest.index_to_lps(np.argwhere(right & ~mask))[:, 1]
    assert y_fluid.mean() > y_rest.mean() + 10.0              # posterior (LPS +y): supine


def test_consolidation_is_a_dense_lobulated_region_of_one_lung(chest, lungs):
    out, masks, _ = render_ct_findings(chest, _finding("consolidation", 0.5, "left"))
    mask = masks["consolidation"]
    assert abs(float(np.median(out.array[mask])) - (-100.0 + 140.0 * 0.5)) < 40.0
    extent = np.ptp(chest.index_to_lps(np.argwhere(mask)), axis=0)
    assert extent.max() < 2 * 40.0 * 1.25 + 2 * 5.5      # within its largest lobulated radius
    assert (chest.index_to_lps(np.argwhere(mask))[:, 0] > 0).mean() > 0.95   # the left lung (+x)


def test_edema_is_perihilar_and_grows_with_severity(chest, lungs):
    mild, m1, _ = render_ct_findings(chest, _finding("edema", 0.3, "both"))
    severe, m2, _ = render_ct_findings(chest, _finding("edema", 1.0, "both"))
    gain_mild = (mild.array - chest.array)[lungs].mean()
    gain_severe = (severe.array - chest.array)[lungs].mean()
    assert gain_severe > 1.5 * gain_mild > 0
    assert (severe.array >= chest.array).all()               # edema only adds density
    lps = chest.index_to_lps(np.argwhere(m2["edema"]))
    assert (lps[:, 0] > 0).any() and (lps[:, 0] < 0).any()    # both lungs
    # denser near the mediastinum than at the lateral edges of the lungs
    gain = (severe.array - chest.array)[lungs]
    x = np.abs(chest.index_to_lps(np.argwhere(lungs))[:, 0])
    assert gain[x < np.percentile(x, 30)].mean() > 2.0 * gain[x > np.percentile(x, 80)].mean()


def test_no_finding_leaves_the_ct_untouched_and_unknown_ones_are_refused(chest):
    out, masks, labels = draw_into_ct(chest, seed=0, prevalence=0.0)
    assert np.array_equal(out.array, chest.array) and masks == {} and set(labels.values()) == {0.0}
    with pytest.raises(InputError, match="cardiomegaly"):
        render_ct_findings(chest, _finding("cardiomegaly"))


def test_a_ct_without_lungs_is_refused_in_one_line():
    from XrayWorldModel.volume import Volume
    arr = np.full((40, 40, 32), -1000.0, np.float32)
    arr[8:32, 8:32, 4:28] = 40.0                       # a body of soft tissue, no air inside
    solid = Volume.from_spacing(arr, (5.0, 5.0, 5.0), origin=(-100.0, -100.0, -80.0))
    with pytest.raises(InputError, match="no lungs found") as caught:
        render_ct_findings(solid, _finding("edema"))
    assert "\n" not in str(caught.value)

"""Padding (edge rows and columns of one value) never changes what the model is given.

A letterboxed radiograph must reach the model as the radiograph itself does: same input
image, same covered pixels, hence the same consistency score. Before the cut, the shared CR
padded with black to 1.6 times its width scored 0.926 against its own 0.857.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from chest_drr import frontal_drr

from XrayWorldModel.data import ViewSampling
from XrayWorldModel.data.radiograph_style import styled_display
from XrayWorldModel.infer.domain import radiograph_input
from XrayWorldModel.infer.padding import content_box, without_padding
from XrayWorldModel.io.cxr import read_cxr
from XrayWorldModel.phantom import procedural_chest
from XrayWorldModel.radiograph import LINE_INTEGRAL, Radiograph
from XrayWorldModel.weights.loading import load_world_model

SAMPLING = ViewSampling()


@pytest.fixture(scope="module")
def card():
    return load_world_model(None)[1]


@pytest.fixture(scope="module")
def display():
    """A held-out phantom's frontal view as a processed radiograph, with the noise by which
    every row and column of a recorded image varies (the display chain clips air to 0)."""
    drr = frontal_drr(procedural_chest(102), 1.4, 420.0)
    rng = np.random.default_rng(0)
    shown = styled_display(drr, ("unsharp",), rng)
    return (0.98 * shown + 0.02 * rng.random(shown.shape)).astype(np.float32)


def _rad(image) -> Radiograph:
    return Radiograph(image, (1.4, 1.4), "PA", {"magnification": SAMPLING.sdd / SAMPLING.sod})


def _pad(image, top, bottom, left, right, value):
    return np.pad(image, ((top, bottom), (left, right)), constant_values=value)


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_letterboxed_image_gets_the_images_model_input(display, card, value):
    assert content_box(display) == (slice(0, 300), slice(0, 300)), "the fixture must vary everywhere"
    padded = _pad(display, 20, 45, 130, 70, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want, got = radiograph_input(_rad(display), card), radiograph_input(_rad(padded), card)
    np.testing.assert_array_equal(got.covered, want.covered)
    np.testing.assert_allclose(got.image, want.image, atol=1e-6)
    assert any("20 rows at the top, 45 at the bottom, 130 columns on the left and 70 on the "
               "right" in n for n in got.notes)
    assert not any("padding" in n for n in want.notes)


def test_only_edge_rows_of_a_single_value_are_cut(display):
    img = _pad(display, 3, 0, 0, 5, 0.0)
    img[1, 7] = 0.5                     # one recorded pixel: that row is image, and all below it
    img[3:, 100] = 0.25                 # a uniform column inside the image stays
    rows, cols = content_box(img)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (1, 303, 0, 300)


def test_line_integrals_and_blank_images_are_left_whole(display):
    notes: list = []
    li = Radiograph(_pad(display, 10, 10, 10, 10, 0.0), (1.4, 1.4), "PA", {"units": LINE_INTEGRAL})
    assert without_padding(li, notes) is li
    blank = _rad(np.zeros((50, 60), np.float32))
    assert without_padding(blank, notes) is blank and notes == []


def test_real_radiograph_letterboxed_scores_as_itself(shared_data, card):
    cr = read_cxr(shared_data / "chest_cr_pa.dcm")
    h, w = cr.image.shape
    boxed = Radiograph(_pad(cr.image, 0, 0, int(0.3 * w), int(0.3 * w), 0.0), cr.spacing,
                       cr.view_position, dict(cr.metadata), cr.spacing_is_default)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want, got = radiograph_input(cr, card), radiograph_input(boxed, card)
    np.testing.assert_array_equal(got.anatomy, want.anatomy)
    np.testing.assert_allclose(got.image, want.image, atol=1e-6)

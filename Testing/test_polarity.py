"""A negative radiograph (lungs bright, bone dark) is inverted back; an upright one never is.

Upright and negative chests must be told apart by both anatomical tests of
:mod:`XrayWorldModel.infer.polarity`, and a chest moved aside, which fools the first test,
must not be inverted.
"""
from __future__ import annotations

import warnings

import numpy as np
from chest_drr import frontal_drr
from PIL import Image

from XrayWorldModel.data import ViewSampling
from XrayWorldModel.data.radiograph_style import draw_effects, styled_display
from XrayWorldModel.infer.domain import radiograph_input, to_model_input
from XrayWorldModel.infer.polarity import polarity_evidence, upright
from XrayWorldModel.io.cxr import read_cxr
from XrayWorldModel.phantom import procedural_chest
from XrayWorldModel.radiograph import LINE_INTEGRAL, Radiograph
from XrayWorldModel.weights.loading import load_world_model

SAMPLING = ViewSampling()
PITCH_MM, WIDTH_MM = 1.0, 430.0
#: Held-out phantom seeds and radiograph-style draws, fixed before any result was seen.
SEEDS = (100, 101)
STYLES = (0, 1, 2)


def _frontal(seed: int, moved_mm: float = 0.0) -> np.ndarray:
    """Frontal DRR of phantom ``seed``, the beam moved ``moved_mm`` to the patient's left."""
    return frontal_drr(procedural_chest(seed), PITCH_MM, WIDTH_MM, (moved_mm, 0.0, 0.0))


def _displays(moved_mm: float = 0.0):
    for seed in SEEDS:
        frontal = _frontal(seed, moved_mm)
        for s in STYLES:
            rng = np.random.default_rng(s)
            yield styled_display(frontal, draw_effects(0.5, rng), rng).astype(np.float32)


def _radiograph(image) -> Radiograph:
    return Radiograph(image, (PITCH_MM, PITCH_MM), "PA", {"magnification": SAMPLING.sdd / SAMPLING.sod})


def test_upright_and_negative_chests_are_told_apart():
    for display in _displays():
        up, neg = polarity_evidence(display), polarity_evidence(1.0 - display)
        assert not up.negative and up.mediastinum_over_lungs > 0.2, up
        assert neg.negative, neg


def test_chest_moved_aside_is_not_inverted():
    """15 % of the field aside, a lung sits where the mediastinum was: the first test
    alone would call the image a negative; the second keeps it upright."""
    fooled = 0
    for display in _displays(moved_mm=0.15 * WIDTH_MM):
        ev = polarity_evidence(display)
        fooled += ev.mediastinum_over_lungs < 0
        assert not ev.negative, ev
    assert fooled, "the moved chest no longer tests the second check"


def test_negative_gets_the_upright_images_model_input():
    display = next(_displays())
    _, card = load_world_model(None)
    up = to_model_input(_radiograph(display), SAMPLING, card["domain"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # no "mirrored" warning for the negative
        neg = to_model_input(_radiograph(1.0 - display), SAMPLING, card["domain"])
    np.testing.assert_allclose(neg.image, up.image, atol=1e-5)
    assert any("negative" in n for n in neg.notes)
    assert not any("negative" in n for n in up.notes)


def test_line_integrals_are_never_inverted():
    li = _frontal(SEEDS[0])
    rad = Radiograph(li.max() - li, (PITCH_MM,) * 2, "PA", {"units": LINE_INTEGRAL})
    notes: list = []
    assert upright(rad, notes) is rad and notes == []


def test_real_radiograph_saved_as_a_negative_png(shared_data, tmp_path):
    """The shared CR (MONOCHROME1) written to PNG without inverting: read as the DICOM is."""
    cr = read_cxr(shared_data / "chest_cr_pa.dcm")
    assert polarity_evidence(cr.image).mediastinum_over_lungs > 0.2
    negative = tmp_path / "negative.png"
    Image.fromarray(np.round((1.0 - cr.image) * 65535).astype(np.uint16)).save(negative)
    _, card = load_world_model(None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = radiograph_input(cr, card)
        got = radiograph_input(read_cxr(negative), card)
    assert any("negative" in n for n in got.notes)
    assert not any("mirrored" in n for n in got.notes)
    a, b = got.image - got.image.mean(), want.image - want.image.mean()
    assert float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())) > 0.99


def _table() -> None:
    """The two tests' ranges over this file's images (README's figures)."""
    groups = {"upright": list(_displays()), "negative": [1.0 - d for d in _displays()],
              "upright, 15 % aside": list(_displays(moved_mm=0.15 * WIDTH_MM))}
    from conftest import SHARED_DATA
    cr = SHARED_DATA / "chest_cr_pa.dcm"
    if cr.is_file():           # the real CR as read, and as a PNG saved without inverting
        image = read_cxr(cr).image
        groups.update({"the shared CR": [image], "the shared CR, negative": [1.0 - image]})
    print("| images | mediastinum over lungs | lower image over lungs |\n|---|---|---|")
    for name, images in groups.items():
        ev = [polarity_evidence(d) for d in images]
        cols = [[getattr(e, k) for e in ev] for k in ("mediastinum_over_lungs", "lower_over_lungs")]
        print(f"| {name} ({len(ev)}) | " + " | ".join(f"{min(c):+.2f} .. {max(c):+.2f}" for c in cols)
              + " |")


if __name__ == "__main__":
    _table()

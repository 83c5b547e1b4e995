"""Make a training DRR look like what a real radiograph becomes at inference.

A real chest radiograph differs from a DRR in ways the inference's domain mapping
(:mod:`XrayWorldModel.infer.domain`: a histogram match onto the training DRRs) cannot undo:
scatter haze, quantum noise and detector blur; the detector's processing (a look-up table
or gamma, unsharp masking, local equalisation); collimator edges; burned-in side markers and
text; 8-bit PNG/JPEG export. :func:`style_context` simulates that chain on the context
(input) view of a training sample, then maps the result back to line integrals by the
inference's rule (body quantiles matched onto the clean view's own, ramp to air below), so
the model is trained on what it will be given. Targets stay clean DRRs.

Each effect is applied with the configured probability (``views.radiograph_style``, default
0: off, and then nothing here runs and no random number is drawn), its parameters drawn from
the sample's own generator, so a sample is the same for a seed on any rank.

The chain, in the order a radiograph is made (``EFFECTS``):

1. ``scatter``: transmission ``T = exp(-L)`` plus a broad blur of it (scatter), which lowers
   the line integrals most behind dense tissue (haze).
2. ``noise``: quantum noise on ``T`` (Gaussian approximation of Poisson counts).
3. ``blur``: the detector's point spread (Gaussian, under 1.5 px).
4. then the image is windowed to display values in [0, 1] (bone bright), and
   ``gamma`` (a gamma or a sigmoid look-up table), ``unsharp`` (unsharp masking, large
   kernel), ``equalise`` (contrast-limited adaptive histogram equalisation), ``collimation``
   (border bands, black or white), ``markers`` (an L/R marker and a line of text, drawn as
   bright pixels in a small built-in bitmap font) and ``quantise`` (8 bits, sometimes JPEG).
"""
from __future__ import annotations

import io
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage as ndi

EFFECTS = ("scatter", "noise", "blur", "gamma", "unsharp", "equalise", "collimation",
           "markers", "quantise")
#: Fine-scale detail enhancement: in the chain after ``unsharp``, but drawn on its own
#: (``views.fine_detail``), so recipes that predate it draw what they always drew.
DETAIL = "detail"
#: The settings of :class:`~XrayWorldModel.data.views.ViewSampling` that change the context
#: view only (:func:`augment_context`), each a probability; 0 = off, nothing drawn.
CONTEXT_AUGMENTATIONS = ("radiograph_style", "field_narrowing", "fine_detail")
#: Fraction of the view's maximum above which a clean DRR pixel is body (the rule the
#: inference's domain reference uses).
BODY_FRACTION = 0.05
N_QUANTILES = 101
#: Fractions of the image each side of a narrowed field loses (:func:`narrow_field`): the
#: sides more than the top and bottom, as a chest radiograph is framed. The real CR of
#: ``../shared/data`` lands 12-16 % in from each edge of the model's field.
FIELD_CUT_LR = (0.05, 0.22)
FIELD_CUT_SI = (0.0, 0.15)

#: A 3x5 bitmap font (rows top to bottom, '#' lit) for side markers and burned-in text.
_FONT_ROWS = {
    "0": "###|#.#|#.#|#.#|###", "1": ".#.|##.|.#.|.#.|###", "2": "###|..#|###|#..|###",
    "3": "###|..#|.##|..#|###", "4": "#.#|#.#|###|..#|..#", "5": "###|#..|###|..#|###",
    "6": "###|#..|###|#.#|###", "7": "###|..#|.#.|.#.|.#.", "8": "###|#.#|###|#.#|###",
    "9": "###|#.#|###|..#|###", "A": ".#.|#.#|###|#.#|#.#", "C": "###|#..|#..|#..|###",
    "D": "##.|#.#|#.#|#.#|##.", "E": "###|#..|##.|#..|###", "H": "#.#|#.#|###|#.#|#.#",
    "I": "###|.#.|.#.|.#.|###", "L": "#..|#..|#..|#..|###", "N": "#.#|###|###|#.#|#.#",
    "O": "###|#.#|#.#|#.#|###", "P": "##.|#.#|##.|#..|#..", "R": "##.|#.#|##.|#.#|#.#",
    "S": "###|#..|###|..#|###", "T": "###|.#.|.#.|.#.|.#.", "U": "#.#|#.#|#.#|#.#|###",
    "X": "#.#|#.#|.#.|#.#|#.#", ":": "...|.#.|...|.#.|...", "/": "..#|..#|.#.|#..|#..",
    " ": "...|...|...|...|...",
}
FONT = {c: np.array([[ch == "#" for ch in row] for row in rows.split("|")])
        for c, rows in _FONT_ROWS.items()}
_WORDS = ("PA", "AP", "CHEST", "ERECT", "PORTABLE", "DX", "CR", "UPRIGHT", "SUPINE", "LEFT")


# ------------------------------------------------------------------- physics (line integrals)
def add_scatter(transmission: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``T + k * blur(T)``: a broad, smooth scatter field (k 0.02-0.2, sigma 5-15 % of the
    image) that hazes the dense regions most, as scatter without a grid does."""
    k = rng.uniform(0.02, 0.2)
    sigma = rng.uniform(0.05, 0.15) * max(transmission.shape)
    return transmission + k * ndi.gaussian_filter(transmission, sigma, mode="nearest")


def add_quantum_noise(transmission: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian approximation of Poisson noise at 10^3.5-10^5 photons per unexposed pixel."""
    photons = 10.0 ** rng.uniform(3.5, 5.0)
    t = np.clip(transmission, 1e-6, None)
    return np.clip(t + rng.standard_normal(t.shape) * np.sqrt(t / photons), 1e-6, None)


def detector_blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The detector's point spread: a Gaussian of 0.3-1.2 pixels."""
    return ndi.gaussian_filter(image, rng.uniform(0.3, 1.2), mode="nearest")


def to_display(line_integrals: np.ndarray) -> np.ndarray:
    """A window over the robust range (0.5th-99.5th percentile) to [0, 1], bone bright."""
    lo, hi = np.percentile(line_integrals, [0.5, 99.5])
    return np.clip((line_integrals - lo) / max(hi - lo, 1e-9), 0.0, 1.0)


# --------------------------------------------------------------------- detector processing
def apply_lut(display: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A monotone look-up table: a gamma (0.6-1.6) or a sigmoid (centre 0.4-0.6, width
    0.15-0.3) rescaled to [0, 1], each half the time."""
    if rng.random() < 0.5:
        return np.clip(display, 0.0, 1.0) ** rng.uniform(0.6, 1.6)
    c, w = rng.uniform(0.4, 0.6), rng.uniform(0.15, 0.3)
    s = 1.0 / (1.0 + np.exp(-(display - c) / w))
    lo, hi = 1.0 / (1.0 + np.exp(c / w)), 1.0 / (1.0 + np.exp(-(1.0 - c) / w))
    return (s - lo) / (hi - lo)


def _sharpen(display: np.ndarray, rng: np.random.Generator, amount, kernel) -> np.ndarray:
    """``D + a (D - blur(D))`` in [0, 1], ``a`` drawn from ``amount`` and the blur's sigma
    from ``kernel`` (fractions of the image's longer side), in that order."""
    a = rng.uniform(*amount)
    sigma = rng.uniform(*kernel) * max(display.shape)
    return np.clip(display + a * (display - ndi.gaussian_filter(display, sigma, mode="nearest")),
                   0.0, 1.0)


def unsharp_mask(display: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``D + a (D - blur(D))``, a 0.3-1.5 and a large kernel (3-15 % of the image): the
    edge and detail enhancement of clinical processing."""
    return _sharpen(display, rng, (0.3, 1.5), (0.03, 0.15))


def enhance_fine_detail(display: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``D + a (D - blur(D))`` at a fine scale, a 0.5-2 and a kernel of 1.1-2.3 % of the
    image (0.7-1.5 px at 64 px): the small-scale band of multi-scale clinical processing,
    which leaves ribs and vessel edges sharper at the model's resolution than a DRR. The
    real CR's finest band holds 0.26 of its body contrast at 64 px (``tools/fine_band.py``),
    in the upper tail of the contexts the style chain makes (0.17-0.19 on average) and above
    what the large kernel of :func:`unsharp_mask` gives a DRR (0.18-0.19; clean 0.12-0.14)."""
    return _sharpen(display, rng, (0.5, 2.0), (0.011, 0.023))


def equalise(display: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (tiles of 1/8-1/4 of the image,
    clip limit 0.005-0.03), blended with the input by 0.3-1."""
    from skimage.exposure import equalize_adapthist
    kernel = max(4, int(round(max(display.shape) * rng.uniform(0.125, 0.25))))
    eq = equalize_adapthist(np.clip(display, 0.0, 1.0), kernel_size=kernel,
                            clip_limit=rng.uniform(0.005, 0.03))
    beta = rng.uniform(0.3, 1.0)
    return (1.0 - beta) * display + beta * eq


# ------------------------------------------------------------------------ burned-in things
def collimate(display: np.ndarray, rng: np.random.Generator,
              value: Optional[float] = None) -> Tuple[np.ndarray, Tuple[int, int, int, int]]:
    """(image with border bands set to ``value``, band widths (top, bottom, left, right)):
    each side 0-12 % of the image, at least one side at least 3 %; black (0, a shutter) or
    white (1, unexposed) half the time unless ``value`` is given."""
    h, w = display.shape
    bands = [int(rng.integers(0, int(0.12 * n) + 1)) for n in (h, h, w, w)]
    side = int(rng.integers(4))
    bands[side] = max(bands[side], max(1, int(round(0.03 * (h if side < 2 else w)))))
    fill = (0.0 if rng.random() < 0.5 else 1.0) if value is None else float(value)
    out = display.copy()
    t, b, l, r = bands
    out[:t] = fill
    out[h - b:] = fill
    out[:, :l] = fill
    out[:, w - r:] = fill
    return out, (t, b, l, r)


def text_mask(text: str, scale: int = 1) -> np.ndarray:
    """Lit pixels of ``text`` in the built-in 3x5 font (one blank column between glyphs),
    each font pixel ``scale`` x ``scale``; unknown characters are blank."""
    glyphs = []
    for ch in text.upper():
        glyphs += [FONT.get(ch, FONT[" "]), np.zeros((5, 1), bool)]
    mask = np.concatenate(glyphs[:-1], axis=1) if glyphs else np.zeros((5, 0), bool)
    return np.kron(mask, np.ones((scale, scale), bool)).astype(bool)


def _stamp(image: np.ndarray, mask: np.ndarray, row: int, col: int, value: float) -> None:
    h, w = image.shape
    mh, mw = min(mask.shape[0], h - row), min(mask.shape[1], w - col)
    if mh > 0 and mw > 0:
        region = image[row:row + mh, col:col + mw]
        region[mask[:mh, :mw]] = value


def random_text(rng: np.random.Generator) -> str:
    """A plausible burned-in annotation: a word and a date or time."""
    word = _WORDS[int(rng.integers(len(_WORDS)))]
    if rng.random() < 0.5:
        day, month, year = rng.integers(1, 29), rng.integers(1, 13), rng.integers(0, 100)
        return f"{word} {day:02d}/{month:02d}/{year:02d}"
    return f"{word} {rng.integers(0, 24):02d}:{rng.integers(0, 60):02d}"


def burn_in_markers(display: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An "L" or "R" side marker in an upper corner and a line of text along the top or
    bottom edge, as bright (0.85-1) pixels; font pixels of 1 px per 96 image pixels."""
    out = display.copy()
    h, w = out.shape
    scale = max(1, int(round(max(h, w) / 96)))
    value = rng.uniform(0.85, 1.0)
    marker = text_mask("L" if rng.random() < 0.5 else "R", 2 * scale)
    margin = max(1, int(round(0.04 * w)))
    col = margin if rng.random() < 0.5 else w - margin - marker.shape[1]
    _stamp(out, marker, margin, max(0, col), value)
    line = text_mask(random_text(rng), scale)
    row = h - margin - line.shape[0] if rng.random() < 0.5 else margin + marker.shape[0] + 1
    _stamp(out, line, max(0, row), margin, value)
    return out


def quantise(display: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """8-bit export: rounding to 256 levels, and half the time JPEG at quality 30-95."""
    levels = np.clip(np.round(np.clip(display, 0.0, 1.0) * 255.0), 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        from PIL import Image
        buf = io.BytesIO()
        Image.fromarray(levels).save(buf, format="JPEG", quality=int(rng.integers(30, 96)))
        buf.seek(0)
        levels = np.asarray(Image.open(buf).convert("L"))
    return levels.astype(np.float64) / 255.0


# --------------------------------------------------------------------------------- the chain
def back_to_line_integrals(display: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """The inference's domain mapping with the clean view as the reference: body pixels
    (above 5 % of the robust range) matched onto the clean view's body quantiles, values
    below ramping linearly to air (0). Kept here because the data layer may not import
    :mod:`XrayWorldModel.infer.domain`; the rule is the same."""
    top = float(clean.max())
    if top <= 0:
        return np.zeros_like(clean)
    thr_ref = BODY_FRACTION * top
    probs = np.linspace(0.0, 1.0, N_QUANTILES)
    q_ref = np.quantile(clean[clean > thr_ref], probs)
    lo, hi = np.percentile(display, [0.5, 99.5])
    body = display[display > lo + BODY_FRACTION * (hi - lo)]
    body = body if body.size >= 2 else display.ravel()
    q_src = np.maximum.accumulate(np.quantile(body, probs) + np.arange(N_QUANTILES) * 1e-9)
    out = np.interp(display, q_src, q_ref)
    low = display < q_src[0]
    lo_val = float(display.min())
    ramp = np.clip((display - lo_val) / max(q_src[0] - lo_val, 1e-9), 0.0, 1.0)
    out[low] = ramp[low] * max(q_ref[0], thr_ref)
    return out


def radiograph_style(line_integrals: np.ndarray, effects: Sequence[str],
                     rng: np.random.Generator) -> np.ndarray:
    """The view ``[H, W]`` (line integrals) made into a radiograph with ``effects`` (names
    from :data:`EFFECTS`, applied in that order) and mapped back to line integrals."""
    clean = np.clip(np.asarray(line_integrals, dtype=np.float64), 0.0, None)
    return back_to_line_integrals(styled_display(clean, effects, rng), clean).astype(np.float32)


def styled_display(line_integrals: np.ndarray, effects: Sequence[str],
                   rng: np.random.Generator) -> np.ndarray:
    """The view ``[H, W]`` (line integrals) as the radiograph ``effects`` make of it, in
    display values (bone bright, [0, 1]): what a radiograph file would hold, before any
    mapping back. Evaluation feeds it to the inference's own input path."""
    unknown = set(effects) - set(EFFECTS) - {DETAIL}
    if unknown:
        raise ValueError(f"unknown radiograph effects {sorted(unknown)}; known: "
                         f"{EFFECTS + (DETAIL,)}")
    clean = np.clip(np.asarray(line_integrals, dtype=np.float64), 0.0, None)
    lint = clean
    if "scatter" in effects or "noise" in effects:
        t = np.exp(-clean)
        t = add_scatter(t, rng) if "scatter" in effects else t
        t = add_quantum_noise(t, rng) if "noise" in effects else t
        lint = -np.log(np.clip(t, 1e-6, None))
    if "blur" in effects:
        lint = detector_blur(lint, rng)
    d = to_display(lint)
    steps = (("gamma", apply_lut), ("unsharp", unsharp_mask), (DETAIL, enhance_fine_detail),
             ("equalise", equalise),
             ("collimation", lambda x, g: collimate(x, g)[0]), ("markers", burn_in_markers),
             ("quantise", quantise))
    for name, step in steps:
        if name in effects:
            d = step(d, rng)
    return d


def draw_effects(probability: float, rng: np.random.Generator) -> Tuple[str, ...]:
    """The effects one view gets: each of :data:`EFFECTS` with ``probability``."""
    picks = rng.random(len(EFFECTS)) < probability
    return tuple(e for e, keep in zip(EFFECTS, picks) if keep)


def narrow_field(line_integrals: np.ndarray, rng: np.random.Generator
                 ) -> Tuple[np.ndarray, Tuple[int, int, int, int]]:
    """(the view with only a rectangle of it kept and air (0) outside, the cuts (top,
    bottom, left, right) in pixels). A radiograph is framed to the thorax, often tighter
    than the body, and ``to_model_input`` pads it with air to the model's field, so the
    model meets a chest cut off by the image's edges that no training DRR showed. Each side
    is cut by a fraction drawn from :data:`FIELD_CUT_SI` (top, bottom) or
    :data:`FIELD_CUT_LR` (left, right); a 35 x 43 cm detector alone covers about 73 x 90 %
    of the model's 48 cm field, collimation less."""
    out = np.array(line_integrals, copy=True)
    h, w = out.shape
    cuts = [int(round(rng.uniform(*FIELD_CUT_SI) * h)) for _ in range(2)]
    cuts += [int(round(rng.uniform(*FIELD_CUT_LR) * w)) for _ in range(2)]
    t, b, l, r = cuts
    out[:t] = 0.0
    out[h - b:] = 0.0
    out[:, :l] = 0.0
    out[:, w - r:] = 0.0
    return out, (t, b, l, r)


def style_context(context: torch.Tensor, probability: float, rng: np.random.Generator,
                  field_probability: float = 0.0, detail_probability: float = 0.0
                  ) -> torch.Tensor:
    """The context view ``[H, W]`` (a tensor on any device) with radiograph effects, each
    with ``probability``, fine detail enhancement with ``detail_probability``, then, with
    ``field_probability``, a narrower field (:func:`narrow_field`). Returned unchanged, and
    no random number drawn, for probabilities of 0 (so runs without one draw what they
    always drew; the later settings draw after the earlier ones for the same reason)."""
    effects = draw_effects(probability, rng) if probability > 0 else ()
    narrow = field_probability > 0 and rng.random() < field_probability
    if detail_probability > 0 and rng.random() < detail_probability:
        effects = effects + (DETAIL,)
    if not effects and not narrow:
        return context
    view = context.detach().cpu().numpy()
    view = radiograph_style(view, effects, rng) if effects else view
    view = narrow_field(view, rng)[0] if narrow else view
    return torch.from_numpy(np.ascontiguousarray(view, dtype=np.float32)).to(
        device=context.device, dtype=context.dtype)


def augment_context(views: torch.Tensor, settings, rng: np.random.Generator) -> torch.Tensor:
    """A sample's views ``[1+K, H, W]`` with the context (the first) augmented by the
    :data:`CONTEXT_AUGMENTATIONS` of ``settings`` (a ``ViewSampling``); the targets stay
    clean DRRs. Unchanged, nothing drawn, when all are off."""
    if not any(getattr(settings, name) for name in CONTEXT_AUGMENTATIONS):
        return views
    first = style_context(views[0], settings.radiograph_style, rng, settings.field_narrowing,
                          settings.fine_detail)
    return torch.cat([first[None], views[1:]])

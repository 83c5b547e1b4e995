"""``xray2xray demo``: the whole promise on one page, offline, in seconds.

A built-in procedural chest (or the user's radiograph) goes through inference with the
default model; the page shows the input, the predicted views (next to the true ones when the
input is a phantom, whose truth is known), slices of the reconstructed volume, and the scores.
"""
from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..config import TrainConfig
from ..drr import DRRRenderer
from ..fileutil import atomic_path
from ..io import read_cxr
from ..phantom import procedural_chest
from ..radiograph import Radiograph
from .domain import LINE_INTEGRAL
from .outputs import input_info, results_dict, write_outputs
from .pipeline import load_inference_model, run_inference
from .trust import score_lines
from .uncertainty import DEFAULT_PASSES

#: The demo phantom's seed: far from the seeds the demo model was trained on.
DEMO_SEED = 90210
TILE = 192


def demo_phantom(sampling, seed: int = DEMO_SEED):
    """(frontal Radiograph, {angle: true DRR}) of a procedural chest at the model's geometry."""
    vol = procedural_chest(seed)
    g = sampling.geometry([0.0, 90.0, 180.0, 270.0], 0.0, vol.center)
    drrs = DRRRenderer(vol, "fast", "cpu", sampling.mu_water).render(g)
    rad = Radiograph(drrs[0], (sampling.pixel_spacing, sampling.pixel_spacing), "PA",
                     {"source": f"procedural chest, seed {seed}", "units": LINE_INTEGRAL})
    return rad, {a: d for a, d in zip((0.0, 90.0, 180.0, 270.0), drrs)}


def _tile(img: np.ndarray, lo: Optional[float] = None, hi: Optional[float] = None) -> Image.Image:
    a = np.asarray(img, dtype=np.float64)
    lo = float(np.percentile(a, 1)) if lo is None else lo
    hi = float(np.percentile(a, 99.5)) if hi is None else hi
    u8 = (np.clip((a - lo) / max(hi - lo, 1e-9), 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(u8).resize((TILE, TILE), Image.BILINEAR)


def _slices(volume) -> List[Tuple[str, np.ndarray]]:
    """Axial, coronal and sagittal mid-slices in radiological display (patient's right on
    the left, anterior up for axial, superior up otherwise) from an LPS (x, y, z) array."""
    a = volume.array
    nx, ny, nz = a.shape
    axial = a[:, :, nz // 2].T                    # rows = y (anterior at top), cols = x (right first)
    coronal = a[:, ny // 2, :].T[::-1]            # rows = z (superior up)
    sagittal = a[nx // 2, :, :].T[::-1]           # rows = z, cols = y (anterior on the left)
    return [("axial", axial), ("coronal", coronal), ("sagittal", sagittal)]


def report_lines(result) -> List[str]:
    """The report's text: model, consistency, the trust verdict and the scores as
    ``results.json`` has them (withheld with the reason, or marked out of distribution
    when forced), timings and the preprocessing notes."""
    results = results_dict(result)
    lines = [f"model: {result.model.get('name')} {result.model.get('version') or ''}  "
             f"({result.model.get('intended_use') or 'see the model card'})",
             f"consistency (re-projected volume vs input, NCC): {result.consistency:.3f}"]
    lines += score_lines(results)
    s = results["scores"]
    if not s.get("withheld") and s.get("risk") is None:
        lines.append("cardiovascular risk: n/a (no risk head)")
    lines.append("timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items()))
    lines += [f"note: {note}" for note in result.model_input.notes]
    return lines


def render_report(path: Path, result, model_image: np.ndarray, truth: Optional[Dict[float, np.ndarray]],
                  title: str) -> Path:
    """A one-page PNG: input and predicted views (true ones below for phantoms), volume
    slices, scores, consistency and the model's name and intended use."""
    views = list(zip(result.view_angles, result.views))
    lo, hi = 0.0, float(max(model_image.max(), *(v.max() for _, v in views))) if views else None
    row1 = [("input (model domain)", _tile(model_image, lo, hi))]
    row1 += [(f"predicted {a:g} deg", _tile(v, lo, hi)) for a, v in views]
    rows = [row1]
    if truth:
        rows.append([("true 0 deg", _tile(truth[0.0], lo, hi))] +
                    [(f"true {a:g} deg", _tile(truth[a], lo, hi)) if a in truth else ("", None)
                     for a, _ in views])
    rows.append([(f"volume {n}", _tile(s, -1000.0, 600.0)) for n, s in _slices(result.volume)])
    cols = max(len(r) for r in rows)
    pad, label_h = 8, 18
    W = cols * (TILE + pad) + pad
    wrapped = [part for line in report_lines(result)
               for part in textwrap.wrap(line, max(40, W // 6 - 4))]
    H = len(rows) * (TILE + label_h + pad) + 16 * len(wrapped) + 60
    page = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default()
    draw.text((pad, 10), title, fill="black", font=font)
    y = 34
    for row in rows:
        for c, (name, tile) in enumerate(row):
            x = pad + c * (TILE + pad)
            if tile is not None:
                draw.text((x, y), name, fill="black", font=font)
                page.paste(tile.convert("RGB"), (x, y + label_h))
        y += TILE + label_h + pad
    for i, line in enumerate(wrapped):
        draw.text((pad, y + 4 + 16 * i), line, fill="black", font=font)
    with atomic_path(path) as tmp:
        page.save(tmp, format="PNG")
    return path


def run_demo(out_dir, cxr: Optional[str] = None, model=None, volume_size: int = 128,
             device="cpu", uncertainty: int = DEFAULT_PASSES) -> Dict:
    """Run the demo; returns the results dict (``results.json``) with the report's name.
    ``uncertainty``: test-time augmentation passes of the std maps (0: none)."""
    t0 = time.perf_counter()
    out = Path(out_dir).expanduser()
    if cxr is not None:       # a bad radiograph fails before the model is loaded
        rad = read_cxr(cxr, check=True)
    loaded = load_inference_model(model, device)
    sampling = TrainConfig.from_dict(loaded[1]["config"]).views
    truth, info = None, None
    if cxr is None:
        rad, truth = demo_phantom(sampling)
        info = {"path": rad.metadata["source"], "view_position": "PA",
                "shape": list(rad.image.shape), "spacing_mm": list(rad.spacing),
                "spacing_is_default": False}
        title = f"Xray2Xray demo: procedural chest (seed {DEMO_SEED}), truth shown below"
    else:
        info = input_info(Path(cxr), rad)
        title = f"Xray2Xray demo: {Path(cxr).name}"
    result = run_inference(rad, loaded, (90.0, 180.0, 270.0), volume_size,
                           uncertainty=uncertainty)
    data = write_outputs(result, out, info)
    render_report(out / "report.png", result, result.model_input.image, truth, title)
    data["report"] = "report.png"
    data["wall_time_s"] = round(time.perf_counter() - t0, 2)
    return data

"""The study's figures: ROC curves per task (every method; the largest label fraction solid,
the others dashed) and rows of frontal input, true and predicted lateral, true and
reconstructed axial mid-slice. Drawn with matplotlib's object API (no pyplot, no global
backend change) when it is installed, else with Pillow (plainer, same content)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence, Tuple

import numpy as np

COLOURS = {"supervised": (31, 119, 180), "mae": (255, 127, 14), "xray2xray": (214, 39, 40),
           "oracle": (44, 160, 44)}
PANELS = (("frontal", "frontal input (0 deg)"), ("true_lateral", "true lateral (90 deg)"),
          ("predicted_lateral", "predicted lateral"), ("true_slice", "true axial mid-slice"),
          ("reconstructed_slice", "reconstructed mid-slice"))


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure, FigureCanvasAgg


def _display(key: str, img: np.ndarray) -> Tuple[np.ndarray, float, float]:
    """A panel as shown (slices transposed so rows run posterior-anterior) and its window."""
    if key.endswith("slice"):
        return img.T, -1000.0, 600.0
    lo, hi = np.percentile(img, [0.5, 99.5])
    return img, float(lo), float(hi if hi > lo else lo + 1.0)


# ----------------------------------------------------------------------------- ROC
def roc_figure(path: Path, curves: Mapping[str, Mapping[str, Mapping[float, Tuple]]],
               titles: Mapping[str, str], method_titles: Mapping[str, str]) -> Path:
    """``curves[task][method][fraction] = (fpr, tpr, auroc)``; one panel per task."""
    tasks = list(curves)
    mpl = _matplotlib()
    if mpl is not None:
        Figure, Canvas = mpl
        cols = min(3, len(tasks))
        rows = -(-len(tasks) // cols)
        fig = Figure(figsize=(4.2 * cols, 4.0 * rows), dpi=100)
        Canvas(fig)
        for i, task in enumerate(tasks):
            ax = fig.add_subplot(rows, cols, i + 1)
            ax.plot([0, 1], [0, 1], color="0.8", lw=1)
            for method, by_frac in curves[task].items():
                fmax = max(by_frac)
                for frac, (fpr, tpr, auc) in sorted(by_frac.items()):
                    c = np.asarray(COLOURS.get(method, (0, 0, 0))) / 255.0
                    auc_txt = "n/a" if auc is None else f"{auc:.2f}"
                    ax.plot(fpr, tpr, color=c, lw=1.6 if frac == fmax else 1.0,
                            ls="-" if frac == fmax else "--",
                            label=f"{method} {frac:g} ({auc_txt})")
            ax.set_title(titles.get(task, task))
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.legend(fontsize=6, loc="lower right")
        fig.tight_layout()
        fig.savefig(str(path))
        return path
    return _roc_pillow(path, curves, titles)


def _roc_pillow(path, curves, titles) -> Path:
    from PIL import Image, ImageDraw
    size, pad = 260, 30
    tasks = list(curves)
    cols = min(3, len(tasks))
    rows = -(-len(tasks) // cols)
    im = Image.new("RGB", (cols * (size + 2 * pad), rows * (size + 2 * pad)), "white")
    d = ImageDraw.Draw(im)
    for i, task in enumerate(tasks):
        ox = (i % cols) * (size + 2 * pad) + pad
        oy = (i // cols) * (size + 2 * pad) + pad
        d.rectangle([ox, oy, ox + size, oy + size], outline=(0, 0, 0))
        d.line([ox, oy + size, ox + size, oy], fill=(200, 200, 200))
        d.text((ox, oy - pad + 8), titles.get(task, task), fill=(0, 0, 0))
        ly = oy + size - 12 * len([1 for m in curves[task] for _ in curves[task][m]]) - 4
        for method, by_frac in curves[task].items():
            fmax = max(by_frac)
            for frac, (fpr, tpr, auc) in sorted(by_frac.items()):
                pts = [(ox + float(x) * size, oy + size - float(y) * size) for x, y in zip(fpr, tpr)]
                colour = COLOURS.get(method, (0, 0, 0))
                if frac != fmax:
                    colour = tuple(int(0.5 * c + 127) for c in colour)
                d.line(pts, fill=colour, width=2 if frac == fmax else 1)
                auc_txt = "n/a" if auc is None else f"{auc:.2f}"
                d.text((ox + size - 120, ly), f"{method} {frac:g} {auc_txt}", fill=colour)
                ly += 12
    im.save(path)
    return path


# ----------------------------------------------------------------------------- views
def views_figure(path: Path, rows: Sequence[Mapping[str, np.ndarray]],
                 row_titles: Sequence[str] = ()) -> Path:
    """One row per CT of :data:`PANELS` (from :func:`.world_model.example_row`); a panel a
    row lacks (no true CT behind a real radiograph) is left blank and says so."""
    mpl = _matplotlib()
    if mpl is not None:
        Figure, Canvas = mpl
        fig = Figure(figsize=(2.6 * len(PANELS), 2.8 * len(rows)), dpi=100)
        Canvas(fig)
        for r, row in enumerate(rows):
            for c, (key, title) in enumerate(PANELS):
                ax = fig.add_subplot(len(rows), len(PANELS), r * len(PANELS) + c + 1)
                if key in row:
                    img, lo, hi = _display(key, row[key])
                    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
                else:
                    ax.text(0.5, 0.5, "no truth", ha="center", va="center", fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(title if r == 0 else "", fontsize=8)
                if c == 0 and r < len(row_titles):
                    ax.set_ylabel(row_titles[r], fontsize=8)
        fig.tight_layout()
        fig.savefig(str(path))
        return path
    from PIL import Image, ImageDraw
    tile, pad = 160, 18
    im = Image.new("L", (len(PANELS) * tile, len(rows) * (tile + pad)), 255)
    d = ImageDraw.Draw(im)
    for r, row in enumerate(rows):
        for c, (key, title) in enumerate(PANELS):
            d.text((c * tile + 2, r * (tile + pad) + 3), title, fill=0)
            if key not in row:
                continue
            img, lo, hi = _display(key, row[key])
            u8 = (np.clip((img - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
            im.paste(Image.fromarray(u8).resize((tile, tile)), (c * tile, r * (tile + pad) + pad))
    im.save(path)
    return path


__all__ = ["roc_figure", "views_figure", "PANELS"]

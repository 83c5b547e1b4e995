"""Image-agreement metrics shared by training, evaluation, inference and the study.

Kept torch-free and at the bottom layer so that every caller scores images the same way.
"""
from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity


def psnr(pred: np.ndarray, true: np.ndarray) -> float:
    """PSNR (dB) with the true image's value range as the peak."""
    rng = float(true.max() - true.min()) or 1.0
    mse = float(np.mean((pred.astype(np.float64) - true) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(rng ** 2 / mse)


def ssim(pred: np.ndarray, true: np.ndarray) -> float:
    """SSIM with the true image's value range as the data range."""
    rng = float(true.max() - true.min()) or 1.0
    return float(structural_similarity(true.astype(np.float64), pred.astype(np.float64),
                                       data_range=rng))

"""A 2D radiograph in display convention: bone bright, patient's right on the left for PA."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np


@dataclass
class Radiograph:
    image: np.ndarray                      # float32 [rows, cols], attenuating = bright
    spacing: Tuple[float, float]           # (row, column) pixel spacing in mm at the detector
    view_position: Optional[str] = None    # DICOM ViewPosition (PA, AP, LL, ...) when known
    metadata: Dict[str, Any] = field(default_factory=dict)
    spacing_is_default: bool = False       # True when the header had no usable spacing

    def __post_init__(self):
        self.image = np.asarray(self.image, dtype=np.float32)
        if self.image.ndim != 2:
            raise ValueError(f"Radiograph image must be 2D, got shape {self.image.shape}")
        self.spacing = (float(self.spacing[0]), float(self.spacing[1]))

    @property
    def shape(self):
        return self.image.shape

"""An optional tensor that a model file stores beside its weights and names in its card
(the volume prior, the mean training views): one reader, so every such extra is found,
and missed, the same way."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import numpy as np
from safetensors import safe_open


def read_card_tensor(path, card: Mapping, card_key: str, tensor_key: str) -> Optional[np.ndarray]:
    """The float32 array stored under ``tensor_key`` when the card has an entry ``card_key``
    and the file holds that tensor; None otherwise (an older file without the extra)."""
    if not card.get(card_key) or path is None or not Path(path).is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        if tensor_key not in f.keys():
            return None
        return f.get_tensor(tensor_key).float().numpy()

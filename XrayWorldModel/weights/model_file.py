"""The distributable model format: ONE ``.safetensors`` file whose header carries the JSON
model card (``__metadata__["xray2xray_card"]``).

One file rather than weights plus a sidecar, so a model cannot lose its card when it is
copied, downloaded or attached to an e-mail; safetensors rather than a pickle, so loading a
model from the internet never runs code. The card holds ``content_sha256``, a digest of the
card itself and of every tensor's name, dtype, shape and bytes, so a truncated, corrupted or
edited file is refused instead of silently producing wrong predictions.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Tuple, Union

from safetensors import SafetensorError

from ..conventions import MODEL_FORMAT
from ..errors import UnreadableFileError
from ..fileutil import atomic_path

if TYPE_CHECKING:  # torch is imported only where tensors are touched (``models list`` stays fast)
    import torch

PathLike = Union[str, Path]
CARD_KEY = "xray2xray_card"
DIGEST_KEY = "content_sha256"
#: Layout of the card and tensors; a reader refuses files from a newer layout rather than
#: misreading them. Bump when a change would make older readers load a model wrongly.
FORMAT_VERSION = 1

#: Names and versions become cache file names (``<name>-<version>.safetensors``).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_MAX_HEADER = 100 << 20   # safetensors' own limit on the JSON header


class ModelFileError(UnreadableFileError):
    """A model file that is missing, truncated, corrupted, not safetensors or has no card."""


def check_name(what: str, value: Any, path: Optional[PathLike] = None) -> str:
    """``value`` if it can be part of a file name (letters, digits, ``. _ + -``)."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ModelFileError(f"model card: {what} must be a non-empty string of letters, digits "
                             f"and . _ + - (got {value!r})", path)
    return value


def _canonical(card: Mapping[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in card.items() if k != DIGEST_KEY}, sort_keys=True,
                      separators=(",", ":")).encode()


def content_digest(tensors: Mapping[str, "torch.Tensor"], card: Mapping[str, Any]) -> str:
    """SHA256 of the card (without its digest) and each tensor's name, dtype, shape, bytes.

    Computed from tensors rather than file bytes so it does not depend on how safetensors
    lays the file out, and can be written into the header it describes."""
    import torch
    h = hashlib.sha256(_canonical(card))
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _read_header(path: Path) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(tensor index, card) from the safetensors header alone; checks that the file holds
    every byte the header promises (a truncated download fails here, cheaply)."""
    if not path.is_file():
        raise ModelFileError("no such model file" if not path.exists() else
                             "is a folder, not a model file", path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n <= 0 or n > min(_MAX_HEADER, size - 8):
            raise ModelFileError("not a safetensors model file (no valid header; truncated "
                                 "or another format)", path)
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ModelFileError("not a safetensors model file (its header is not JSON)", path) from None
    if not isinstance(header, dict):
        raise ModelFileError("not a safetensors model file (bad header)", path)
    meta = header.pop("__metadata__", None) or {}
    try:
        end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise ModelFileError("not a safetensors model file (bad tensor index)", path) from None
    if size - 8 - n < end:
        raise ModelFileError(f"file is truncated ({size} bytes, the header needs {8 + n + end})", path)
    if not isinstance(meta, dict) or CARD_KEY not in meta:
        raise ModelFileError(f"safetensors file without an xray2xray model card (a training "
                             f"checkpoint? export it with XrayWorldModel.weights.export_checkpoint)",
                             path)
    try:
        card = json.loads(meta[CARD_KEY])
    except (TypeError, ValueError):
        raise ModelFileError("the model card is not valid JSON", path) from None
    if not isinstance(card, dict) or card.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"the model card's format is not {MODEL_FORMAT!r}", path)
    version = card.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(f"this model file has format version {version!r}, newer than the "
                             f"{FORMAT_VERSION} this Xray2Xray reads; upgrade the package "
                             f"(pip install -U XrayWorldModel)", path)
    return header, card


def read_card(path: PathLike) -> Dict[str, Any]:
    """The model card from the file's header only (no tensors read, no digest checked)."""
    path = Path(path)
    card = _read_header(path)[1]
    check_name("name", card.get("name"), path)
    check_name("version", card.get("version"), path)
    return card


def save_model_file(path: PathLike, tensors: Mapping[str, "torch.Tensor"],
                    card: Mapping[str, Any]) -> Path:
    """Write ``tensors`` and ``card`` (which needs ``name`` and ``version``) as one model
    file, atomically; the card gets ``format`` and ``content_sha256``."""
    from safetensors.torch import save_file   # imports torch
    path = Path(path)
    try:
        full = json.loads(json.dumps(dict(card, format=MODEL_FORMAT, format_version=FORMAT_VERSION),
                                     allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"model card is not JSON-serialisable: {exc}", path) from None
    full.pop(DIGEST_KEY, None)
    check_name("name", full.get("name"), path)
    check_name("version", full.get("version"), path)
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    full[DIGEST_KEY] = content_digest(flat, full)
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata={CARD_KEY: json.dumps(full)})
    return path


def load_model_file(path: PathLike) -> Tuple[Dict[str, "torch.Tensor"], Dict[str, Any]]:
    """(tensors, card) after checking the file is complete and matches its card's digest."""
    from safetensors.torch import load_file   # imports torch
    path = Path(path)
    card = read_card(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(f"cannot read the weights: {reason}", path) from None
    if card.get(DIGEST_KEY) != content_digest(tensors, card):
        raise ModelFileError("contents do not match the SHA256 in the model card (corrupted "
                             "or modified file)", path)
    return tensors, card


def is_model_file(path: PathLike) -> bool:
    """A model file, not checkpoint weights (those have their card in a .json beside them);
    without a .json beside it a broken file is reported as a broken model file."""
    path = Path(path)
    if not path.with_suffix(".json").is_file():
        return True
    try:
        read_card(path)
        return True
    except ModelFileError:
        return False

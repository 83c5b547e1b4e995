"""Training configuration: nested sections, loaded from a JSON/TOML file or a shipped
preset name, with ``section.key=value`` overrides; unknown keys and wrong types fail with
the key named, before any work starts."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from .data import Preprocessing, ViewSampling
from .data.cache import CENTRE_ON, OUTSIDE_BODY
from .errors import InputError
from .typed_config import build_section
from .models import WorldModelConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class DataConfig:
    # CT folder, CSV manifest, or phantom:N (views rendered on the fly); anatomy:K:SRC (K
    # augmented patients per CT of SRC, data/anatomy.py); sources joined by "+" are mixed,
    # in proportion to their counts (phantom:512+anatomy:64:real.csv); or "stacks:PATH" to
    # train from DRR stacks written by `xray2xray drr` (PATH: a folder of stacks, a list file
    # or one stack; angles are the stacks' own, see XrayWorldModel/data/stacks.py)
    source: str = "phantom:64"
    val_source: Optional[str] = None    # held-out CTs or stacks:PATH; None = last val_count of source
    val_count: int = 4
    cache_dir: Optional[str] = None     # None = the user cache dir ($XRAY2XRAY_CACHE)
    grid_size: int = 96                 # preprocessed cube, voxels per side
    grid_spacing: float = 3.5           # mm
    hu_min: float = -1024.0
    hu_max: float = 3071.0
    centre_on: str = "body"             # cube on the body; "chest": apices at one height too;
    #                                     "scan": the CT grid's centre (data/cache.py)
    outside_body: str = "keep"          # "air": the CT table and all else off the body cleared
    max_volumes_in_memory: int = 512    # CT volumes, or DRR stacks in stack mode

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.grid_size, self.grid_spacing, (self.hu_min, self.hu_max),
                             self.centre_on, outside_body=self.outside_body)


@dataclass
class OptimConfig:
    batch_size: int = 16                # global batch (split across ranks)
    steps: int = 2000
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    grad_clip: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.95


@dataclass
class RunConfig:
    out_dir: str = "runs/world-model"
    seed: int = 0
    device: str = "auto"
    deterministic: bool = False
    bf16: bool = True                   # autocast on CUDA
    log_every: int = 10
    val_every: int = 200
    val_angles: Tuple[float, ...] = (90.0,)
    checkpoint_every: int = 200
    keep_last: int = 3


@dataclass
class TrainConfig:
    model: WorldModelConfig = field(default_factory=WorldModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewSampling = field(default_factory=ViewSampling)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> "TrainConfig":
        if self.views.image_size != self.model.image_size:
            raise InputError(f"views.image_size ({self.views.image_size}) must equal "
                             f"model.image_size ({self.model.image_size})")
        if self.optim.batch_size < 1 or self.optim.steps < 1:
            raise InputError("optim.batch_size and optim.steps must be >= 1")
        if self.data.val_count < 0:
            raise InputError("data.val_count must be >= 0")
        if self.data.centre_on not in CENTRE_ON:
            raise InputError(f"data.centre_on must be one of {', '.join(CENTRE_ON)}, "
                             f"not {self.data.centre_on!r}")
        if self.data.outside_body not in OUTSIDE_BODY:
            raise InputError(f"data.outside_body must be one of {', '.join(OUTSIDE_BODY)}, "
                             f"not {self.data.outside_body!r}")
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        sections = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for name, value in data.items():
            if name not in sections:
                raise InputError(f"config: unknown section {name!r} (known: {', '.join(sections)})")
            if not isinstance(value, Mapping):
                raise InputError(f"config: section {name!r} must be a table of keys")
            typ = _SECTION_TYPES[name]
            kwargs[name] = (WorldModelConfig.from_dict(value) if typ is WorldModelConfig
                            else build_section(typ, value, name, label_errors=False))
        return cls(**kwargs).validate()


_SECTION_TYPES = {"model": WorldModelConfig, "data": DataConfig, "views": ViewSampling,
                  "optim": OptimConfig, "run": RunConfig}


def override_value(text: str) -> Any:
    """The value of a ``key=value`` override: JSON when it parses, else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(data: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """``section.key=value`` pairs (value read as JSON, else a string) merged into ``data``."""
    out = {k: dict(v) for k, v in data.items()}
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise InputError(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = override_value(value)
    return out


def load_config(spec: str, overrides: Sequence[str] = ()) -> TrainConfig:
    """A shipped preset name (``cpu-small``, ``paper``) or a .json/.toml file, plus overrides."""
    path = Path(spec)
    if not path.exists() and (CONFIG_DIR / f"{spec}.json").exists():
        path = CONFIG_DIR / f"{spec}.json"
    if not path.exists():
        shipped = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
        raise InputError(f"no such config file or preset (shipped presets: {shipped})", spec)
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError:  # Python < 3.11
                raise InputError("TOML configs need Python 3.11 or newer; use JSON", path) from None
            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"config file is not valid {path.suffix.lstrip('.').upper() or 'JSON'}: {exc}", path) from None
    if not isinstance(data, dict):
        raise InputError("config file must hold a table of sections", path)
    return TrainConfig.from_dict(apply_overrides(data, overrides))

"""The in-silico study's configuration: one JSON file (a shipped preset name such as
``insilico-cpu``, or a path) with nested sections, plus ``section.key=value`` overrides.

Unknown sections or keys and wrong types fail at load time with the key named, before any
work starts. The ``model`` and ``views`` sections are the world model's own
(:class:`~XrayWorldModel.models.WorldModelConfig`, :class:`~XrayWorldModel.data.ViewSampling`);
their encoder part (image and patch size, width, depth, heads, angle features, input scale)
is the one architecture every method trains.

Compute is matched by ``budget.encoder_samples``: every trained method passes that many
images through the encoder with gradients (steps = samples / its batch size). The world
model's context views count as its samples; its EMA target encodings (no gradient),
transition model and decoder come on top, which the results record as wall time.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from ..config import override_value
from ..data import ViewSampling
from ..data.cache import CENTRE_ON
from ..errors import InputError
from ..models import WorldModelConfig
from ..typed_config import build_section, coerce

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
#: Methods in the order they run and are reported.
METHODS = ("supervised", "mae", "xray2xray", "oracle")
#: Methods whose encoder is trained (the oracle is not).
TRAINED = ("supervised", "mae", "xray2xray")
METHOD_TITLES = {"supervised": "Supervised (2D, from scratch)",
                 "mae": "Masked autoencoder (2D self-supervised)",
                 "xray2xray": "Xray2Xray (world model)",
                 "oracle": "Oracle (true 3D quantities)"}


@dataclass
class CohortSection:
    n_cases: int = 300
    first_seed: Optional[int] = None     # None: seed * n_cases (disjoint cohorts per seed)
    shape: Tuple[int, ...] = (128, 128, 96)
    spacing: Tuple[float, ...] = (2.8, 2.8, 3.5)
    prevalence: Optional[float] = None   # one prevalence for all five findings; None: defaults
    hidden: Optional[float] = None       # hidden fraction of the hideable findings; None: defaults
    noise_hu: float = 10.0
    test_fraction: float = 0.33
    dir: Optional[str] = None            # None: OUT/cohort (complete cases are reused)


@dataclass
class DataSection:
    grid_size: int = 96                  # preprocessed cube, voxels per side
    grid_spacing: float = 3.5            # mm
    # the cohort's phantoms lie about their scan's centre already; "scan" keeps the published
    # tables reproducible ("body": centre each CT on its body, as training does by default)
    centre_on: str = "scan"
    cache_dir: Optional[str] = None      # None: OUT/cache


@dataclass
class BudgetSection:
    encoder_samples: int = 48000         # images through the encoder with gradients, per method


@dataclass
class OptimSection:
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    grad_clip: float = 1.0

    def steps(self, samples: int) -> int:
        return max(1, int(math.ceil(samples / self.batch_size)))


@dataclass
class WorldModelSection(OptimSection):
    log_every: int = 20


@dataclass
class SupervisedSection(OptimSection):
    views_per_case: int = 16             # augmented frontal renderings per training CT


@dataclass
class MAESection(OptimSection):
    views_per_case: int = 16
    mask_ratio: float = 0.75
    decoder_dim: int = 64
    decoder_depth: int = 1
    decoder_heads: int = 4
    norm_pix_loss: bool = True


@dataclass
class ProbeSection:
    label_fractions: Tuple[float, ...] = (0.1, 1.0)
    min_labelled: int = 8                # a fraction never labels fewer cases than this
    imagined: Tuple[float, ...] = (90.0,)   # Xray2Xray's imagined-view latents (degrees)
    C: Union[float, str] = "auto"        # logistic inverse L2 strength, or auto (inner CV)
    cox_alpha: Union[float, str] = "auto"
    bootstrap: int = 1000                # resamples for the 95% CIs
    paired_bootstrap: int = 2000         # resamples for Xray2Xray-vs-baseline p-values


@dataclass
class EvaluateSection:
    novel_view_angles: Tuple[float, ...] = (90.0,)
    volume_cases: int = 16               # test CTs for the volume correlation (0: skip)
    volume_size: int = 64
    sweep_step: float = 15.0
    figure_cases: int = 2                # rows of the views figure
    real_ct: Optional[str] = None        # a real chest CT for the real-anatomy check (None: skip)
    real_cxr: Optional[str] = None       # a real frontal radiograph for it (None: skip)


@dataclass
class RunSection:
    out_dir: str = "runs/insilico"
    methods: Tuple[str, ...] = METHODS
    device: str = "auto"
    deterministic: bool = True
    threads: Optional[int] = None        # torch intra-op threads; None: leave as is
    figures: bool = True


SECTIONS = {"cohort": CohortSection, "data": DataSection, "budget": BudgetSection,
            "world_model": WorldModelSection, "supervised": SupervisedSection,
            "mae": MAESection, "probe": ProbeSection, "evaluate": EvaluateSection,
            "run": RunSection}
TOP_LEVEL = {"comment": str, "seed": int}


@dataclass
class StudyConfig:
    comment: str = ""
    seed: int = 0
    cohort: CohortSection = field(default_factory=CohortSection)
    data: DataSection = field(default_factory=DataSection)
    model: Any = None                    # WorldModelConfig
    views: Any = None                    # ViewSampling
    budget: BudgetSection = field(default_factory=BudgetSection)
    world_model: WorldModelSection = field(default_factory=WorldModelSection)
    supervised: SupervisedSection = field(default_factory=SupervisedSection)
    mae: MAESection = field(default_factory=MAESection)
    probe: ProbeSection = field(default_factory=ProbeSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    run: RunSection = field(default_factory=RunSection)
    name: str = "custom"                 # the preset or file it came from (not a JSON key)

    def __post_init__(self):
        if self.model is None:
            self.model = WorldModelConfig()
        if self.views is None:
            self.views = ViewSampling(image_size=self.model.image_size)

    # ------------------------------------------------------------------ checks
    def validate(self) -> "StudyConfig":
        c, p = self.cohort, self.probe
        if self.seed < 0:
            raise InputError(f"config: seed must be >= 0, got {self.seed}")
        if c.n_cases < 4:
            raise InputError(f"config: cohort.n_cases must be at least 4, got {c.n_cases}")
        if c.first_seed is not None and c.first_seed < 0:
            raise InputError("config: cohort.first_seed must be >= 0")
        if len(c.shape) != 3 or min(c.shape) < 8:
            raise InputError(f"config: cohort.shape needs 3 sizes >= 8, got {list(c.shape)}")
        if len(c.spacing) not in (1, 3) or min(c.spacing) <= 0:
            raise InputError(f"config: cohort.spacing needs 1 or 3 positive values, "
                             f"got {list(c.spacing)}")
        for key in ("prevalence", "hidden"):
            v = getattr(c, key)
            if v is not None and not 0.0 <= v <= 1.0:
                raise InputError(f"config: cohort.{key} must be in [0, 1], got {v}")
        if not 0.0 < c.test_fraction < 1.0:
            raise InputError(f"config: cohort.test_fraction must be in (0, 1), got {c.test_fraction}")
        n_test = round(c.n_cases * c.test_fraction)
        if n_test < 2 or c.n_cases - n_test < 2:
            raise InputError(f"config: cohort.n_cases={c.n_cases} with test_fraction="
                             f"{c.test_fraction} leaves fewer than 2 cases in a split")
        if self.views.image_size != self.model.image_size:
            raise InputError(f"config: views.image_size ({self.views.image_size}) must equal "
                             f"model.image_size ({self.model.image_size})")
        if self.data.grid_size < 8 or self.data.grid_spacing <= 0:
            raise InputError("config: data.grid_size must be >= 8 and data.grid_spacing > 0")
        if self.data.centre_on not in CENTRE_ON:
            raise InputError(f"config: data.centre_on must be one of {', '.join(CENTRE_ON)}, "
                             f"not {self.data.centre_on!r}")
        if self.budget.encoder_samples < 1:
            raise InputError("config: budget.encoder_samples must be >= 1")
        for name in ("world_model", "supervised", "mae"):
            s = getattr(self, name)
            if s.batch_size < 1 or s.lr <= 0 or s.warmup_steps < 0 or s.grad_clip <= 0:
                raise InputError(f"config: {name} needs batch_size >= 1, lr > 0, "
                                 "warmup_steps >= 0 and grad_clip > 0")
        for name in ("supervised", "mae"):
            if getattr(self, name).views_per_case < 1:
                raise InputError(f"config: {name}.views_per_case must be >= 1")
        if not 0.0 < self.mae.mask_ratio < 1.0:
            raise InputError(f"config: mae.mask_ratio must be in (0, 1), got {self.mae.mask_ratio}")
        if self.mae.decoder_dim % self.mae.decoder_heads or self.mae.decoder_depth < 0:
            raise InputError("config: mae.decoder_dim must be divisible by mae.decoder_heads "
                             "and mae.decoder_depth >= 0")
        if not p.label_fractions or any(not 0.0 < f <= 1.0 for f in p.label_fractions):
            raise InputError(f"config: probe.label_fractions must lie in (0, 1], "
                             f"got {list(p.label_fractions)}")
        if len(set(p.label_fractions)) != len(p.label_fractions):
            raise InputError("config: probe.label_fractions repeats a value")
        if p.min_labelled < 2:
            raise InputError("config: probe.min_labelled must be >= 2")
        for key in ("C", "cox_alpha"):
            v = getattr(p, key)
            if isinstance(v, str) and v != "auto" or not isinstance(v, str) and not v > 0:
                raise InputError(f"config: probe.{key} must be a positive number or \"auto\", "
                                 f"got {v!r}")
        if p.bootstrap < 0 or p.paired_bootstrap < 0:
            raise InputError("config: probe.bootstrap and probe.paired_bootstrap must be >= 0")
        e = self.evaluate
        if e.volume_cases < 0 or e.figure_cases < 0 or e.volume_size < 8:
            raise InputError("config: evaluate.volume_cases and figure_cases must be >= 0, "
                             "volume_size >= 8")
        if not 0 < e.sweep_step <= 45 or (360.0 / e.sweep_step) % 1:
            raise InputError(f"config: evaluate.sweep_step must divide 360 and be at most 45, "
                             f"got {e.sweep_step}")
        bad = [m for m in self.run.methods if m not in METHODS]
        if bad or not self.run.methods or len(set(self.run.methods)) != len(self.run.methods):
            raise InputError(f"config: run.methods must list distinct methods among "
                             f"{', '.join(METHODS)}, got {list(self.run.methods)}")
        if self.run.threads is not None and self.run.threads < 1:
            raise InputError("config: run.threads must be >= 1")
        return self

    # ------------------------------------------------------------------ derived
    @property
    def methods(self) -> Tuple[str, ...]:
        """The configured methods in report order."""
        return tuple(m for m in METHODS if m in self.run.methods)

    def first_seed(self) -> int:
        c = self.cohort
        return c.first_seed if c.first_seed is not None else self.seed * c.n_cases

    def steps(self, method: str) -> int:
        return getattr(self, method if method != "xray2xray" else "world_model").steps(
            self.budget.encoder_samples)

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"comment": self.comment, "seed": self.seed}
        for name in ("cohort", "data", "model", "views", "budget", "world_model", "supervised",
                     "mae", "probe", "evaluate", "run"):
            out[name] = dataclasses.asdict(getattr(self, name))
        return json.loads(json.dumps(out))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str = "custom") -> "StudyConfig":
        kwargs: Dict[str, Any] = {"name": name}
        for key, value in data.items():
            if key in TOP_LEVEL:
                kwargs[key] = coerce(key, value, TOP_LEVEL[key])
            elif key == "model":
                _need_table(key, value)
                kwargs[key] = WorldModelConfig.from_dict(value)
            elif key == "views":
                _need_table(key, value)
                kwargs[key] = build_section(ViewSampling, value, key)
            elif key in SECTIONS:
                _need_table(key, value)
                kwargs[key] = build_section(SECTIONS[key], value, key)
            else:
                known = ", ".join([*TOP_LEVEL, "model", "views", *SECTIONS])
                raise InputError(f"config: unknown key {key!r} (known: {known})")
        return cls(**kwargs).validate()


def _need_table(key: str, value: Any) -> None:
    if not isinstance(value, Mapping):
        raise InputError(f"config: section {key!r} must be a table of keys")


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """``section.key=value`` (or a top-level ``seed=3``) merged into ``data``; values are
    read as JSON, else taken as a string."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    for item in overrides:
        if "=" not in item:
            raise InputError(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        if "." in key:
            section, name = key.split(".", 1)
            if not section or not name:
                raise InputError(f"override {item!r} must look like section.key=value")
            table = out.setdefault(section, {})
            if not isinstance(table, dict):
                raise InputError(f"override {item!r}: {section!r} is not a section")
            table[name] = override_value(value)
        elif key in TOP_LEVEL:
            out[key] = override_value(value)
        else:
            raise InputError(f"override {item!r} must look like section.key=value "
                             f"(or {' / '.join(k + '=...' for k in TOP_LEVEL)})")
    return out


def shipped_presets() -> Tuple[str, ...]:
    return tuple(sorted(p.stem for p in CONFIG_DIR.glob("insilico-*.json")))


def load_study_config(spec: str, overrides: Sequence[str] = (), seed: Optional[int] = None
                      ) -> StudyConfig:
    """A shipped preset (``insilico-smoke``, ``insilico-cpu``, ``insilico-gpu``) or a JSON
    file, with overrides; ``seed`` (the CLI's ``--seed``) replaces the config's seed."""
    path = Path(spec).expanduser()
    name = path.stem
    if not path.exists() and (CONFIG_DIR / f"{spec}.json").is_file():
        path, name = CONFIG_DIR / f"{spec}.json", str(spec)
    if not path.is_file():
        raise InputError(f"no such study config file or preset (shipped presets: "
                         f"{', '.join(shipped_presets())})", spec)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"study config is not valid JSON: {exc}", path) from None
    if not isinstance(data, dict):
        raise InputError("study config must hold a table of sections", path)
    data = apply_overrides(data, overrides)
    if seed is not None:
        data["seed"] = seed
    return StudyConfig.from_dict(data, name)


__all__ = ["StudyConfig", "load_study_config", "apply_overrides", "shipped_presets", "METHODS",
           "TRAINED", "METHOD_TITLES", "CONFIG_DIR"]

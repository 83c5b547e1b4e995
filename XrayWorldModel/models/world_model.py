"""The world model: encode a view, step it through rotations, decode the imagined views.

Angles are degrees in the public API (0 = PA, 90 = left lateral, as in
:mod:`XrayWorldModel.geometry`). Images are DRR line integrals (roughly 0..10); the model
divides them by ``input_scale`` on the way in and multiplies on the way out, so decoded
images are in the same units as the inputs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Dict, Mapping, Optional

import torch
from torch import nn

from ..errors import InputError
from .decoder import PixelDecoder
from .encoder import VisionEncoder, as_batch
from .transition import TransitionModel

LATENT_LOSSES = ("smooth_l1", "infonce")


@dataclass
class WorldModelConfig:
    """Sizes of E, T and D, and the loss weights. Flat so ``key=value`` overrides stay simple."""

    image_size: int = 64
    patch_size: int = 8
    patch_width: int = 0       # 0: square patches; = image_size: row-band tokens (see encoder)
    embed_dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    transition_depth: int = 2
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    decoder_channels: int = 16
    n_freq: int = 4            # sin/cos frequencies of the angle features
    tilt: bool = False         # action token also embeds a cranio-caudal tilt change
    transition_gate: bool = True   # step(z, 0) is exactly the identity
    pos_embed: str = "sincos"  # fixed 2D sin/cos ("sincos") or learned ("learned") positions
    input_scale: float = 10.0  # DRR line integral that maps to 1.0 inside the model
    # Losses (weights of world_model_losses) and EMA schedule.
    latent_loss: str = "smooth_l1"
    temperature: float = 0.1
    w_latent: float = 1.0
    w_pixel: float = 1.0
    w_rollout: float = 0.5
    w_cycle: float = 0.1
    ssim_weight: float = 1.0
    ema_start: float = 0.996
    ema_end: float = 1.0

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Reject sizes that cannot build a model, naming the offending key."""
        for key in ("image_size", "patch_size", "embed_dim", "depth", "heads",
                    "decoder_dim", "decoder_heads", "n_freq"):
            if getattr(self, key) < 1:
                raise InputError(f"model config: {key} must be >= 1, got {getattr(self, key)}")
        for key in ("transition_depth", "decoder_depth", "decoder_channels"):
            if getattr(self, key) < 0:
                raise InputError(f"model config: {key} must be >= 0, got {getattr(self, key)}")
        if self.patch_width < 0 or (self.patch_width and self.image_size % self.patch_width):
            raise InputError(f"model config: image_size {self.image_size} is not a multiple "
                             f"of patch_width {self.patch_width}")
        if self.image_size % self.patch_size:
            raise InputError(f"model config: image_size {self.image_size} is not a multiple "
                             f"of patch_size {self.patch_size}")
        if self.embed_dim % self.heads:
            raise InputError(f"model config: embed_dim {self.embed_dim} is not divisible by "
                             f"heads {self.heads}")
        if self.decoder_dim % self.decoder_heads:
            raise InputError(f"model config: decoder_dim {self.decoder_dim} is not divisible "
                             f"by decoder_heads {self.decoder_heads}")
        if self.latent_loss not in LATENT_LOSSES:
            raise InputError(f"model config: latent_loss must be one of {LATENT_LOSSES}, "
                             f"got {self.latent_loss!r}")
        if self.pos_embed not in ("sincos", "learned"):
            raise InputError(f"model config: pos_embed must be 'sincos' or 'learned', "
                             f"got {self.pos_embed!r}")
        if self.pos_embed == "sincos" and (self.embed_dim % 4 or self.decoder_dim % 4):
            raise InputError("model config: pos_embed 'sincos' needs embed_dim and decoder_dim "
                             "divisible by 4")
        if self.input_scale <= 0 or self.temperature <= 0:
            raise InputError("model config: input_scale and temperature must be > 0")
        if not 0.0 <= self.ema_start <= self.ema_end <= 1.0:
            raise InputError("model config: need 0 <= ema_start <= ema_end <= 1")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "WorldModelConfig":
        """Build from a mapping (a config file section); unknown keys and wrong types fail."""
        types = {f.name: f.type for f in fields(cls)}
        kwargs = {}
        for key, value in data.items():
            if key not in types:
                raise InputError(f"model config: unknown key {key!r} "
                                 f"(known: {', '.join(sorted(types))})")
            kwargs[key] = _check_type(key, value, types[key])
        return cls(**kwargs)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def preset(cls, name: str, **overrides) -> "WorldModelConfig":
        """A named preset (``paper``, ``cpu-small``) with optional overrides."""
        if name not in PRESETS:
            raise InputError(f"unknown model preset {name!r} (known: {', '.join(PRESETS)})")
        return cls.from_dict({**PRESETS[name], **overrides})


def _check_type(key: str, value: Any, type_name) -> Any:
    expected = {"int": int, "float": float, "bool": bool, "str": str}[
        type_name if isinstance(type_name, str) else type_name.__name__]
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise InputError(f"model config: {key} must be {expected.__name__}, "
                         f"got {type(value).__name__} {value!r}")
    return value


#: ``paper``: ViT-B/16 at 224 as in the successor's recipe; ``cpu-small``: trains on 2 cores,
#: with row-band tokens (2 x 64 pixel patches, see :func:`.encoder.token_grid`) and the latent
#: terms weighted low so the pixel loss leads while the budget is short.
PRESETS: Dict[str, Dict[str, Any]] = {
    "paper": dict(image_size=224, patch_size=16, embed_dim=768, depth=12, heads=12,
                  transition_depth=6, decoder_dim=512, decoder_depth=4, decoder_heads=8,
                  decoder_channels=32, n_freq=8, latent_loss="infonce"),
    "cpu-small": dict(image_size=64, patch_size=2, patch_width=64, embed_dim=128, depth=4,
                      heads=4, transition_depth=2, decoder_dim=128, decoder_depth=2,
                      decoder_heads=4, decoder_channels=16, n_freq=4, w_latent=0.1,
                      w_rollout=0.05, w_cycle=0.01, ssim_weight=0.5),
}


class WorldModel(nn.Module):
    """Vision model E, transition model T and pixel decoder D behind one small API."""

    def __init__(self, config: Optional[WorldModelConfig] = None):
        super().__init__()
        self.config = c = config or WorldModelConfig()
        self.encoder = VisionEncoder(c.image_size, c.patch_size, c.embed_dim, c.depth,
                                     c.heads, c.mlp_ratio, c.dropout, c.n_freq, c.pos_embed,
                                     c.patch_width)
        self.transition = TransitionModel(self.encoder.num_tokens, c.embed_dim,
                                          c.transition_depth, c.heads, c.mlp_ratio,
                                          c.dropout, c.n_freq, c.tilt, c.transition_gate,
                                          c.pos_embed, self.encoder.grid_shape)
        self.decoder = PixelDecoder(c.image_size, c.patch_size, c.embed_dim, c.decoder_dim,
                                    c.decoder_depth, c.decoder_heads, c.decoder_channels,
                                    c.mlp_ratio, c.dropout, c.pos_embed,
                                    c.patch_width)

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        return image / self.config.input_scale

    def encode(self, image: torch.Tensor, angle) -> torch.Tensor:
        """Image ``[B, 1, H, W]`` (DRR units) at ``angle`` degrees -> state ``[B, N, D]``."""
        return self.encoder(self.normalise(image), angle)

    def step(self, state: torch.Tensor, delta, angle=None, tilt=None) -> torch.Tensor:
        """State after rotating the view by ``delta`` degrees (from ``angle``, if known)."""
        return self.transition(state, delta, angle, tilt)

    def rollout(self, state: torch.Tensor, deltas: torch.Tensor, angle=None) -> torch.Tensor:
        """Apply the increments ``deltas [B, K]`` one after another -> ``[B, K, N, D]``."""
        b = state.shape[0]
        deltas = torch.as_tensor(deltas, dtype=torch.float32, device=state.device)
        if deltas.ndim != 2 or deltas.shape[0] != b:
            raise ValueError(f"deltas must be [B={b}, K], got {tuple(deltas.shape)}")
        a = None if angle is None else as_batch(angle, b, state.device)
        states = []
        for k in range(deltas.shape[1]):
            state = self.step(state, deltas[:, k], a)
            a = None if a is None else a + deltas[:, k]
            states.append(state)
        return torch.stack(states, dim=1)

    def decode(self, state: torch.Tensor) -> torch.Tensor:
        """State ``[B, N, D]`` -> image ``[B, 1, H, W]`` in DRR units."""
        return self.decoder(state) * self.config.input_scale

    def predict_view(self, image: torch.Tensor, angle, target_angle, n_steps: int = 1):
        """The view at ``target_angle`` imagined from ``image`` at ``angle`` (degrees).

        The shortest rotation is taken, in ``n_steps`` equal steps.
        """
        b = image.shape[0]
        a = as_batch(angle, b, image.device)
        delta = torch.remainder(as_batch(target_angle, b, image.device) - a + 180.0, 360.0) - 180.0
        state = self.encode(image, a)
        if n_steps > 1:
            state = self.rollout(state, (delta / n_steps)[:, None].expand(b, n_steps), a)[:, -1]
        else:
            state = self.step(state, delta, a)
        return self.decode(state)

    def num_parameters(self) -> Dict[str, int]:
        """Trainable parameter counts of E, T, D and in total (reported by training)."""
        count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)
        return {"encoder": count(self.encoder), "transition": count(self.transition),
                "decoder": count(self.decoder), "total": count(self)}

"""The world model's networks and losses: vision model E, transition model T, decoder D.

See DESIGN.md ("The world model"). Angles are degrees in every public call.
"""
from .decoder import PixelDecoder
from .ema import EMAEncoder, ema_momentum
from .encoder import VisionEncoder, angle_features
from .losses import (PixelLoss, cycle_loss, info_nce, latent_loss, rollout_loss, smooth_l1,
                     world_model_losses)
from .transition import ActionEmbedding, TransitionModel, motion_gate
from .world_model import PRESETS, WorldModel, WorldModelConfig

__all__ = ["PixelDecoder", "EMAEncoder", "ema_momentum", "VisionEncoder", "angle_features",
           "PixelLoss", "cycle_loss", "info_nce", "latent_loss", "rollout_loss", "smooth_l1",
           "world_model_losses", "ActionEmbedding", "TransitionModel", "motion_gate",
           "PRESETS", "WorldModel", "WorldModelConfig"]

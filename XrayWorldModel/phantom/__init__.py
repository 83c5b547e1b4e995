"""Synthetic phantoms: exact ellipsoid phantoms (the renderer's oracle) and procedural chests."""
from .chest import CHEST_LABELS, procedural_chest
from .ellipsoid import Ellipsoid, EllipsoidPhantom, default_ellipsoid_phantom, rotation_matrix

__all__ = ["Ellipsoid", "EllipsoidPhantom", "default_ellipsoid_phantom", "rotation_matrix",
           "procedural_chest", "CHEST_LABELS"]

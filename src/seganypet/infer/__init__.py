"""Interactive inference: the session API (nnInteractive's shape) over the promptable model."""

from seganypet.infer.crop import CropGeometry
from seganypet.infer.session import Interaction, Session, segment_with_model

__all__ = ["CropGeometry", "Interaction", "Session", "segment_with_model"]

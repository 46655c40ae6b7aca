"""Training on nnU-Net v2 datasets with simulated clicks and CPCL, on one process or many (torchrun)."""

from seganypet.train.cpcl import mixed_loss, ramp_up, rectify
from seganypet.train.loop import InteractiveLoss, LoopConfig
from seganypet.train.trainer import TrainConfig, train

__all__ = ["InteractiveLoss", "LoopConfig", "TrainConfig", "mixed_loss", "ramp_up", "rectify", "train"]

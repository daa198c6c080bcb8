"""What each stage trains: ``train.objectives.base.Objective`` subclasses."""

from train.objectives.autoencoder import AutoencoderObjective, FirstStageExport, TemporalDecoderObjective
from train.objectives.base import Metrics, Objective
from train.objectives.perceptual import VGGPerceptual

__all__ = [
    "AutoencoderObjective",
    "FirstStageExport",
    "Metrics",
    "Objective",
    "TemporalDecoderObjective",
    "VGGPerceptual",
]

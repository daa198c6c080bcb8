"""What each stage trains: ``train.objective.Objective`` subclasses."""

from train.objectives.autoencoder import AutoencoderObjective, FirstStageExport, TemporalDecoderObjective
from train.objectives.perceptual import VGGPerceptual

__all__ = [
    "AutoencoderObjective",
    "FirstStageExport",
    "TemporalDecoderObjective",
    "VGGPerceptual",
]

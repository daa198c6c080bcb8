"""Lightning callbacks of the training loop."""

from train.callbacks.evaluate_videos import EvaluateVideos
from train.callbacks.periodic import PeriodicSampling
from train.callbacks.sample_videos import SampleVideos, log_videos

__all__ = ["EvaluateVideos", "PeriodicSampling", "SampleVideos", "log_videos"]

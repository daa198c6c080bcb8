"""Lightning callbacks of the training loop."""

from train.callbacks.sample_videos import SampleVideos, log_videos

__all__ = ["SampleVideos", "log_videos"]

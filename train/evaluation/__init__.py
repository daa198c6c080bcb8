"""Evaluation metrics of generated videos (RECIPE 7): FVD (I3D or CLIP features), CLIP text-video similarity and
frame consistency, and the paper's zero-shot UCF-101 protocol. ``scripts/evaluate.py`` is the command line over these
and ``train.callbacks.evaluate_videos`` runs them during training."""

from train.evaluation.clip_metrics import ClipScorer, ClipVideoScores, clip_similarity, frame_consistency, score_videos
from train.evaluation.features import (
    I3D_FILENAME,
    ClipVideoFeatures,
    I3DFeatures,
    VideoFeatureExtractor,
    accumulate_features,
    to_i3d_input,
)
from train.evaluation.frechet import FeatureStats, feature_stats, frechet_distance, load_stats

__all__ = [
    "I3D_FILENAME",
    "ClipScorer",
    "ClipVideoFeatures",
    "ClipVideoScores",
    "FeatureStats",
    "I3DFeatures",
    "VideoFeatureExtractor",
    "accumulate_features",
    "clip_similarity",
    "feature_stats",
    "frame_consistency",
    "frechet_distance",
    "load_stats",
    "score_videos",
    "to_i3d_input",
]

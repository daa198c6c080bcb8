"""Evaluation metrics of generated videos (RECIPE 7): FVD (I3D or CLIP features), CLIP text-video similarity and
frame consistency, and the paper's zero-shot UCF-101 protocol. ``scripts/evaluate.py`` is the command line over these
and ``train.callbacks.evaluate_videos`` runs them during training."""

from train.evaluation.clip_metrics import (
    ClipScorer,
    ClipVideoScores,
    clip_similarity,
    embed_videos,
    frame_consistency,
    score_frame_embeddings,
    score_videos,
)
from train.evaluation.features import (
    I3D_FILENAME,
    ClipVideoFeatures,
    I3DFeatures,
    VideoFeatureExtractor,
    accumulate_features,
    build_extractor,
    metric_name,
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
    "build_extractor",
    "clip_similarity",
    "embed_videos",
    "feature_stats",
    "frame_consistency",
    "frechet_distance",
    "load_stats",
    "metric_name",
    "score_frame_embeddings",
    "score_videos",
    "to_i3d_input",
]

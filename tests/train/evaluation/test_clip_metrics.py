"""CLIP similarity and consistency against direct open_clip calls on a tiny random CLIP."""

from __future__ import annotations

import math

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from train.evaluation.clip_metrics import ClipScorer, frame_consistency, score_videos


@pytest.fixture(scope="module")
def scorer() -> ClipScorer:
    torch.manual_seed(0)
    return ClipScorer.build("tiny", batch_size=3)


def _video(t: int = 4, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (t, 3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _direct_image_embeddings(scorer: ClipScorer, video: torch.Tensor) -> torch.Tensor:
    # At the tower's input size the preprocessing is only [0, 1] scaling and CLIP's mean/std.
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return F.normalize(scorer.model.encode_image((video.float() / 255 - mean) / std), dim=-1)


def test_scores_match_direct_open_clip_calls(scorer):
    videos = [_video(seed=1), _video(seed=2)]
    prompts = ["a dog runs on the beach", "two people dance"]
    scores = score_videos(scorer, videos, prompts=prompts)
    with torch.no_grad():
        text = F.normalize(scorer.model.encode_text(open_clip.tokenize(prompts)), dim=-1)
    for i, video in enumerate(videos):
        frames = _direct_image_embeddings(scorer, video)
        expected_sim = float(np.mean([F.cosine_similarity(text[i], f, dim=0) for f in frames]))
        expected_con = float(np.mean([F.cosine_similarity(frames[t], frames[t + 1], dim=0) for t in range(3)]))
        assert scores.clipsim[i] == pytest.approx(expected_sim, abs=1e-5)
        assert scores.consistency[i] == pytest.approx(expected_con, abs=1e-5)
    summary = scores.summary()
    assert summary["clipsim"] == pytest.approx(np.mean(scores.clipsim))
    assert set(summary) == {"clipsim", "clip_consistency"}


def test_image_similarity_for_i2v(scorer):
    video, image = _video(seed=3), _video(t=1, seed=4)[0]
    scores = score_videos(scorer, [video], images=[image])
    frames, ref = _direct_image_embeddings(scorer, video), _direct_image_embeddings(scorer, image[None])[0]
    assert scores.image_similarity[0] == pytest.approx(float((frames @ ref).mean()), abs=1e-5)
    assert "clip_image_similarity" in scores.summary()


def test_a_still_video_is_perfectly_consistent_and_one_frame_is_nan(scorer):
    still = _video(t=1).expand(5, -1, -1, -1).contiguous()
    assert score_videos(scorer, [still]).consistency[0] == pytest.approx(1.0, abs=1e-6)
    assert math.isnan(frame_consistency(scorer.embed_frames(_video(t=1))))


def test_preprocessing_matches_open_clip_up_to_resampling(scorer):
    frame = _video(t=1, h=48, w=80, seed=5)  # short side resized to 32, then a centre crop
    ours = scorer.preprocess(frame)[0]
    transform = open_clip.image_transform(32, is_train=False)
    theirs = transform(Image.fromarray(frame[0].permute(1, 2, 0).numpy()))
    assert ours.shape == theirs.shape == (3, 32, 32)
    assert F.cosine_similarity(ours.flatten(), theirs.flatten(), dim=0) > 0.99
    assert (ours - theirs).abs().mean() < 0.1  # normalised units (1 unit ~ 70 grey levels)


def test_errors(scorer):
    with pytest.raises(ValueError, match="uint8 \\(T, 3, H, W\\)"):
        score_videos(scorer, [_video().permute(0, 2, 3, 1)])
    with pytest.raises(ValueError, match="one prompt per video"):
        score_videos(scorer, [_video()], prompts=["a", "b"])

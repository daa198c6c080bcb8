"""scripts/bench_train.py --compare clip: cached latents with the CLIP tower recomputed against cached latents with
cached CLIP embeddings, alternating, one JSON line with both and the ratio."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_script

TINY = ["stage.height=32", "stage.width=32", "stage.num_frames=4", "data.batch_size=2", "data.num_workers=1"]


@pytest.mark.slow  # 17-32 s; the harness is covered in make test by test_bench_train.py's pixels comparison
def test_bench_compares_recomputed_and_cached_clip_embeddings(capsys, monkeypatch):
    script, order, tower_calls = load_script("bench_train"), [], []
    timed_run = script.timed_run

    def recorded(cfg, **kwargs):
        order.append(cfg.paths.run_name)
        tower_calls.clear()
        seconds = timed_run(cfg, **kwargs)
        calls[cfg.paths.run_name] = len(tower_calls)
        return seconds

    from models.conditioners.open_clip_image import FrozenOpenCLIPImageEmbedder

    forward = FrozenOpenCLIPImageEmbedder.forward
    calls: dict[str, int] = {}

    def counted(self, image):
        tower_calls.append(1)
        return forward(self, image)

    monkeypatch.setattr(script, "timed_run", recorded)
    monkeypatch.setattr(FrozenOpenCLIPImageEmbedder, "forward", counted)
    argv = ["--stage", "img2vid_finetune", "--compare", "clip", "--steps", "1", "--warmup", "1", "--repeats", "1"]
    assert script.main([*argv, "--overrides", *TINY]) == 0
    assert order == ["recomputed_clip_0", "cached_clip_0"]
    assert calls["recomputed_clip_0"] >= 2 and calls["cached_clip_0"] == 0  # the tower ran on one side only
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["compare"] == "clip" and result["order"].startswith("recomputed_clip, cached_clip")
    ratio = result["cached_clip_samples_per_s"] / result["recomputed_clip_samples_per_s"]
    assert result["cached_clip_over_recomputed_clip"] == pytest.approx(ratio, rel=1e-3)
    assert result["cached_clip_over_recomputed_clip_by_repeat"] == pytest.approx([ratio], rel=1e-3)
    assert result["clip_encode_flops_per_sample"] > 0 and "vae_encode_flops_per_sample" not in result
    assert result["cached_shards"] > 0


def test_bench_compare_clip_needs_an_image_to_video_stage():
    script = load_script("bench_train")
    with pytest.raises(ValueError, match="--compare clip needs an image-to-video stage"):
        script.main(["--compare", "clip", "--steps", "1", "--warmup", "1", "--repeats", "1", "--overrides", *TINY])

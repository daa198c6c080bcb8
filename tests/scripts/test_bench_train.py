"""scripts/bench_train.py in process with very few steps: one JSON line with both modes' figures, the modes
alternating over the repeats."""

from __future__ import annotations

import json
from types import ModuleType

import pytest

from tests.conftest import load_script

TINY = ["stage.height=32", "stage.width=32", "stage.num_frames=4", "data.batch_size=2", "data.num_workers=1"]


def _script() -> ModuleType:
    return load_script("bench_train")


def test_bench_prints_one_json_line_with_both_modes(capsys, monkeypatch):
    script, order = _script(), []
    timed_run = script.timed_run

    def recorded(cfg, **kwargs):
        order.append(cfg.paths.run_name)
        return timed_run(cfg, **kwargs)

    monkeypatch.setattr(script, "timed_run", recorded)
    argv = ["--steps", "1", "--warmup", "1", "--repeats", "2", "--peak-tflops", "0.5", "--overrides", *TINY]
    assert script.main(argv) == 0
    assert order == ["pixels_0", "cached_0", "cached_1", "pixels_1"]  # the order swaps every repeat
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["stage"] == "video_pretrain" and result["loop"].startswith("trainer:")
    assert result["repeats"] == 2 and result["order"].startswith("pixels, cached, cached, pixels")
    pairs = zip(result["pixels_samples_per_s_by_repeat"], result["cached_samples_per_s_by_repeat"], strict=True)
    ratios = [c / p for p, c in pairs]
    assert result["cached_over_pixels_by_repeat"] == pytest.approx(ratios, rel=1e-3) and len(ratios) == 2
    assert result["cached_over_pixels_median_of_repeats"] == pytest.approx(sum(ratios) / 2, rel=1e-3)
    for mode in ("pixels", "cached"):
        assert result[f"{mode}_samples_per_s"] > 0
        assert len(result[f"{mode}_step_times_s"]) == 2 and result[f"{mode}_step_s_median"] > 0
        expected_mfu = result["unet_train_flops_per_sample"] * result[f"{mode}_samples_per_s"] / 0.5e12
        assert result[f"{mode}_mfu"] == pytest.approx(expected_mfu, rel=2e-3)
    for suffix in ("", "_mean"):
        ratio = result[f"cached_samples_per_s{suffix}"] / result[f"pixels_samples_per_s{suffix}"]
        assert result[f"cached_over_pixels{suffix}"] == pytest.approx(ratio, rel=1e-3)
    assert result["pixels_samples_per_s"] == pytest.approx(2 / result["pixels_step_s_median"], rel=1e-3)
    assert (
        result["unet_train_flops_per_sample"]
        == result["unet_fwd_flops_per_sample"] + result["unet_bwd_flops_per_sample"]
    )
    assert result["unet_bwd_flops_per_sample"] > result["unet_fwd_flops_per_sample"] > 0
    assert result["vae_encode_flops_per_sample"] > 0 and result["cached_shards"] == 2
    assert (result["batch_size"], result["num_frames"], result["height"], result["width"]) == (2, 4, 32, 32)
    assert result["peak_tflops"] == 0.5 and result["device"].startswith("cpu")


def test_bench_refuses_zero_warmup_and_non_diffusion_stages(tmp_path):
    with pytest.raises(SystemExit):
        _script().parse_args(["--warmup", "0"])
    args = _script().parse_args(["--stage", "autoencoder"])
    with pytest.raises(ValueError, match="needs a diffusion stage"):
        _script().bench_config(args, root=tmp_path, data_root=tmp_path, mode="pixels")

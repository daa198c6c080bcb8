"""The planner (train/planner/, scripts/plan.py) against measurements.

- The block-by-block combination against one trace of the whole UNet step (same tracker, one piece).
- Predicted state and peak bytes against a real training step of the real objective on CPU: forward, backward,
  clipping, AdamW and the EMA update, measured by ``measured_peak_bytes`` (torch.profiler's allocator events,
  an independent count from the planner's dispatch-mode tracking) on top of the bytes alive before the step.
- The CLI's JSON line, and the time of a full-size case.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from models.activation_checkpointing import apply_activation_checkpointing
from models.unet import UNetSpec, VideoUNet
from tests.conftest import load_script
from tests.train.conftest import compose_train
from train.builders import build_objective
from train.ema import EMA
from train.module import select_trainable
from train.perf import unet_train_flops
from train.planner.activations import estimate_activations, whole_trace_bytes
from train.planner.plan import GIB, H100_BF16_DENSE_TFLOPS, PlanOptions, plan
from train.planner.tracking import live_tensor_bytes, measured_peak_bytes

SMALL_UNET = UNetSpec(
    model_channels=64, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1, 2), num_head_channels=32
)


SHAPE = {"batch": 1, "frames": 4, "latent_hw": (16, 16)}


def _assert_model_flops(estimate) -> None:
    fwd, bwd = unet_train_flops(SMALL_UNET, frames=4, latent_hw=(16, 16))  # the whole UNet on the meta device
    assert estimate.fwd_flops == pytest.approx(fwd, rel=0.01)
    assert estimate.bwd_flops == pytest.approx(bwd, rel=0.01)


def test_block_combination_matches_whole_trace():
    unet = VideoUNet(SMALL_UNET)
    combined = estimate_activations(unet, **SHAPE, precision="32-true")
    whole = whole_trace_bytes(unet, **SHAPE, precision="32-true")
    assert abs(combined.peak / whole - 1) < 0.10, (combined.peak, whole)
    _assert_model_flops(combined)


def test_block_combination_with_checkpointing_is_a_close_upper_bound():
    # A checkpointed block's backward traced alone peaks a little higher than its share of the whole step (the
    # order in which autograd runs the recomputed block differs), so the combination errs on the safe side.
    unet = VideoUNet(SMALL_UNET)
    apply_activation_checkpointing(unet, "all")
    combined = estimate_activations(unet, **SHAPE, precision="bf16-mixed")
    whole = whole_trace_bytes(unet, **SHAPE, precision="bf16-mixed")
    assert 0.95 < combined.peak / whole < 1.15, (combined.peak, whole)
    assert combined.param_copies > 0  # autocast's bf16 weights, set aside from the activations
    _assert_model_flops(combined)  # model FLOPs: the recomputed forward is not counted


def _synthetic_batch(cfg, batch: int) -> dict:
    g = torch.Generator().manual_seed(0)
    t, h, w = cfg.stage.num_frames, cfg.stage.height, cfg.stage.width
    return {
        "frames": torch.randint(0, 256, (batch, t, 3, h, w), generator=g, dtype=torch.uint8),
        "image_only_indicator": torch.zeros(batch, t),
        "fps_id": torch.full((batch,), 6, dtype=torch.long),
        "motion_bucket_id": torch.full((batch,), 127, dtype=torch.long),
        "caption": ["a red ball"] * batch,
        "key": ["k"] * batch,
        "shard": ["s"] * batch,
    }


def measure_step(cfg) -> tuple[int, int]:
    """(state bytes, peak bytes) of the second real training step (the first creates the AdamW states)."""
    torch.manual_seed(0)
    objective = build_objective(cfg).train()
    select_trainable(objective.export_module(), list(cfg.stage.trainable), layers=cfg.stage.trainable_layers)
    trainable = list(objective.named_trainable_parameters())
    ema = EMA(trainable, decay=0.999)
    opt = torch.optim.AdamW([p for _, p in trainable], lr=1e-4)
    batch = _synthetic_batch(cfg, cfg.data.batch_size)

    mixed = cfg.trainer.precision == "bf16-mixed"

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):  # as Lightning's precision plugin does
            loss, _ = objective(batch, generator=torch.Generator().manual_seed(1))
            loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
        opt.step()
        ema.update(trainable)

    step()
    opt.zero_grad(set_to_none=True)
    alive = [*objective.parameters(), *objective.buffers(), *ema.buffers()]
    alive += [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.dim()]
    states = live_tensor_bytes(alive) + sum(p.numel() * p.element_size() for _, p in trainable)  # + gradients
    baseline = live_tensor_bytes(alive + [v for v in batch.values() if isinstance(v, torch.Tensor)])
    return states, measured_peak_bytes(step, baseline=baseline, device=torch.device("cpu"))


SMALL = ["stage=img2vid_finetune", "stage.num_frames=6", "stage.height=64", "stage.width=96"]


@pytest.mark.parametrize(
    ("overrides", "activation_bound"),
    [
        # tiny: the states dominate (the step's peak is at the optimizer step), so only the total is compared
        (["stage=video_pretrain", "stage.num_frames=4", "stage.height=32", "stage.width=32"], False),
        (SMALL, True),  # small: activations are half the peak, so the part above the states is compared too
        ([*SMALL, "trainer.precision=bf16-mixed"], True),
    ],
    ids=["tiny", "small", "small-bf16"],
)
def test_prediction_matches_measured_cpu_peak(overrides, activation_bound):
    torch.set_num_threads(1)
    cfg = compose_train([*overrides, "experiment=demo", "data.batch_size=1"])
    predicted = plan(cfg, PlanOptions(world_sizes=(1,), device="cpu"))
    states, peak = measure_step(cfg)
    predicted_states = GIB * sum(predicted[k] for k in ("params_gb", "grads_gb", "optimizer_gb", "ema_gb", "frozen_gb"))
    predicted_peak = GIB * predicted["total_gb"]
    assert abs(predicted_states / states - 1) < 0.01, (predicted_states, states)
    assert abs(predicted_peak / peak - 1) < 0.10, (predicted_peak, peak)
    if activation_bound:
        assert abs((predicted_peak - predicted_states) / (peak - states) - 1) < 0.10, (predicted_peak, peak, states)


def test_cli_json_line_for_a_full_size_stage_in_seconds(capsys):
    """The full-size SVD UNet (model=svd, the default) at Stage II-a's 14x256x384 under ZeRO-2 with bf16."""
    start = time.perf_counter()
    load_script("plan").main(
        ["stage=video_pretrain", "strategy=deepspeed_zero2", "trainer.precision=bf16-mixed", "--world-sizes", "1,8"]
    )
    elapsed = time.perf_counter() - start
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert "GPUs | params" in lines[1]
    fields = ("params_gb", "grads_gb", "optimizer_gb", "ema_gb", "frozen_gb", "activations_gb", "total_gb")
    fields += ("max_micro_batch", "accumulation", "flops_per_sample", "gpu_hours")
    assert all(k in result for k in fields)
    assert 1.5e9 < result["trainable_params"] < 1.53e9  # RECIPE 1.5: 1521M (T2V: 4 input channels)
    one, eight = result["per_world_size"]
    assert one["world_size"] == result["world_size"] == 1 and eight["world_size"] == 8
    assert eight["optimizer_gb"] == pytest.approx(one["optimizer_gb"] / 8, rel=1e-3)  # ZeRO-2 shards it
    assert eight["params_gb"] == one["params_gb"]  # and not the parameters
    states = sum(one[k] for k in fields[:5])
    assert one["total_gb"] > states + 0.5 * one["activations_gb"]
    for row in (one, eight):
        if row["accumulation"]:
            assert row["accumulation"] * row["micro_batch"] * row["world_size"] == row["global_batch"] == 1536
    assert result["gpu_hours"] == pytest.approx(
        150000 * 1536 * result["flops_per_sample"] / (0.45 * H100_BF16_DENSE_TFLOPS * 1e12) / 3600, rel=1e-3
    )
    assert elapsed < 60, elapsed

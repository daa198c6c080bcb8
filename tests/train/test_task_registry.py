"""The task registry (train/tasks.py): a task added through ``register_task`` alone builds, trains, exports and
samples; the recipe's three tasks keep their layout; the config's defaults come from the model specs."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from models.conditioners import ConcatTimestepEmbedderND, EmbedderSpec, FrozenOpenCLIPEmbedder, GeneralConditioner
from models.unet import TemporalSpec, UNetSpec
from models.vae import AutoencoderSpec
from train.builders import build_objective
from train.conditioning import conditioner_inputs, unconditional_inputs
from train.config import GenerationSettings, TrainConfig, validate
from train.evaluation.generate import load_export_generator
from train.module import read_metrics
from train.run import run
from train.sampling import sample_video
from train.tasks import (
    TASKS,
    TEXT_KEY,
    ConditionerParts,
    TaskSpec,
    empty_caption,
    get_task,
    register_task,
    unregister_task,
)

from .conftest import compose_train

TOY = "toy_text_fps"


def _toy_conditioner(parts: ConditionerParts) -> GeneralConditioner:
    """SD 2.1 text plus an fps_id sinusoid: a 256-wide vector the UNet's label_emb takes."""
    text = FrozenOpenCLIPEmbedder(parts.clip_arch, pretrained=parts.clip_pretrained, layer="penultimate")
    return GeneralConditioner(
        [
            EmbedderSpec(text, TEXT_KEY, ucg_rate=parts.ucg_rates.get(TEXT_KEY, 0.0), ucg_value=""),
            EmbedderSpec(ConcatTimestepEmbedderND(256), "fps_id"),
        ]
    )


def _toy_inputs(*, captions: list[str], fps_id: torch.Tensor, **_: Any) -> dict[str, Any]:
    return {TEXT_KEY: list(captions), "fps_id": fps_id.float()}


TOY_SPEC = TaskSpec(
    name=TOY,
    build_conditioner=_toy_conditioner,
    input_keys=(TEXT_KEY, "fps_id"),
    vector_dim=256,
    conditional_inputs=_toy_inputs,
    unconditional_inputs=empty_caption,
    video=False,
)


@pytest.fixture
def toy_task():
    register_task(TOY_SPEC)
    try:
        yield TOY_SPEC
    finally:
        unregister_task(TOY)


def test_a_registered_task_trains_exports_and_samples(toy_task, stage_overrides, tmp_path):
    overrides = stage_overrides(
        "image_pretrain",
        f"conditioner.task={TOY}",
        "+conditioner.ucg_rates.txt=0.5",
        "stage.init.first_stage_from_stage=null",
        "stage.init.keep=[unet,first_stage,conditioner]",
        "stage.max_steps=2",
    )
    cfg = compose_train(overrides)
    objective = build_objective(cfg)
    assert objective.model.unet.spec.adm_in_channels == 256 and objective.model.unet.spec.in_channels == 4
    assert run(cfg) == 0
    stage = tmp_path / "runs" / "demo" / "image_pretrain"
    rows = read_metrics(stage / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(torch.isfinite(torch.tensor(r["train/loss"])) for r in rows)
    assert json.loads((stage / "export" / "export.json").read_text())["task"] == TOY

    source = load_export_generator(stage / "export")
    assert source.task == TOY
    settings = GenerationSettings(num_steps=2, seed=5)
    video = sample_video(
        source.model, source.denoiser, task=TOY, prompt="a red ball", num_frames=1, height=32, width=32,
        settings=settings,
    )  # fmt: skip
    assert video.shape == (1, 32, 32, 3) and video.dtype == torch.uint8
    again = sample_video(
        source.model, source.denoiser, task=TOY, prompt="a red ball", num_frames=1, height=32, width=32,
        settings=settings,
    )  # fmt: skip
    assert torch.equal(video, again)
    with pytest.raises(ValueError, match="pass prompt="):
        sample_video(source.model, source.denoiser, task=TOY, num_frames=1, height=32, width=32, settings=settings)


def test_an_unregistered_task_is_refused_with_the_registered_choices(toy_task, stage_overrides):
    cfg = compose_train(stage_overrides("image_pretrain", f"conditioner.task={TOY}"))
    validate(cfg)
    unregister_task(TOY)
    try:
        with pytest.raises(ValueError, match=r"conditioner.task='toy_text_fps' is not valid; choose one of t2i, t2v"):
            validate(cfg)
    finally:
        register_task(TOY_SPEC)
    with pytest.raises(ValueError, match="registered already"):
        register_task(TOY_SPEC)
    with pytest.raises(ValueError, match="task='nope'; choose one of"):
        get_task("nope")


def test_the_recipe_tasks_keep_their_inputs():
    assert list(TASKS)[:3] == ["t2i", "t2v", "i2v"]
    fps, motion = torch.tensor([6]), torch.tensor([127])
    t2i = conditioner_inputs("t2i", captions=["a"], fps_id=fps, motion_bucket_id=motion)
    assert t2i == {"txt": ["a"]} and unconditional_inputs("t2i", t2i) == ({"txt": [""]}, ())
    t2v = conditioner_inputs("t2v", captions=["a"], fps_id=fps, motion_bucket_id=motion)
    assert list(t2v) == ["txt", "fps_id", "motion_bucket_id"] and t2v["fps_id"].dtype == torch.float32
    image, aug = torch.zeros(1, 3, 4, 4), torch.tensor([0.5])
    i2v = conditioner_inputs(
        "i2v", captions=[], fps_id=fps, motion_bucket_id=motion, cond_image=image, cond_aug=aug,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    noise = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(i2v["cond_frames"], image + 0.5 * noise, rtol=0, atol=0)  # the one draw
    assert list(i2v) == ["cond_frames_without_noise", "cond_frames", "fps_id", "motion_bucket_id", "cond_aug"]
    assert unconditional_inputs("i2v", i2v)[1] == ("cond_frames", "cond_frames_without_noise")
    assert [(s.vector_dim, s.in_channel_factor, s.video, s.sample_input) for s in TASKS.values()][:3] == [
        (None, 1, False, "prompt"),
        (512, 1, True, "prompt"),
        (768, 2, True, "image"),
    ]
    with pytest.raises(ValueError, match="needs cond_image"):
        conditioner_inputs("i2v", captions=[], fps_id=fps, motion_bucket_id=motion)


def test_model_config_defaults_come_from_the_specs_and_did_not_change():
    model = OmegaConf.to_container(OmegaConf.structured(TrainConfig).model)
    unet, spec = model["unet"], UNetSpec()
    assert unet == {
        "model_channels": 320,
        "channel_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attention_resolutions": [4, 2, 1],
        "num_head_channels": 64,
        "transformer_depth": 1,
        "context_dim": 1024,
        "use_linear_in_transformer": True,
        "dropout": 0.0,
        "video": False,
        "merge_strategy": TemporalSpec().merge_strategy,
        "merge_factor": 0.5,
    }
    assert all(unet[k] == getattr(spec, k) for k in ("model_channels", "num_res_blocks", "context_dim", "dropout"))
    assert model["autoencoder"] == {
        "ch": 128,
        "ch_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "embed_dim": 4,
        "z_channels": 4,
        "attn_resolutions": [],
        "temporal_decoder": False,
    }
    assert model["autoencoder"]["ch"] == AutoencoderSpec().ch
    generation = {f.name for f in dataclasses.fields(GenerationSettings)}
    logger = OmegaConf.to_container(OmegaConf.structured(TrainConfig).logger)
    assert generation <= set(logger["samples"]) and generation <= set(logger["evaluation"])

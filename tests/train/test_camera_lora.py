"""stage=camera_lora at tiny size: a peft LoRA on the temporal attention of a tiny img2vid export (random non-zero
weights, written as the stage writes its export), trained, resumed and exported; the LoRA file onto our UNet at a
scale, merged, onto diffusers' UNet through peft, and through scripts/sample.py --lora."""

from __future__ import annotations

import contextlib
import io
import json
import uuid
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

import train.run
from models.checkpoints import load_state_dict
from models.checkpoints.diffusers_unet import (
    forward_with_diffusers_inputs,
    match_sgm_group_norm_eps,
    to_diffusers_unet_config,
    to_diffusers_unet_state_dict,
)
from models.latent_diffusion import UNET_PREFIX
from tests.conftest import load_script
from train.builders import build_objective
from train.checkpointing import list_checkpoints
from train.export import decoder_meta, export_dir, load_export, write_export
from train.lora import BASE_KEY, fingerprint, is_lora_param, load_loras, parse_lora_arg
from train.lora_export import LORA_FILE, METADATA_KEY, LoraCheckpoints
from train.module import StageModule, read_metrics
from train.run import run

from .conftest import compose_train, tiny_stage_overrides
from .test_svd_finetune import released  # noqa: F401  (the tiny released-file fixture)

BASE = "img2vid_finetune"
PROJECTIONS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
               "attn2.to_out.0")  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory, demo_shards) -> Path:
    """A tiny img2vid_finetune export of run ``demo`` (experiment=demo's): random weights, every one non-zero (the
    zero-initialised output layers too, so that a LoRA's effect shows)."""
    root = tmp_path_factory.mktemp("runs")
    cfg = compose_train(tiny_stage_overrides(BASE, root=root, data_root=demo_shards))
    torch.manual_seed(0)
    module = build_objective(cfg).export_module()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=g) * 0.05)
    meta = {"stage": BASE, "objective": "diffusion", "task": "i2v", "num_frames": 4, "height": 32, "width": 32,
            "run_id": uuid.uuid4().hex, **decoder_meta(cfg)}  # fmt: skip
    return write_export(export_dir(cfg.paths, BASE), module.state_dict(), config=cfg, meta=meta)


def _lora_run(base: Path, shards: Path, run_name: str, *extra: str) -> list[str]:
    root = base.parents[2]
    return tiny_stage_overrides("camera_lora", f"paths.run_name={run_name}", *extra, root=root, data_root=shards)


@pytest.fixture(scope="module")
def trained(base, demo_shards) -> dict:
    """The 4-step run (merged export too), its StageModule after training, and a run stopped after step 2
    (max_steps) then resumed to step 4 (init from the same export, given as a path)."""
    captured: list[StageModule] = []

    class Capturing(StageModule):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            captured.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train.run, "StageModule", Capturing)
        straight = _lora_run(base, demo_shards, "demo", "stage.max_steps=4", "stage.lora.export_merged=true")
        assert run(compose_train(straight)) == 0
    by_path = ["stage.init.from_stage=null", f"stage.init.path={base}"]
    assert run(compose_train(_lora_run(base, demo_shards, "resumed", *by_path, "stage.max_steps=2"))) == 0
    resumed = _lora_run(base, demo_shards, "resumed", *by_path, "stage.max_steps=4", "stage.lora.export_merged=true")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run(compose_train(resumed)) == 0
    assert "[resume] " in out.getvalue() and "step_000000002.ckpt" in out.getvalue()
    root = base.parents[2]
    return {"module": captured[0], "straight": root / "demo/camera_lora", "resumed": root / "resumed/camera_lora"}


def _checkpoint(stage: Path) -> dict:
    return torch.load(list_checkpoints(stage / "checkpoints")[-1], weights_only=True)


def _tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118


def test_only_the_lora_trains_and_the_checkpoint_holds_only_it(base, trained):
    module, stage = trained["module"], trained["straight"]
    state = module.objective.export_module().state_dict()
    base_state = load_state_dict(base / "model.safetensors")
    # The base after training: every non-LoRA tensor bit for bit the export's (the adapted Linears' own weights too).
    for key, value in state.items():
        if not is_lora_param(key):
            assert torch.equal(value, base_state[key.replace(".base_layer.", ".")]), key
    trainable = [n for n, p in module.objective.export_module().named_parameters() if p.requires_grad]
    adapted = {n.rsplit(".lora_", 1)[0] for n in trainable}
    blocks = {n.split(".time_stack.")[0] for n in adapted}
    assert all(is_lora_param(n) for n in trainable) and len(trainable) == 2 * len(adapted)
    assert adapted == {f"{b}.time_stack.0.{p}" for b in blocks for p in PROJECTIONS}  # temporal attention only
    assert all(b.startswith(UNET_PREFIX) for b in blocks) and len(blocks) == 4  # the tiny UNet's transformers

    checkpoint = _checkpoint(stage)
    kept = set(checkpoint["state_dict"])
    lora = {k for k in kept if not k.startswith("ema.")}
    assert lora == {f"objective.model.{n}" for n in trainable}
    assert {k.removeprefix("ema.").replace("__", ".") for k in kept - lora} == {*trainable, "num_updates"}
    (optimizer,) = checkpoint["optimizer_states"]
    assert len(optimizer["state"]) == len(trainable)
    assert checkpoint[BASE_KEY]["fingerprint"] == fingerprint(base_state)
    assert checkpoint[BASE_KEY]["source"] == str(base.resolve())

    tensors, meta = _tensors(stage / "export" / LORA_FILE)
    adapter = json.loads(meta[METADATA_KEY])
    assert (adapter["r"], adapter["lora_alpha"], len(adapter["target_modules"])) == (16, 16.0, len(adapted))
    assert all(".temporal_transformer_blocks.0.attn" in m for m in adapter["target_modules"])
    assert len(tensors) == len(trainable) and all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in tensors)
    assert any(v.abs().max() > 0 for k, v in tensors.items() if ".lora_B." in k)  # B starts at zero: it trained
    exported = json.loads((stage / "export" / "export.json").read_text())["lora"]
    assert exported["rank"] == 16 and exported["fingerprint"] == meta["base_fingerprint"] == fingerprint(base_state)


def test_stopped_after_step_2_and_resumed_equals_the_uninterrupted_run(trained):
    a, b = trained["straight"], trained["resumed"]
    losses = [{r["batch"]: r["train/loss"] for r in read_metrics(s / "metrics.jsonl")} for s in (a, b)]
    assert sorted(losses[0]) == list(range(4)) and losses[0] == losses[1]
    state_a, state_b = _checkpoint(a), _checkpoint(b)
    assert state_a["global_step"] == state_b["global_step"] == 4
    assert state_a["state_dict"].keys() == state_b["state_dict"].keys()
    for key, value in state_a["state_dict"].items():
        assert torch.equal(value, state_b["state_dict"][key]), key
    for name in (LORA_FILE, "model.safetensors"):
        (ta, _), (tb, _) = _tensors(a / "export" / name), _tensors(b / "export" / name)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name


def _inputs(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    spec = unet.spec
    return {
        "sample": torch.randn(2, 4, spec.in_channels, 8, 8, generator=g),
        "timestep": 0.25 * torch.tensor([0.3, 8.0]).log(),
        "encoder_hidden_states": torch.randn(2, 1, spec.context_dim, generator=g),
        "added_time_ids": torch.tensor([[6.0, 127.0, 0.02], [3.0, 40.0, 0.5]]),
    }


@torch.no_grad()
def _unet_out(export: Path, *loras: tuple[Path, float]) -> torch.Tensor:
    unet = load_export(export).model.unet
    if loras:
        load_loras(unet, list(loras))
    return forward_with_diffusers_inputs(unet, *_inputs(unet).values())


def test_scale_0_is_the_base_bit_for_bit_and_merged_equals_unmerged(base, trained, tmp_path):
    lora, merged = trained["straight"] / "export" / LORA_FILE, trained["straight"] / "export"
    plain = _unet_out(base)
    assert torch.equal(_unet_out(base, (lora, 0.0)), plain)
    full = _unet_out(base, (lora, 1.0))
    assert (full - plain).abs().max() > 1e-4  # the LoRA does something
    torch.testing.assert_close(full, _unet_out(merged), atol=1e-5, rtol=1e-5)
    # Two LoRAs add up: the same file twice at 0.5 each is the file at 1.
    torch.testing.assert_close(_unet_out(base, (lora, 0.5), (lora, 0.5)), full, atol=1e-5, rtol=1e-5)
    (tmp_path / LORA_FILE).write_bytes(lora.read_bytes())  # an export without export_merged: sampled with --lora
    with pytest.raises(ValueError, match="holds a LoRA alone"):
        load_export(tmp_path)
    assert parse_lora_arg("a/b.safetensors:0.8") == (Path("a/b.safetensors"), 0.8)
    assert parse_lora_arg("a/b.safetensors") == (Path("a/b.safetensors"), 1.0)


def test_the_lora_file_loads_onto_diffusers_unet_through_peft(base, trained):
    diffusers = pytest.importorskip("diffusers")
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    ours = load_export(base).model.unet
    theirs = diffusers.UNetSpatioTemporalConditionModel(**to_diffusers_unet_config(ours.spec))
    theirs.load_state_dict(to_diffusers_unet_state_dict(ours.state_dict(), spec=ours.spec), strict=True)
    match_sgm_group_norm_eps(theirs)
    tensors, meta = _tensors(trained["straight"] / "export" / LORA_FILE)
    inject_adapter_in_model(LoraConfig(**json.loads(meta[METADATA_KEY])), theirs)
    result = set_peft_model_state_dict(theirs, tensors)
    assert not result.unexpected_keys and not [k for k in result.missing_keys if ".lora_" in k]
    load_loras(ours, [(trained["straight"] / "export" / LORA_FILE, 1.0)])
    inputs = _inputs(ours)
    with torch.no_grad():
        expected = forward_with_diffusers_inputs(ours, *inputs.values())
        torch.testing.assert_close(theirs(**inputs, return_dict=False)[0], expected, atol=1e-5, rtol=1e-5)


def test_a_checkpoint_of_another_base_is_refused():
    callback = LoraCheckpoints({"source": "/a", "fingerprint": "0" * 64})
    with pytest.raises(ValueError, match="other weights"):
        callback.on_load_checkpoint(None, None, {BASE_KEY: {"source": "/b", "fingerprint": "1" * 64}})
    with pytest.raises(ValueError, match="without lora_base"):
        callback.on_load_checkpoint(None, None, {"state_dict": {}})


def test_sample_cli_mixes_two_loras_into_a_video(base, trained, tmp_path):
    image = tmp_path / "cond.png"
    pixels = torch.randint(0, 256, (20, 30, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(image)
    lora = trained["straight"] / "export" / LORA_FILE
    argv = ["--export", str(base), "--image", str(image), "--steps", "2", "--num-frames", "2", "--out", str(tmp_path),
            "--lora", f"{lora}:0.8", "--lora", f"{lora}:0.3"]  # fmt: skip
    assert load_script("sample").main(argv) == 0
    with Image.open(tmp_path / "cond_seed0.gif") as gif:
        assert gif.n_frames == 2 and gif.size == (32, 32)
    assert (tmp_path / "cond_seed0.mp4").stat().st_size > 0


def test_the_planner_counts_only_the_lora_as_trained(base, demo_shards, trained):
    from train.planner.plan import PlanOptions, plan

    cfg = compose_train(_lora_run(base, demo_shards, "plan"))
    result = plan(cfg, PlanOptions(world_sizes=(1,), device="cpu"))
    module = trained["module"].objective.export_module()
    lora = sum(p.numel() for n, p in module.named_parameters() if is_lora_param(n))
    everything = sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in module.buffers())
    assert result["trainable_params"] == lora and result["frozen_params"] == everything - lora
    # fp32 (32-true): A and B, their gradients, AdamW's m and v and the EMA; the whole base as frozen weights (the plan
    # rounds GiB to 6 decimals: 1074 bytes).
    assert result["grads_gb"] * 2**30 == pytest.approx(4 * lora, abs=1074)
    assert result["optimizer_gb"] * 2**30 == pytest.approx(8 * lora, abs=1074)
    assert result["frozen_gb"] * 2**30 == pytest.approx(4 * (everything - lora), abs=1074)


def test_the_stage_composes_with_the_paper_values():
    from train.builders import unet_spec
    from train.config import validate
    from train.lora import TEMPORAL_ATTENTION

    cfg = compose_train(["stage=camera_lora", "data.sources=[{urls: [x.tar]}]"])
    validate(cfg)
    lora = cfg.stage.lora
    assert (lora.rank, lora.target_modules, lora.export_merged, cfg.stage.max_steps) == (
        16,
        TEMPORAL_ATTENTION,
        False,
        5000,
    )
    assert (cfg.stage.init.from_stage, cfg.conditioner.task, unet_spec(cfg).in_channels) == (BASE, "i2v", 8)
    assert (cfg.stage.height, cfg.stage.width, cfg.stage.num_frames) == (576, 1024, 14)


def test_a_lora_trains_on_the_released_svd_file(released, demo_shards, tmp_path):  # noqa: F811 (the fixture)
    """The paper's start: a released svd.safetensors (official layout, tiny sizes) as the base, every weight from the
    file (its temporal decoder, CLIP tower and concat encoder); the LoRA trains and the base stays as in the file."""
    path, state = released
    overrides = [
        "stage=camera_lora", "experiment=demo", "stage.init.from_stage=null", f"stage.init.path={path}",
        "model.autoencoder.temporal_decoder=true", "model.clip.pretrained=null", f"paths.root={tmp_path}",
        f"paths.data_root={demo_shards}", "stage.height=32", "stage.width=32", "stage.num_frames=4",
        "stage.max_steps=2", "data.batch_size=2", "data.shuffle_buffer=4", "trainer.progress_bar=false",
        "stage.lora.export_merged=true",
    ]  # fmt: skip
    assert run(compose_train(overrides)) == 0
    export = tmp_path / "demo" / "camera_lora" / "export"
    lora, _ = _tensors(export / LORA_FILE)
    assert lora and all(".lora_A." in k or ".lora_B." in k for k in lora)
    merged = load_state_dict(export / "model.safetensors")
    changed = [k for k, v in state.items() if k in merged and not torch.equal(merged[k], v)]
    assert changed and all(".time_stack." in k and ".attn" in k for k in changed)  # only the LoRA'd projections

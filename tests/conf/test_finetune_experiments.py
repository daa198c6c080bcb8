"""The experiments that finetune the released SVD / SVD-XT weights (conf/experiment/svd_finetune.yaml, svd_xt_...).

They pick their own stage (img2vid_finetune) and are full size, so the tiny experiment x stage matrix of
test_configs.py leaves them out; a real training run from a tiny SVD-layout file is in tests/train/test_svd_finetune.py.
"""

from __future__ import annotations

import math

import pytest

from models.checkpoints.official import parameters_on_meta
from train.builders import build_latent_diffusion
from train.config import validate
from train.module import select_trainable

PATH = "stage.init.path=/weights/svd.safetensors"
SOURCES = "data.sources=[{urls: [x.tar]}]"
U = "model.diffusion_model."


@pytest.mark.parametrize(("experiment", "frames", "max_cfg"), [("svd_finetune", 14, 2.5), ("svd_xt_finetune", 25, 3.0)])
@pytest.mark.parametrize("stage", [None, "img2vid_finetune"])
def test_the_experiments_are_stage_iii_i2v_from_the_file(compose_cfg, experiment, frames, max_cfg, stage):
    stage_override = [f"stage={stage}"] if stage else []
    cfg = compose_cfg(*stage_override, f"experiment={experiment}", PATH, SOURCES)
    validate(cfg)
    s = cfg.stage
    assert (s.name, cfg.conditioner.task) == ("img2vid_finetune", "i2v")
    assert (s.num_frames, s.height, s.width) == (frames, 576, 1024)
    assert (s.sigma.p_mean, s.sigma.p_std, s.optim.lr, s.max_steps, s.ema.decay) == (1.0, 1.6, 3e-5, 50000, 0.9999)
    assert (s.cond_aug.p_mean, s.cond_aug.p_std) == (-3.0, 0.5)
    assert s.trainable_layers == "all" and list(s.trainable) == ["*"]  # the paper trains every UNet layer
    # Everything from the file: no previous stage, no component kept as built, no separate CLIP weights.
    assert (s.init.path, s.init.from_stage, list(s.init.keep)) == ("/weights/svd.safetensors", None, [])
    assert cfg.model.autoencoder.temporal_decoder and cfg.model.clip.pretrained is None
    assert cfg.data.target_fps == 7 and cfg.logger.samples.max_cfg == max_cfg


def test_without_the_checkpoint_path_the_error_says_what_to_set(compose_cfg):
    cfg = compose_cfg("experiment=svd_finetune", SOURCES)
    with pytest.raises(ValueError, match=r"stage\.init\.path=<path to the released svd\.safetensors"):
        validate(cfg)


def test_trainable_layers_is_a_checked_choice(compose_cfg):
    cfg = compose_cfg("experiment=svd_finetune", PATH, SOURCES, "stage.trainable_layers=spatial")
    with pytest.raises(ValueError, match="stage.trainable_layers='spatial' is not valid; choose one of all, temporal"):
        validate(cfg)


def test_the_model_has_the_released_layout_and_temporal_is_what_svd_adds_over_sd21(compose_cfg, manifest):
    """Built on the meta device: the composed model's keys and shapes are those of the released svd.safetensors
    (tests/manifests), and ``temporal`` selects exactly the UNet keys that SVD has and SD 2.1 does not, minus
    ``label_emb`` (656M parameters, RECIPE 1.5)."""
    cfg = compose_cfg("experiment=svd_finetune", PATH, SOURCES, "stage.trainable_layers=temporal")
    with parameters_on_meta():
        model = build_latent_diffusion(cfg)
    released = manifest("svd")["variants"]["svd"]["keys"]
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == {k: v["shape"] for k, v in released.items()}

    sd21 = manifest("sd21")["variants"]["sd21_768_v_ldm"]["keys"]
    added = {k for k in released if k.startswith(U) and k not in sd21 and not k.startswith(U + "label_emb.")}
    trainable = select_trainable(model, cfg.stage.trainable, layers=cfg.stage.trainable_layers)
    assert set(trainable) == added and len(added) == 738
    assert sum(math.prod(released[k]["shape"]) for k in trainable) == 656_076_838

    with parameters_on_meta():
        model = build_latent_diffusion(cfg)
    select_trainable(model, ["*"], layers="all")  # all: the whole UNet; the VAE and CLIP stay frozen
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {k for k in released if k.startswith(U)}

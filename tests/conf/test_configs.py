"""Every stage and experiment composes, validates and instantiates model, data and trainer (tiny sizes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ConfigKeyError, ValidationError

from train.builders import build_objective, dataset_config, unet_spec
from train.config import TrainConfig, validate
from train.config_keys import check_added_keys
from train.run import build_trainer

from .conftest import CONF

STAGES = sorted(p.stem for p in (CONF / "stage").glob("*.yaml"))
# Full-size experiments that pick their own stage (finetuning the released SVD weights) have their own tests in
# test_finetune_experiments.py; the matrix below composes the stage-generic (tiny) experiments with every stage.
STAGE_BOUND = ("svd_finetune", "svd_xt_finetune")
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if p.stem not in STAGE_BOUND)
GROUPS = ["conditioner", "data", "debug", "experiment", "logger", "model", "paths", "stage", "strategy", "trainer"]


def test_config_groups_are_frozen():
    # conf/curate/ is the curation's own primary config (python -m data.curation), not a training group.
    training = [p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("local", "curate")]
    assert sorted(training) == GROUPS
    assert STAGES == [
        "autoencoder",
        "camera_lora",
        "frame_interpolation",
        "image_pretrain",
        "img2vid_finetune",
        "multiview",
        "temporal_decoder",
        "video_finetune",
        "video_pretrain",
    ]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_and_experiment_instantiates(compose_cfg, stage, experiment, tmp_path):
    cfg = compose_cfg(f"stage={stage}", f"experiment={experiment}", f"paths.root={tmp_path}")
    validate(cfg)
    assert cfg.stage.name == stage
    objective = build_objective(cfg)
    assert any(p.requires_grad for p in objective.export_module().parameters())
    data = dataset_config(cfg, seed=cfg.seed)
    assert data.clip.num_frames == cfg.stage.num_frames and data.clip.size == (cfg.stage.height, cfg.stage.width)
    trainer = build_trainer(cfg, tmp_path)
    assert trainer.max_steps == cfg.stage.max_steps


@pytest.mark.parametrize("stage", STAGES)
def test_full_size_stages_compose_with_the_paper_values(compose_cfg, stage):
    cfg = compose_cfg(f"stage={stage}", "data.sources=[{urls: [x.tar]}]")
    validate(cfg)
    if cfg.stage.objective == "diffusion":
        spec = unet_spec(cfg)
        assert spec.model_channels == 320 and spec.context_dim == 1024
        assert spec.is_video == (stage != "image_pretrain")
    if stage == "img2vid_finetune":
        assert unet_spec(cfg).in_channels == 8 and unet_spec(cfg).adm_in_channels == 768
        assert (cfg.stage.sigma.p_mean, cfg.stage.sigma.p_std, cfg.stage.optim.lr) == (1.0, 1.6, 3e-5)
        assert (cfg.stage.height, cfg.stage.width, cfg.stage.num_frames) == (576, 1024, 14)
    if stage == "video_pretrain":
        assert (cfg.stage.height, cfg.stage.width, cfg.stage.max_steps, cfg.stage.optim.lr) == (256, 384, 150000, 1e-4)
        assert cfg.conditioner.ucg_rates.txt == 0.15
    if stage == "video_finetune":
        assert (cfg.stage.sigma.p_mean, cfg.stage.sigma.p_std) == (0.5, 1.4)
    if stage == "image_pretrain":
        assert (cfg.stage.sigma.p_mean, cfg.stage.sigma.p_std) == (-1.2, 1.0)


def test_a_misspelled_key_fails_at_composition(compose_cfg):
    with pytest.raises((ConfigCompositionException, ConfigKeyError)) as err:
        compose_cfg("stage=video_pretrain", "stage.optim.lrr=1")
    assert "lrr" in str(err.value) or "lrr" in str(err.value.__cause__)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("+stage.max_stpes=3", "stage.max_stpes"),
        ("+trainer.foo=1", "trainer.foo"),
        ("+data.bar=1", "data.bar"),
        ("+model.x=1", "model.x"),
        ("++stage.sigma.p_maen=1", "stage.sigma.p_maen"),
        ("+data.sources.0.wieght=2", "data.sources[0].wieght"),
        ("+foo=1", "foo"),
    ],
)
def test_a_key_added_with_plus_is_checked_against_the_schema(compose_cfg, override, key):
    # Hydra adds "+" keys under open_dict (struct mode never sees them); validate walks the schema dataclasses.
    cfg = compose_cfg("stage=video_pretrain", "experiment=demo", override)
    with pytest.raises(ValueError, match=rf"unknown config key {re.escape(key)}\b.*valid keys of ") as err:
        validate(cfg)
    assert "\n" not in str(err.value)


def test_an_unknown_key_names_the_closest_field(compose_cfg):
    cfg = compose_cfg("stage=video_pretrain", "experiment=demo", "+stage.max_stpes=3")
    with pytest.raises(ValueError, match=r"did you mean stage\.max_steps\?"):
        validate(cfg)


def test_known_keys_and_open_dicts_still_validate(compose_cfg):
    cfg = compose_cfg("stage=video_pretrain", "experiment=demo", "stage.max_steps=3", "+conditioner.ucg_rates.fps=0.1")
    validate(cfg)
    assert cfg.stage.max_steps == 3 and cfg.conditioner.ucg_rates.fps == 0.1


@pytest.mark.parametrize("flags", [[], ["--cfg", "job"]], ids=["run", "cfg_job"])
def test_the_cli_refuses_a_plus_typo_before_anything_runs(tmp_path, flags):
    # "--cfg job" is the slurm scripts' pre-submit check; it composes without ever calling validate.
    root = CONF.parent
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    overrides = ["stage=video_pretrain", "experiment=demo", "+stage.max_stpes=3", f"paths.root={tmp_path}", *flags]
    result = subprocess.run(
        [sys.executable, "-m", "train", *overrides], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    assert "unknown config key stage.max_stpes (did you mean stage.max_steps?)" in result.stderr
    assert "Traceback" not in result.stderr and list(tmp_path.iterdir()) == []


def test_added_keys_are_checked_before_composition_and_groups_are_left_to_hydra():
    groups_and_open_dicts = ["+experiment=demo", "+model@extra=tiny", "+conditioner.ucg_rates.fps=0.1", "--cfg", "job"]
    check_added_keys(["stage=video_pretrain", *groups_and_open_dicts], schema=TrainConfig, conf_dir=CONF)
    for typo, key in [
        ("+stage.sigma={p_maen: 1}", "stage.sigma.p_maen"),
        ("+data.sources=[{urls: [a.tar], wieght: 1}]", "data.sources[0].wieght"),
        ("++trainer.foo=1", "trainer.foo"),
    ]:
        with pytest.raises(ValueError, match=rf"unknown config key {re.escape(key)}\b"):
            check_added_keys(["stage=video_pretrain", typo], schema=TrainConfig, conf_dir=CONF)


def test_a_wrongly_typed_value_fails_at_composition(compose_cfg):
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_cfg("stage=video_pretrain", "stage.max_steps=many")


def test_an_unknown_choice_lists_the_valid_options(compose_cfg):
    with pytest.raises((ConfigCompositionException, MissingConfigException)) as err:
        compose_cfg("stage=video_pretrian")
    message = str(err.value)
    assert "video_pretrain" in message and "image_pretrain" in message


def test_the_stage_is_required(compose_cfg):
    with pytest.raises(ConfigCompositionException, match="stage"):
        compose_cfg()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("strategy.name=zero9", "strategy.name"),
        ("model.activation_checkpointing=some", "activation_checkpointing"),
        ("conditioner.task=v2v", "conditioner.task"),
        ("model.unet.video=false", "model.unet.video"),
        ("data.sources=[]", "data.sources"),
    ],
)
def test_string_choices_and_cross_group_rules_are_validated(compose_cfg, override, message):
    cfg = compose_cfg("stage=video_pretrain", "experiment=demo", override)
    with pytest.raises(ValueError, match=message):
        validate(cfg)


def test_a_resolution_off_the_latent_grid_is_a_clear_error(compose_cfg):
    cfg = compose_cfg("stage=video_pretrain", "experiment=demo", "stage.height=66")
    with pytest.raises(ValueError, match="height=66 is not divisible by the latent grid"):
        build_objective(cfg)

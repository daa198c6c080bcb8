from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from train.config import register_configs

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture
def compose_cfg():
    """compose(overrides) -> the config ``python -m train <overrides>`` would run with."""
    register_configs()

    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("train", overrides=list(overrides))

    return _compose

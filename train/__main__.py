"""``python -m train stage=<name> [experiment=<name>] [key=value ...]``: train one stage (see conf/ and README)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from train.config import TrainConfig, register_configs
from train.config_keys import check_added_keys

CONF = Path(__file__).resolve().parents[1] / "conf"


def main() -> None:
    register_configs()
    try:
        check_added_keys(sys.argv[1:], schema=TrainConfig, conf_dir=CONF)
    except ValueError as err:
        sys.exit(f"Error in the overrides: {err}")

    @hydra.main(config_path="../conf", config_name="train", version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        from train.run import run

        code = run(cfg)
        if code:
            sys.exit(code)

    _main()


if __name__ == "__main__":
    main()

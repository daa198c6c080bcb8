"""``python -m train stage=<name> [experiment=<name>] [key=value ...]``: train one stage (see conf/ and README)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from train.config import register_configs


def main() -> None:
    register_configs()

    @hydra.main(config_path="../conf", config_name="train", version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        from train.run import run

        code = run(cfg)
        if code:
            sys.exit(code)

    _main()


if __name__ == "__main__":
    main()

"""``python -m data.curation input=<videos or shards> out=<folder> [key=value ...]``: curate raw videos into clip
shards, filtered subsets and a report (see conf/curate/curate.yaml and the README)."""

from __future__ import annotations

import json
import logging
import sys

import hydra
from omegaconf import DictConfig


def main() -> None:
    from data.curation.config import register_schema

    register_schema()

    @hydra.main(config_path="../../conf/curate", config_name="curate", version_base="1.3")
    def _main(dcfg: DictConfig) -> None:
        from data.curation.config import config_from_hydra
        from data.curation.runner import run

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        try:
            cfg = config_from_hydra(dcfg)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        result = run(cfg, progress=sys.stderr.isatty() or cfg.workers > 1)
        print(json.dumps(result, sort_keys=True))

    _main()


if __name__ == "__main__":
    main()

"""The stage-run fixtures of tests/train, for GPU runs of real stages."""

from ..train.conftest import demo_shards, stage_overrides  # noqa: F401

"""Fixtures for the curation tests: demo raw videos written to files, with their ground truth (cuts, fades)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from data.demo_data import raw_video_sample


@dataclass(frozen=True)
class RawVideoFile:
    path: Path  # KEY.mp4 of a demo raw shard, written to a file
    meta: dict[str, Any]  # its KEY.json: num_frames, fps, scenes, transitions (ground truth), ...


@pytest.fixture(scope="session")
def demo_raw_video(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., RawVideoFile]:
    """``demo_raw_video(seed, index, size=(128, 96), fps=24.0)``: raw video ``index`` of the demo generator (3-6
    scenes joined by cuts, crossfades and fades through black), as ``write_demo_dataset`` puts it in ``raw/``."""
    root = tmp_path_factory.mktemp("demo_raw")
    cache: dict[tuple[Any, ...], RawVideoFile] = {}

    def make(seed: int, index: int, size: tuple[int, int] = (128, 96), fps: float = 24.0) -> RawVideoFile:
        key = (seed, index, tuple(size), fps)
        if key not in cache:
            name = f"{seed}_{index}_{size[0]}x{size[1]}_{fps:g}"
            members = raw_video_sample(seed, index, fps=fps, size=tuple(size), key=name)
            path = root / f"{name}.mp4"
            path.write_bytes(members[f"{name}.mp4"])
            cache[key] = RawVideoFile(path, json.loads(members[f"{name}.json"]))
        return cache[key]

    return make

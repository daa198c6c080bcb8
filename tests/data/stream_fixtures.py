"""Helpers for the stream tests: tiny tar shards written with tarfile (any member names, also malformed ones), a
shard reader that returns the keys and the skip reason, and a decode that counts its calls."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.batch import Sample
from data.errors import BadSample
from data.sources import iter_shard_records

Member = tuple[str, bytes]


def json_member(key: str, meta: Any) -> Member:
    return f"{key}.json", json.dumps(meta).encode()


def write_tar(path: Path, members: Sequence[Member]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def sample_members(key: str, *, meta: dict[str, Any] | None = None, payload: bytes = b"video") -> list[Member]:
    meta = {"key": key, "motion_score": 1.0} if meta is None else meta
    return [json_member(key, meta), (f"{key}.mp4", payload), (f"{key}.txt", f"caption {key}".encode())]


def write_shards(root: Path, *, num_shards: int, per_shard: int, prefix: str = "s") -> list[Path]:
    """Shards ``{prefix}{i:03d}.tar`` whose keys are ``{prefix}{i:03d}_{j:04d}`` (unique across shards)."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(num_shards):
        members: list[Member] = []
        for j in range(per_shard):
            key = f"{prefix}{i:03d}_{j:04d}"
            members += sample_members(key, meta={"key": key, "motion_score": float(j % 10)})
        paths.append(write_tar(root / f"{prefix}{i:03d}.tar", members))
    return paths


def read_keys(url: str) -> tuple[list[str], str | None]:
    """The keys ``iter_shard_records(url)`` yields, and the BadSample reason it ends with (None: a clean end)."""
    keys: list[str] = []
    try:
        for record in iter_shard_records(url):
            keys.append(str(record["__key__"]))
    except BadSample as e:
        return keys, e.reason
    return keys, None


class CountingDecode:
    """decode(record, rng=rng, counters=counters) -> Sample from the json; BadSample("corrupt_video") when the
    payload is b"bad"; a sample counted as padded_short (as a short video with on_short="pad") when it is b"short"."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, record: dict[str, Any], *, rng: np.random.Generator, counters: Counter[str]) -> Sample:
        self.calls.append(str(record["__key__"]))
        if record.get("mp4") == b"bad":
            raise BadSample("corrupt_video", "cannot open")
        if record.get("mp4") == b"short":
            counters["padded_short"] += 1
        meta = json.loads(record["json"])
        return Sample(
            frames=torch.full((1, 3, 2, 2), float(rng.random())),
            image_only_indicator=torch.zeros(1),
            fps_id=6,
            motion_bucket_id=int(meta.get("motion_score", 0)),
            caption=record.get("txt", b"").decode(),
            key=meta["key"],
            shard="",
        )


def keys(samples: Sequence[dict[str, Any]]) -> list[str]:
    return [s["key"] for s in samples]

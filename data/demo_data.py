"""Deterministic demo data: long "raw" videos, single-scene clips and images, in the shard formats real tools write.

- Raw videos (``raw/``): several scenes (``data/demo_scenes.py``) joined by hard cuts, crossfades and fades through
  black, as video2dataset writes them (``KEY.mp4``, ``KEY.json``, ``KEY.txt``). The json holds the ground truth
  (``scenes``, ``transitions``) for cut-detection tests, but no ``motion_score``: curation adds that.
- Clips (``clips/``): one scene each, 2-12 s, with the curation annotations a training stream reads
  (``motion_score``, ``text_area``, ``captions`` = {coca, vblip, llm}).
- Images (``images/``): one rendered frame, as img2dataset writes them (``KEY.jpg|png|webp``, ``KEY.txt``,
  ``KEY.json``).

Every sample is a pure function of (seed, kind, index): its generator is ``numpy.random.default_rng([seed, kind,
index])``, so content does not depend on shard size or order. Shards are written by ``data.shard_writer.ShardWriter``
(webdataset's TarWriter: sorted members, fixed mtime/owner; a temporary name then a rename), so a re-run gives
byte-identical files (videos are encoded by
``data/video_encode.py``).
"""

from __future__ import annotations

import functools
import io
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
from PIL import Image

from data.atomic_write import atomic_write_bytes
from data.demo_orbits import draw_orbit, orbit_sample, render_view
from data.demo_scenes import (
    SceneSpec,
    Speed,
    random_scene,
    render_scene,
    scene_captions,
    scene_motion_score,
    speed_px_per_frame,
    text_area_fraction,
)
from data.shard_writer import ShardWriter
from data.sources import split_member_name
from data.video_encode import encode_video

GENERATOR_VERSION = "2"
Transition = Literal["cut", "crossfade", "fade_black"]
TRANSITIONS: tuple[Transition, ...] = ("cut", "crossfade", "fade_black")
_KIND_IDS = {"raw": 0, "clip": 1, "image": 2, "single": 3, "orbit": 4, "orbit_test": 5}  # "single": write_demo_video
# Orbit videos: one view per frame; the demo data's target_fps (conf/data/demo.yaml) keeps every frame.
ORBIT_FPS = 8.0
IMAGE_FORMATS = ("jpg", "jpg", "png", "webp")  # by sample index: mostly JPEG, as in LAION-style shards


@dataclass(frozen=True)
class VideoPlan:
    """A video as scenes joined by transitions (``transitions[i]`` joins scene i and i + 1)."""

    scenes: tuple[SceneSpec, ...]
    transitions: tuple[Transition, ...]
    fps: float
    size: tuple[int, int]  # (width, height)
    fade_frames: int  # frames a crossfade overlaps; a fade through black spends half out and half in

    def __post_init__(self) -> None:
        if len(self.transitions) != max(0, len(self.scenes) - 1):
            raise ValueError(f"need {len(self.scenes) - 1} transitions for {len(self.scenes)} scenes")
        if self.fade_frames < 2:
            raise ValueError(f"fade_frames must be >= 2 (half fades out, half fades in), got {self.fade_frames}")
        width, height = self.size
        if width % 2 or height % 2:
            raise ValueError(f"size must have even width and height for yuv420p, got {width}x{height}")
        for i, t in enumerate(self.transitions):
            if t != "cut" and min(self.scenes[i].num_frames, self.scenes[i + 1].num_frames) <= self.fade_frames:
                raise ValueError(f"scenes around transition {i} are shorter than fade_frames={self.fade_frames}")


def sample_rng(
    seed: int, kind: Literal["raw", "clip", "image", "orbit", "orbit_test"], index: int
) -> np.random.Generator:
    """The generator for one sample; independent of every other sample."""
    return np.random.default_rng([seed, _KIND_IDS[kind], index])


def plan_raw_video(
    rng: np.random.Generator,
    *,
    fps: float,
    size: tuple[int, int],
    num_scenes: tuple[int, int] = (3, 6),
    scene_seconds: tuple[float, float] = (2.0, 4.0),
    fade_seconds: float = 0.5,
) -> VideoPlan:
    """Draw a raw video: ``num_scenes`` (inclusive range) scenes of ``scene_seconds`` each, joined by random
    transitions. The first scene is static and the second moves fast, so every raw video has both."""
    n = int(rng.integers(num_scenes[0], num_scenes[1] + 1))
    scenes = []
    for i in range(n):
        frames = int(round(float(rng.uniform(*scene_seconds)) * fps))
        speed: Speed | None = "static" if i == 0 else "fast" if i == 1 else None
        scenes.append(random_scene(rng, num_frames=frames, speed=speed))
    transitions = tuple(TRANSITIONS[int(rng.integers(len(TRANSITIONS)))] for _ in range(n - 1))
    return VideoPlan(tuple(scenes), transitions, fps, size, max(2, int(round(fade_seconds * fps))))


def _scene_starts(plan: VideoPlan) -> tuple[list[int], int]:
    starts, pos = [], 0
    for i, scene in enumerate(plan.scenes):
        if i > 0 and plan.transitions[i - 1] == "crossfade":
            pos -= plan.fade_frames
        starts.append(pos)
        pos += scene.num_frames
    return starts, pos


def video_metadata(plan: VideoPlan) -> dict[str, Any]:
    """Ground truth of a plan. Scenes: ``[start_frame, end_frame)`` in output frames (crossfaded scenes overlap).
    Transitions: ``frame`` = first frame of the new scene; ``[start_frame, end_frame)`` = frames mixing both scenes
    or black (empty for a cut)."""
    starts, total = _scene_starts(plan)
    scenes = []
    for i, (scene, start) in enumerate(zip(plan.scenes, starts, strict=True)):
        captions = scene_captions(scene)
        scenes.append(
            {
                "index": i,
                "start_frame": start,
                "end_frame": start + scene.num_frames,
                "transition_in": "none" if i == 0 else plan.transitions[i - 1],
                "speed": scene.speed,
                "speed_px_per_frame": round(speed_px_per_frame(scene.speed, size=plan.size), 6),
                "pan": scene.pan,
                "has_text": scene.has_text,
                "text": scene.text,
                "caption": captions.pop("caption"),
                "captions": captions,
            }
        )
    half = plan.fade_frames // 2
    transitions = []
    for i, kind in enumerate(plan.transitions):
        boundary = starts[i + 1]
        span = {"cut": (boundary, boundary), "crossfade": (boundary, boundary + plan.fade_frames)}
        span["fade_black"] = (boundary - half, boundary + half)
        transitions.append({"type": kind, "frame": boundary, "start_frame": span[kind][0], "end_frame": span[kind][1]})
    return {"num_frames": total, "fps": plan.fps, "width": plan.size[0], "height": plan.size[1], "scenes": scenes,
            "transitions": transitions}  # fmt: skip


def render_video(plan: VideoPlan) -> Iterator[np.ndarray]:
    """Yield the (H, W, 3) uint8 frames of ``plan``, rendering one scene at a time."""
    f, half = plan.fade_frames, plan.fade_frames // 2
    pending: np.ndarray | None = None
    for i, scene in enumerate(plan.scenes):
        frames = render_scene(scene, size=plan.size)
        if pending is not None:
            kind = plan.transitions[i - 1]
            if kind == "crossfade":
                a = (np.arange(1, f + 1, dtype=np.float32) / (f + 1))[:, None, None, None]
                frames[:f] = np.clip((1 - a) * pending[-f:] + a * frames[:f] + 0.5, 0, 255).astype(np.uint8)
                pending = pending[:-f]
            elif kind == "fade_black":
                ramp = (np.arange(1, half + 1, dtype=np.float32) / (half + 1))[:, None, None, None]
                pending[-half:] = (pending[-half:] * ramp[::-1] + 0.5).astype(np.uint8)
                frames[:half] = (frames[:half] * ramp + 0.5).astype(np.uint8)
            yield from pending
        pending = frames
    if pending is not None:
        yield from pending


def write_video(
    plan: VideoPlan, file: str | os.PathLike[str] | BinaryIO, *, codec: str | None = None
) -> dict[str, Any]:
    """Encode ``plan`` to ``file``; returns ``video_metadata(plan)``."""
    meta = video_metadata(plan)
    count = encode_video(render_video(plan), file, fps=plan.fps, size=plan.size, codec=codec)
    assert count == meta["num_frames"], (count, meta["num_frames"])
    return meta


def write_demo_video(
    path_or_file: str | os.PathLike[str] | BinaryIO,
    *,
    seconds: float,
    fps: float,
    size: tuple[int, int],
    seed: int,
    num_scenes: int = 1,
    speed: Speed | None = None,
    text: str | bool | None = False,
    codec: str | None = None,
) -> dict[str, Any]:
    """Write one clip of ``seconds`` (``round(seconds * fps)`` frames) made of ``num_scenes`` equal scenes joined
    by hard cuts; ``speed``/``text`` apply to every scene (None draws them). Returns ``video_metadata``."""
    total = int(round(seconds * fps))
    if num_scenes < 1 or total < num_scenes:
        raise ValueError(f"need num_scenes >= 1 and at least one frame per scene; got {num_scenes} for {total}")
    rng = np.random.default_rng([seed, _KIND_IDS["single"]])
    bounds = np.linspace(0, total, num_scenes + 1).round().astype(int)
    lengths = np.diff(bounds)
    scenes = tuple(random_scene(rng, num_frames=int(n), speed=speed, text=text) for n in lengths)
    plan = VideoPlan(scenes, ("cut",) * (num_scenes - 1), fps, size, fade_frames=2)
    return write_video(plan, path_or_file, codec=codec)


def write_tar_shard(path: str | os.PathLike[str], members: dict[str, bytes]) -> None:
    """Write ``members`` (``KEY.EXT`` -> bytes) as a shard with ``data.shard_writer.ShardWriter`` (webdataset's
    TarWriter, fixed metadata, atomic): records in the order of their sorted member names."""
    records: dict[str, dict[str, bytes]] = {}
    for name in sorted(members):
        key, ext = split_member_name(name)
        if key is None or ext is None:
            raise ValueError(f"tar member {name!r} has no KEY.EXT form; name members like 00000001.mp4")
        records.setdefault(key, {})[ext] = members[name]
    with ShardWriter(path) as writer:
        for key, record in records.items():
            writer.write(key, record)


def _record(kind: str, seed: int, index: int, *, key: str, caption: str, **fields: Any) -> bytes:
    """The json of one sample: the fields video2dataset / img2dataset write, then ours."""
    record = {"url": f"demo://{kind}/{seed}/{index}", "key": key, "status": "success", "error_message": None}
    record["generator"] = {"version": GENERATOR_VERSION, "seed": seed, "kind": kind, "index": index}
    return json.dumps({**record, "caption": caption, **fields}, sort_keys=True, ensure_ascii=True).encode()


def _key(shard: int, i: int) -> str:
    return f"{shard:05d}{i:04d}"  # video2dataset / img2dataset: 5-digit shard id + 4-digit index in the shard


def raw_video_sample(seed: int, index: int, *, fps: float, size: tuple[int, int], key: str) -> dict[str, bytes]:
    """Members (``KEY.mp4``, ``KEY.json``, ``KEY.txt``) of raw video ``index``."""
    plan = plan_raw_video(sample_rng(seed, "raw", index), fps=fps, size=size)
    buf = io.BytesIO()
    meta = write_video(plan, buf)
    caption = "; then ".join(s["caption"] for s in meta["scenes"])
    duration = round(meta["num_frames"] / fps, 6)
    record = _record("raw", seed, index, key=key, caption=caption, duration=duration, video_fps=fps, **meta)
    return {f"{key}.mp4": buf.getvalue(), f"{key}.json": record, f"{key}.txt": caption.encode()}


def clip_scene(seed: int, index: int, *, fps: float) -> Any:
    """The scene of clip ``index``: 2-12 s; speed cycles static/slow/fast, every 4th has text."""
    rng = sample_rng(seed, "clip", index)
    frames = int(round(float(rng.uniform(2.0, 12.0)) * fps))
    speed: Speed = ("static", "slow", "fast")[index % 3]
    return random_scene(rng, num_frames=frames, speed=speed, text=index % 4 == 3)


def clip_first_frame(seed: int, index: int, *, fps: float, size: tuple[int, int]) -> np.ndarray:
    """Frame 0 of clip ``index`` as (H, W, 3) uint8, rendered (not decoded): a conditioning image for I2V demos."""
    return next(render_video(VideoPlan((clip_scene(seed, index, fps=fps),), (), fps, size, 2)))


def clip_sample(seed: int, index: int, *, fps: float, size: tuple[int, int], key: str) -> dict[str, bytes]:
    """Members of clip ``index`` (see ``clip_scene``): mp4, json with captions and curation fields, txt."""
    scene = clip_scene(seed, index, fps=fps)
    frames = scene.num_frames
    buf = io.BytesIO()
    meta = write_video(VideoPlan((scene,), (), fps, size, 2), buf)
    captions = scene_captions(scene)
    caption = captions.pop("caption")
    record = _record(
        "clip", seed, index, key=key, caption=caption, captions=captions, duration=round(frames / fps, 6),
        video_fps=fps, fps=fps, width=size[0], height=size[1], num_frames=meta["num_frames"],
        motion_score=scene_motion_score(scene, fps=fps), speed=scene.speed, pan=scene.pan, has_text=scene.has_text,
        text=scene.text, text_area=text_area_fraction(scene.text, size=size),
    )  # fmt: skip
    return {f"{key}.mp4": buf.getvalue(), f"{key}.json": record, f"{key}.txt": caption.encode()}


def image_sample(seed: int, index: int, *, size: tuple[int, int], key: str) -> dict[str, bytes]:
    """Members of image ``index`` (format from ``IMAGE_FORMATS`` by index), img2dataset style."""
    rng = sample_rng(seed, "image", index)
    scene = random_scene(rng, num_frames=1, speed="static")
    frame = render_scene(scene, size=size)[0]
    ext = IMAGE_FORMATS[index % len(IMAGE_FORMATS)]
    buf = io.BytesIO()
    pil_format = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext]
    Image.fromarray(frame).save(buf, format=pil_format, **({"quality": 90} if ext != "png" else {}))
    caption = scene_captions(scene)["coca"]
    record = _record(
        "image", seed, index, key=key, caption=caption, width=size[0], height=size[1], original_width=size[0],
        original_height=size[1], has_text=scene.has_text,
    )  # fmt: skip
    return {f"{key}.{ext}": buf.getvalue(), f"{key}.json": record, f"{key}.txt": caption.encode()}


def orbit_record(
    seed: int, index: int, *, split: str, num_views: int, size: int, fps: float, key: str
) -> dict[str, bytes]:
    """Members of orbit ``index`` of ``split`` (``train``: kind ``orbit``; ``test``: held-out objects, kind
    ``orbit_test``), rendered by ``data.demo_orbits``."""
    kind = {"train": "orbit", "test": "orbit_test"}[split]
    record = json.loads(_record(kind, seed, index, key=key, caption=""))
    return orbit_sample(sample_rng(seed, kind, index), num_views=num_views, size=size, fps=fps, key=key, record=record)


def orbit_first_view(seed: int, index: int, *, split: str, size: int) -> tuple[np.ndarray, float]:
    """(view at azimuth 0 as (size, size, 3) uint8, elevation) of orbit ``index`` of ``split``, rendered (not
    decoded): a multiview sampling input."""
    obj, elevation = draw_orbit(sample_rng(seed, {"train": "orbit", "test": "orbit_test"}[split], index))
    return render_view(obj, azimuth=0.0, elevation=elevation, size=size), elevation


def write_shards(
    out_dir: str | os.PathLike[str],
    make_sample: Callable[[int, str], dict[str, bytes]],
    *,
    count: int,
    samples_per_shard: int,
    progress: Callable[[int], object] | None = None,
) -> list[Path]:
    """Write ``count`` samples (``make_sample(index, key)``) into ``out_dir/00000.tar``, ... ; returns the paths."""
    if samples_per_shard < 1 or samples_per_shard > 9999:
        raise ValueError(f"samples_per_shard must be in [1, 9999] (4-digit keys), got {samples_per_shard}")
    paths = []
    for shard, first in enumerate(range(0, count, samples_per_shard)):
        members: dict[str, bytes] = {}
        for i, index in enumerate(range(first, min(first + samples_per_shard, count))):
            members.update(make_sample(index, _key(shard, i)))
            if progress is not None:
                progress(1)
        paths.append(Path(out_dir) / f"{shard:05d}.tar")
        write_tar_shard(paths[-1], members)
    return paths


def write_demo_dataset(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    num_raw_videos: int = 4,
    num_clips: int = 12,
    num_images: int = 32,
    samples_per_shard: int = 8,
    size: tuple[int, int] = (128, 96),
    fps: float = 24.0,
    progress: Callable[[int], object] | None = None,
    num_orbits: int = 0,
    num_orbit_test: int = 0,
    orbit_views: int = 21,
    orbit_size: int = 64,
) -> dict[str, Any]:
    """Write ``raw/``, ``clips/``, ``images/`` shards and ``manifest.json`` under ``out_dir``; returns the manifest.

    ``num_orbits`` / ``num_orbit_test`` > 0 add ``orbits/train/`` and ``orbits/test/`` (held-out objects): orbits of
    ``orbit_views`` views at ``orbit_size`` pixels square (``data/demo_orbits.py``), at ``ORBIT_FPS``; without them the
    files are those of a generator without orbits, byte for byte."""
    out = Path(out_dir)
    kw: dict[str, Any] = {"samples_per_shard": samples_per_shard, "progress": progress}
    shards: dict[str, Sequence[Path]] = {
        "raw": write_shards(out / "raw", lambda i, k: raw_video_sample(seed, i, fps=fps, size=size, key=k),
                            count=num_raw_videos, **kw),
        "clips": write_shards(out / "clips", lambda i, k: clip_sample(seed, i, fps=fps, size=size, key=k),
                              count=num_clips, **kw),
        "images": write_shards(out / "images", lambda i, k: image_sample(seed, i, size=size, key=k),
                               count=num_images, **kw),
    }  # fmt: skip
    counts = {"raw": num_raw_videos, "clips": num_clips, "images": num_images}
    for split, count in (("train", num_orbits), ("test", num_orbit_test)):
        if count > 0:
            make = functools.partial(orbit_record, seed, split=split, num_views=orbit_views, size=orbit_size,
                                     fps=ORBIT_FPS)  # fmt: skip
            shards[f"orbits/{split}"] = write_shards(
                out / "orbits" / split, lambda i, k, make=make: make(i, key=k), count=count, **kw
            )
            counts[f"orbits/{split}"] = count
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "size": list(size),
        "fps": fps,
        "samples_per_shard": samples_per_shard,
        "counts": counts,
        "shards": {name: [p.relative_to(out).as_posix() for p in paths] for name, paths in shards.items()},
    }
    atomic_write_bytes(out / "manifest.json", (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("ascii"))
    return manifest

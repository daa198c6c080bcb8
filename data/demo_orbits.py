"""Orbit videos of a textured procedural object for the multi-view stage (SVD-MV, RECIPE 5 "SVD-MV details").

An ``OrbitObject`` is 2-4 primitives (spheres and axis-aligned boxes in the object's frame, turned by a random yaw),
each with a colour and a procedural texture (checker, stripes or dots) in its own coordinates, so a surface point keeps
its pattern from every viewpoint. ``render_view`` ray-casts it in numpy (analytic ray-sphere and ray-box hits, the
nearest hit wins) from a camera on a sphere around the origin at (azimuth, elevation) in degrees looking at the
origin, with Lambert shading from a fixed world light plus ambient, over a background that depends only on the ray's
world direction (a sky-to-floor gradient, the stand-in for the paper's HDRI environment maps). ``supersample`` x
``supersample`` rays per pixel are averaged. No randomness at render time: the same object and camera give the same
pixels on every machine, and azimuth 360 is azimuth 0 (angles are taken modulo 360 before any trigonometry).

An orbit (``orbit_sample``) is ``num_views`` views at azimuths ``360 * i / num_views`` (i = 0 .. num_views - 1) at
one elevation drawn uniformly in [-5, 30] degrees (the paper's range), written as a video2dataset-style record
(``KEY.mp4``, ``KEY.json`` with ``elevation`` and the per-frame ``azimuths``, ``KEY.txt``) that the video stages
read. ``data/demo_data.py`` writes ``orbits/train/`` and, from other objects, ``orbits/test/``: the held-out orbits
whose frames are the ground-truth views ``scripts/evaluate.py multiview`` compares generated views against.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from data.video_encode import encode_video

Primitive = Literal["sphere", "box"]
Pattern = Literal["checker", "stripes", "dots"]
PATTERNS: tuple[Pattern, ...] = ("checker", "stripes", "dots")
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.16, 0.16),
    "green": (0.16, 0.70, 0.27),
    "blue": (0.16, 0.31, 0.86),
    "yellow": (0.92, 0.82, 0.16),
    "purple": (0.59, 0.24, 0.75),
    "orange": (0.94, 0.55, 0.12),
    "cyan": (0.16, 0.78, 0.82),
    "white": (0.92, 0.92, 0.92),
}
ELEVATION_RANGE = (-5.0, 30.0)  # degrees (RECIPE 5, SVD-MV details)
CAMERA_DISTANCE = 2.8  # the object fits in the unit sphere; fov 40 degrees frames it with a small margin
FOV_DEGREES = 40.0
LIGHT = np.array([0.5, 0.8, 0.35]) / np.linalg.norm([0.5, 0.8, 0.35])  # world direction towards the light
AMBIENT = 0.3
SKY, FLOOR = np.array([0.78, 0.84, 0.93]), np.array([0.45, 0.42, 0.40])


@dataclass(frozen=True)
class Part:
    """One primitive: centre and half extents (a sphere uses ``size[0]`` as its radius), colours, texture."""

    kind: Primitive
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    color: str
    accent: str  # the pattern's second colour
    pattern: Pattern
    frequency: float  # pattern cells per unit length


@dataclass(frozen=True)
class OrbitObject:
    parts: tuple[Part, ...]
    yaw: float  # degrees: the object's turn about the up axis, so azimuth 0 is no canonical side


def random_object(rng: np.random.Generator) -> OrbitObject:
    """2-4 parts inside the unit sphere: a central body and smaller parts around it at different heights."""
    names = list(PALETTE)
    parts = []
    for i in range(int(rng.integers(2, 5))):
        kind: Primitive = "sphere" if rng.random() < 0.5 else "box"
        if i == 0:
            center, scale = (0.0, float(rng.uniform(-0.15, 0.1)), 0.0), float(rng.uniform(0.38, 0.5))
        else:
            angle = float(rng.uniform(0, 2 * np.pi))
            radius = float(rng.uniform(0.35, 0.55))
            center = (radius * np.cos(angle), float(rng.uniform(-0.35, 0.45)), radius * np.sin(angle))
            scale = float(rng.uniform(0.15, 0.3))
        size = (scale, scale, scale) if kind == "sphere" else tuple(scale * rng.uniform(0.6, 1.0, 3))
        color, accent = rng.choice(len(names), size=2, replace=False)
        parts.append(
            Part(kind, tuple(float(c) for c in center), tuple(float(s) for s in size), names[int(color)],
                 names[int(accent)], PATTERNS[int(rng.integers(len(PATTERNS)))], float(rng.uniform(4.0, 9.0)))
        )  # fmt: skip
    return OrbitObject(tuple(parts), yaw=float(rng.uniform(0.0, 360.0)))


def describe(obj: OrbitObject) -> str:
    words = [f"a {p.color} {p.kind} with {p.accent} {p.pattern}" for p in obj.parts]
    return "an object made of " + ", ".join(words[:-1]) + " and " + words[-1]


def camera_rays(azimuth: float, elevation: float, size: int, supersample: int) -> tuple[np.ndarray, np.ndarray]:
    """(origin (3,), unit directions (S, S, 3)) for a ``size * supersample`` square image; y is up, row 0 at top."""
    az, el = np.deg2rad(azimuth % 360.0), np.deg2rad(elevation % 360.0)
    origin = CAMERA_DISTANCE * np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
    forward = -origin / np.linalg.norm(origin)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    n = size * supersample
    half = np.tan(np.deg2rad(FOV_DEGREES) / 2)
    coords = ((np.arange(n) + 0.5) / n * 2 - 1) * half
    u, v = np.meshgrid(coords, -coords)  # (n, n) each: u to the right, v up
    dirs = forward + u[..., None] * right + v[..., None] * up
    return origin, dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)


def _hit_sphere(o: np.ndarray, d: np.ndarray, part: Part) -> tuple[np.ndarray, np.ndarray]:
    """(distance (N,) with inf for misses, normal (N, 3)) in object coordinates."""
    oc = o - np.asarray(part.center)
    b = d @ oc
    disc = b * b - (oc @ oc - part.size[0] ** 2)
    t = np.where(disc >= 0, -b - np.sqrt(np.maximum(disc, 0.0)), np.inf)
    t = np.where(t > 1e-6, t, np.inf)
    normal = (o + t[:, None] * d - np.asarray(part.center)) / part.size[0]
    return t, normal


def _hit_box(o: np.ndarray, d: np.ndarray, part: Part) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.asarray(part.center) - part.size, np.asarray(part.center) + part.size
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1, t2 = (lo - o) * inv, (hi - o) * inv
    tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
    near, far = np.nan_to_num(tmin, nan=-np.inf).max(axis=1), np.nan_to_num(tmax, nan=np.inf).min(axis=1)
    t = np.where((near <= far) & (near > 1e-6), near, np.inf)
    axis = np.nan_to_num(tmin, nan=-np.inf).argmax(axis=1)
    normal = np.zeros_like(d)
    normal[np.arange(len(d)), axis] = -np.sign(d[np.arange(len(d)), axis])
    return t, normal


def _texture(part: Part, points: np.ndarray) -> np.ndarray:
    """Colour (N, 3) of surface ``points`` (object coordinates) from the part's pattern."""
    p = (points - np.asarray(part.center)) * part.frequency
    if part.pattern == "checker":
        mask = (np.floor(p).sum(axis=1).astype(np.int64) % 2) == 0
    elif part.pattern == "stripes":
        mask = (np.floor(p[:, 1] + 0.5 * p[:, 0]).astype(np.int64) % 2) == 0
    else:
        mask = np.linalg.norm(p - np.floor(p) - 0.5, axis=1) < 0.32
    return np.where(mask[:, None], PALETTE[part.color], PALETTE[part.accent])


def render_view(obj: OrbitObject, *, azimuth: float, elevation: float, size: int, supersample: int = 2) -> np.ndarray:
    """The object seen from (azimuth, elevation) degrees as (size, size, 3) uint8."""
    if size < 2 or supersample < 1:
        raise ValueError(f"size must be >= 2 and supersample >= 1; got size={size}, supersample={supersample}")
    origin, dirs = camera_rays(azimuth, elevation, size, supersample)
    world_dirs = dirs.reshape(-1, 3)
    yaw = np.deg2rad(obj.yaw % 360.0)
    c, s = np.cos(yaw), np.sin(yaw)
    to_object = np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])  # rotation about y by -yaw
    o, d = to_object @ origin, world_dirs @ to_object.T
    best = np.full(len(d), np.inf)
    color = np.zeros((len(d), 3))  # rays that hit nothing keep 0 (np.where picks the background there)
    normal = np.zeros((len(d), 3))
    for part in obj.parts:
        t, n = (_hit_sphere if part.kind == "sphere" else _hit_box)(o, d, part)
        closer = t < best
        if closer.any():
            best[closer] = t[closer]
            normal[closer] = n[closer]
            color[closer] = _texture(part, o + t[closer, None] * d[closer])
    hit = np.isfinite(best)
    world_normal = normal @ to_object  # back to world coordinates (the rotation's transpose)
    shade = AMBIENT + (1 - AMBIENT) * np.clip(world_normal @ LIGHT, 0.0, None)
    blend = np.clip(world_dirs[:, 1:2] * 2.0 + 0.5, 0.0, 1.0)
    background = FLOOR + blend * (SKY - FLOOR)
    rgb = np.where(hit[:, None], color * shade[:, None], background)
    if supersample > 1:  # (S*S, 3) rows of size*supersample pixels -> box-filtered (size, size, 3)
        rgb = rgb.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
    return np.clip(np.round(rgb.reshape(size, size, 3) * 255.0), 0, 255).astype(np.uint8)


def orbit_azimuths(num_views: int) -> list[float]:
    """``num_views`` azimuths evenly around the circle, starting at 0 degrees."""
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1 (SVD-MV uses 21); got {num_views}")
    return [360.0 * i / num_views for i in range(num_views)]


def render_orbit(obj: OrbitObject, *, elevation: float, num_views: int, size: int, supersample: int = 2) -> np.ndarray:
    """(num_views, size, size, 3) uint8: the views at ``orbit_azimuths(num_views)``."""
    views = [render_view(obj, azimuth=a, elevation=elevation, size=size, supersample=supersample)
             for a in orbit_azimuths(num_views)]  # fmt: skip
    return np.stack(views)


def draw_orbit(rng: np.random.Generator) -> tuple[OrbitObject, float]:
    """A random object and its orbit's elevation (degrees, uniform in ``ELEVATION_RANGE``, 4 decimals)."""
    obj = random_object(rng)
    return obj, round(float(rng.uniform(*ELEVATION_RANGE)), 4)


def orbit_sample(
    rng: np.random.Generator, *, num_views: int, size: int, fps: float, key: str, record: dict[str, Any]
) -> dict[str, bytes]:
    """Members (``KEY.mp4``, ``KEY.json``, ``KEY.txt``) of one orbit of a random object; ``record`` holds the json's
    common fields (``data.demo_data``). The json adds ``elevation`` (degrees), ``azimuths`` (degrees, per frame),
    ``object`` (the parts) and the video fields."""
    if size % 2:
        raise ValueError(f"orbit size must be even for yuv420p video; got {size}")
    obj, elevation = draw_orbit(rng)
    frames = render_orbit(obj, elevation=elevation, num_views=num_views, size=size)
    buf = io.BytesIO()
    encode_video(iter(frames), buf, fps=fps, size=(size, size))
    caption = describe(obj)
    meta = {
        **record,
        "caption": caption,
        "elevation": elevation,
        "azimuths": orbit_azimuths(num_views),
        "object": {"yaw": round(obj.yaw, 4), "parts": [p.__dict__ for p in obj.parts]},
        "fps": fps,
        "video_fps": fps,
        "width": size,
        "height": size,
        "num_frames": num_views,
        "duration": round(num_views / fps, 6),
    }
    text = json.dumps(meta, sort_keys=True, ensure_ascii=True).encode()
    return {f"{key}.mp4": buf.getvalue(), f"{key}.json": text, f"{key}.txt": caption.encode()}

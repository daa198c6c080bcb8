"""Procedural scenes for the demo data: a textured background, 1-3 textured shapes and optional burned-in text.

A ``SceneSpec`` is drawn from a seeded ``numpy.random.Generator`` (``random_scene``), rendered to uint8 RGB frames
with numpy (``render_scene``) and described in words (``scene_captions``). Everything is a pure function of the spec,
so the same seed gives the same pixels on every machine.

Speeds are in pixels per frame at the rendered size; ``SPEED_PX_PER_FRAME`` gives the value per speed class for a
frame whose short side is ``REFERENCE_SHORT_SIDE`` pixels, and larger frames scale it proportionally.

Camera motion: ``pan`` slides the background opposite to the shapes (the camera follows them); ``zoom`` ("in" or
"out", explicit only, never drawn by ``random_scene``, so the demo data keeps its bytes) scales the background about
the frame centre, the magnification changing by ``speed / short side`` per frame (the middle of the frame's edges
moves at half the shapes' speed at the start); the shapes keep moving as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Speed = Literal["static", "slow", "fast"]
Background = Literal["stripes", "noise", "gradient"]
ShapeKind = Literal["circle", "square"]
Texture = Literal["stripes", "checker", "plain"]
Zoom = Literal["in", "out"]

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 70),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "orange": (240, 140, 30),
    "cyan": (40, 200, 210),
    "gray": (128, 128, 128),
}
REFERENCE_SHORT_SIDE = 64
SPEED_PX_PER_FRAME: dict[str, float] = {"static": 0.0, "slow": 0.5, "fast": 2.5}
SPEED_WORDS: dict[str, str] = {"static": "still", "slow": "slowly", "fast": "fast"}
TEXTS = ("SALE 50%", "NEWS", "HELLO", "OPEN 24H", "WIN", "LIVE")
DIRECTIONS: dict[str, tuple[float, float]] = {
    "to the right": (1.0, 0.0),
    "to the left": (-1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}


@dataclass(frozen=True)
class ShapeSpec:
    kind: ShapeKind
    color: str
    texture: Texture
    size: float  # radius (circle) or half side (square), as a fraction of the short side
    x0: float  # start centre, as fractions of width / height
    y0: float


@dataclass(frozen=True)
class SceneSpec:
    num_frames: int
    background: Background
    bg_color: str
    bg_seed: int  # seeds the smooth-noise background
    shapes: tuple[ShapeSpec, ...]
    speed: Speed
    direction: str  # a key of DIRECTIONS; shapes move, the background stays unless pan is set
    text: str | None = None
    pan: bool = False  # the camera pans (background moves) at the scene's speed, opposite to the shapes
    zoom: Zoom | None = None  # the camera zooms in or out about the centre (module docstring); None: no zoom

    def __post_init__(self) -> None:
        if self.zoom is not None and (self.zoom not in ("in", "out") or self.pan or self.speed == "static"):
            raise ValueError(f'zoom must be "in", "out" or None, with pan=False and a moving speed; got zoom='
                             f"{self.zoom!r}, pan={self.pan}, speed={self.speed!r}")  # fmt: skip

    @property
    def has_text(self) -> bool:
        return self.text is not None


def speed_px_per_frame(speed: Speed, *, size: tuple[int, int]) -> float:
    """Pixels per frame for a speed class at frame ``size`` = (width, height)."""
    return SPEED_PX_PER_FRAME[speed] * min(size) / REFERENCE_SHORT_SIDE


def random_scene(
    rng: np.random.Generator,
    *,
    num_frames: int,
    speed: Speed | None = None,
    text: str | bool | None = None,
    pan: bool | None = None,
    zoom: Zoom | None = None,
) -> SceneSpec:
    """Draw a scene. ``speed``/``text``/``pan`` = None draws them too; ``text=True`` picks a random string; ``zoom``
    is never drawn (given: no pan is drawn, and the rng is advanced the same, so the rest of the scene is the same)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}; pass a positive frame count")
    names = sorted(COLORS)
    if speed is None:
        speed = ("static", "slow", "fast")[int(rng.integers(3))]
    if speed not in SPEED_PX_PER_FRAME:
        raise ValueError(f"speed must be one of {sorted(SPEED_PX_PER_FRAME)}, got {speed!r}")
    bg_color = names[int(rng.integers(len(names)))]
    shape_colors = [c for c in names if c != bg_color]
    shapes = []
    for _ in range(int(rng.integers(1, 4))):
        shapes.append(
            ShapeSpec(
                kind=("circle", "square")[int(rng.integers(2))],
                color=shape_colors[int(rng.integers(len(shape_colors)))],
                texture=("stripes", "checker", "plain")[int(rng.integers(3))],
                size=float(rng.uniform(0.12, 0.25)),
                x0=float(rng.uniform(0.15, 0.85)),
                y0=float(rng.uniform(0.2, 0.8)),
            )
        )
    if text is True:
        text = TEXTS[int(rng.integers(len(TEXTS)))]
    elif text is None:
        text = TEXTS[int(rng.integers(len(TEXTS)))] if rng.random() < 0.3 else None
    elif text is False:
        text = None
    if pan is None:
        pan = speed != "static" and rng.random() < 0.3
    return SceneSpec(
        num_frames=num_frames,
        background=("stripes", "noise", "gradient")[int(rng.integers(3))],
        bg_color=bg_color,
        bg_seed=int(rng.integers(2**31)),
        shapes=tuple(shapes),
        speed=speed,
        direction=sorted(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))],
        text=text,
        pan=bool(pan) and speed != "static" and zoom is None,
        zoom=zoom,
    )


def _background_canvas(spec: SceneSpec, *, height: int, width: int) -> np.ndarray:
    """(height, width, 3) float32 background, periodic-free; callers crop a frame-sized window from it."""
    color = np.array(COLORS[spec.bg_color], np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if spec.background == "stripes":
        period = 12.0
        shade = 0.65 + 0.35 * (np.sin(2 * np.pi * (xx + 0.5 * yy) / period) > 0)
    elif spec.background == "gradient":
        shade = 0.45 + 0.55 * (0.5 + 0.5 * np.sin(2 * np.pi * (xx / 97.0 + yy / 61.0)))
    else:
        rng = np.random.default_rng(spec.bg_seed)
        coarse = rng.random((height // 8 + 2, width // 8 + 2)).astype(np.float32)
        img = Image.fromarray(coarse, mode="F").resize((width, height), Image.Resampling.BICUBIC)
        shade = 0.4 + 0.6 * np.clip(np.asarray(img), 0.0, 1.0)
    return shade[..., None] * color


def _text_layer(text: str, *, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(rgb, alpha) of large white text with a black outline, centred, as float32 arrays."""
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    font_size = max(8, height // 3)
    try:
        font: ImageFont.FreeTypeFont | ImageFont.ImageFont = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        font = ImageFont.load_default()
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=1)
    if right - left > 0.95 * width and isinstance(font, ImageFont.FreeTypeFont):
        font = font.font_variant(size=max(6, int(font_size * 0.95 * width / (right - left))))
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=1)
    xy = ((width - (right - left)) / 2 - left, (height - (bottom - top)) / 2 - top)
    draw.text(xy, text, font=font, fill=(255, 255, 255, 255), stroke_width=1, stroke_fill=(0, 0, 0, 255))
    arr = np.asarray(layer).astype(np.float32)
    return arr[..., :3], arr[..., 3:] / 255.0


def _shape_texture(shape: ShapeSpec, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Shade in [0.5, 1] from shape-local coordinates, so the texture moves with the shape."""
    if shape.texture == "stripes":
        return 0.6 + 0.4 * ((np.floor(u / 4.0) % 2) == 0)
    if shape.texture == "checker":
        return 0.55 + 0.45 * (((np.floor(u / 4.0) + np.floor(v / 4.0)) % 2) == 0)
    return np.ones_like(u)


def render_scene(spec: SceneSpec, *, size: tuple[int, int]) -> np.ndarray:
    """Render all frames of ``spec`` at ``size`` = (width, height) as (T, H, W, 3) uint8."""
    width, height = size
    if width < 8 or height < 8:
        raise ValueError(f"size must be at least 8x8, got {width}x{height}")
    step = speed_px_per_frame(spec.speed, size=size)
    dx, dy = DIRECTIONS[spec.direction]
    pan_total = int(np.ceil(step * spec.num_frames)) + 1 if spec.pan else 0
    rate = step / min(width, height) if spec.zoom else 0.0  # magnification change per frame
    grow = 1.0 + rate * spec.num_frames if spec.zoom == "out" else 1.0  # how much more the widest frame shows
    pad = pan_total + (int(np.ceil(max(width, height) * (grow - 1.0))) + 2 if spec.zoom == "out" else 0)
    canvas = _background_canvas(spec, height=height + pad, width=width + pad)
    text = _text_layer(spec.text, width=width, height=height) if spec.text else None
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    short = min(width, height)
    out = np.empty((spec.num_frames, height, width, 3), np.uint8)
    for t in range(spec.num_frames):
        if spec.pan:
            # The camera moves with the shapes' direction, so the background slides the other way.
            ox = int(round(step * t)) if dx > 0 else pan_total - int(round(step * t)) if dx < 0 else 0
            oy = int(round(step * t)) if dy > 0 else pan_total - int(round(step * t)) if dy < 0 else 0
            frame = canvas[oy : oy + height, ox : ox + width].copy()
        elif spec.zoom:
            frame = _zoomed(canvas, (1.0 + rate * t) ** (1 if spec.zoom == "in" else -1), size=size)
        else:
            frame = canvas[:height, :width].copy()
        for shape in spec.shapes:
            r = shape.size * short
            # Shapes wrap around the frame edges so they stay visible in long scenes.
            cx = (shape.x0 * width + dx * step * t + r) % (width + 2 * r) - r
            cy = (shape.y0 * height + dy * step * t + r) % (height + 2 * r) - r
            u, v = xx - cx, yy - cy
            if shape.kind == "circle":
                mask = u * u + v * v <= r * r
            else:
                mask = (np.abs(u) <= r) & (np.abs(v) <= r)
            shade = _shape_texture(shape, u[mask] + 1000.0, v[mask] + 1000.0)
            frame[mask] = shade[:, None] * np.array(COLORS[shape.color], np.float32)
        if text is not None:
            rgb, alpha = text
            frame = frame * (1.0 - alpha) + rgb * alpha
        out[t] = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
    return out


def _zoomed(canvas: np.ndarray, scale: float, *, size: tuple[int, int]) -> np.ndarray:
    """The ``size`` frame of ``canvas`` magnified ``scale`` times about both centres."""
    import cv2

    (w, h), (hc, wc) = size, canvas.shape[:2]
    m = np.float32([[scale, 0, (w - 1) / 2 - scale * (wc - 1) / 2], [0, scale, (h - 1) / 2 - scale * (hc - 1) / 2]])
    return cv2.warpAffine(canvas, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _shapes_phrase(shapes: tuple[ShapeSpec, ...]) -> str:
    words = []
    for s in shapes:
        texture = {"stripes": "striped ", "checker": "checkered ", "plain": ""}[s.texture]
        phrase = f"{texture}{s.color} {s.kind}"
        words.append(("an " if phrase[0] in "aeiou" else "a ") + phrase)
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _background_phrase(spec: SceneSpec) -> str:
    kind = {"stripes": "striped", "noise": "mottled", "gradient": "wavy gradient"}[spec.background]
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} {spec.bg_color} background"


def scene_captions(spec: SceneSpec) -> dict[str, str]:
    """Three captions in the roles of RECIPE section 6: ``coca`` (spatial, one frame), ``vblip`` (temporal),
    ``llm`` (a summary of both). ``caption`` is the full description used as the default text."""
    shapes = _shapes_phrase(spec.shapes)
    plural = len(spec.shapes) > 1
    text = f" with the text '{spec.text}' written on it" if spec.text else ""
    coca = f"{shapes} over {_background_phrase(spec)}{text}"
    if spec.speed == "static":
        motion = f"{shapes} {'stand' if plural else 'stands'} still"
        full = f"static shot of {coca}"
    else:
        motion = f"{shapes} {'move' if plural else 'moves'} {SPEED_WORDS[spec.speed]} {spec.direction}"
        moving = f"{shapes} moving {SPEED_WORDS[spec.speed]} {spec.direction} over {_background_phrase(spec)}{text}"
        full = moving + (", the camera pans along" if spec.pan else "")
        full += f", the camera zooms {spec.zoom}" if spec.zoom else ""
    vblip = motion + (" while the camera pans" if spec.pan else "")
    vblip += f" while the camera zooms {spec.zoom}" if spec.zoom else ""
    llm = ("a static scene: " if spec.speed == "static" else f"a {spec.speed} motion scene: ") + coca
    return {"caption": full, "coca": coca, "vblip": vblip, "llm": llm}


def scene_motion_score(spec: SceneSpec, *, fps: float) -> float:
    """The scene's motion in the curation's unit (``data/curation/motion.py``): displacement of the moving content
    in pixels per second on a 16-pixel short side, from its speed (independent of the rendered size). 0 for
    static scenes. What the flow measures is lower where only part of the frame moves."""
    if not (spec.shapes or spec.pan):
        return 0.0
    return round(float(SPEED_PX_PER_FRAME[spec.speed]) * fps * 16.0 / REFERENCE_SHORT_SIDE, 6)


def text_area_fraction(text: str | None, *, size: tuple[int, int]) -> float:
    """Fraction of the frame covered by the bounding box of the burned-in text (what an OCR box would cover)."""
    if not text:
        return 0.0
    _, alpha = _text_layer(text, width=size[0], height=size[1])
    ys, xs = np.nonzero(alpha[..., 0] > 0)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    return round(float(box) / (size[0] * size[1]), 6)

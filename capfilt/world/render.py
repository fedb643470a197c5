"""Pixels for scenes: a background (solid, gradient or light texture) and flat shapes.

Drawn at twice the size and reduced, which anti-aliases edges cheaply. Everything is a function
of the scene alone, so the same scene gives the same pixels in any process.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw

from capfilt.world.scene import COLOURS, SIZE_RADIUS, Background, Obj, Scene

SUPERSAMPLE = 2
TEXTURE_AMPLITUDE = 14  # light: keeps objects the loudest thing in the picture


def background_array(bg: Background, side: int) -> np.ndarray:
    """(side, side, 3) uint8."""
    c1 = np.array(bg.colour, dtype=np.float32)
    if bg.kind == "gradient":
        c2 = np.array(bg.colour2, dtype=np.float32)
        ramp = np.linspace(0.0, 1.0, side, dtype=np.float32)
        if bg.direction == 0:
            t = np.broadcast_to(ramp[None, :], (side, side))
        elif bg.direction == 1:
            t = np.broadcast_to(ramp[:, None], (side, side))
        else:
            t = (ramp[None, :] + ramp[:, None]) / 2
        img = c1 + (c2 - c1) * t[..., None]
    else:
        img = np.broadcast_to(c1, (side, side, 3)).astype(np.float32)
    if bg.kind == "texture":
        rng = np.random.default_rng(bg.texture_seed)
        # Coarse noise, upsampled: a soft mottled surface rather than per-pixel grain.
        cells = max(2, side // 8)
        coarse = rng.uniform(-1, 1, size=(cells, cells, 1)).astype(np.float32)
        reps = -(-side // cells)
        noise = np.repeat(np.repeat(coarse, reps, axis=0), reps, axis=1)[:side, :side]
        stripes = np.sin(np.arange(side, dtype=np.float32) * (2 * math.pi / max(4, side / 6)))[None, :, None]
        img = img + TEXTURE_AMPLITUDE * (0.7 * noise + 0.3 * stripes)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _star(cx: float, cy: float, r: float, points: int = 5) -> list[tuple[float, float]]:
    out = []
    for k in range(points * 2):
        rad = r if k % 2 == 0 else r * 0.45
        a = -math.pi / 2 + k * math.pi / points
        out.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return out


def draw_object(draw: ImageDraw.ImageDraw, obj: Obj, side: int, x: float | None = None, y: float | None = None,
                fill: int | tuple[int, int, int] | None = None) -> None:
    """`fill` overrides the object's colour: a label value when drawing a mask."""
    cx = (obj.x if x is None else x) * side
    cy = (obj.y if y is None else y) * side
    r = SIZE_RADIUS[obj.size] * side
    fill = COLOURS[obj.colour] if fill is None else fill
    if obj.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif obj.shape == "square":
        s = r * 0.88
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    elif obj.shape == "star":
        draw.polygon(_star(cx, cy, r * 1.1), fill=fill)
    elif obj.shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r * 0.8, cy), (cx, cy + r), (cx - r * 0.8, cy)], fill=fill)
    elif obj.shape == "cross":
        w = r * 0.36
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def render(scene: Scene, side: int, frame: int | None = None) -> Image.Image:
    """The scene as an RGB image `side` pixels square; `frame` moves objects by their motion."""
    big = side * SUPERSAMPLE
    img = Image.fromarray(background_array(scene.background, big), "RGB")
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        if frame is None:
            draw_object(draw, obj, big)
        else:
            draw_object(draw, obj, big, obj.x + obj.dx * frame, obj.y + obj.dy * frame)
    return img.reduce(SUPERSAMPLE)


def encode(img: Image.Image, fmt: str, jpeg_quality: int = 90) -> bytes:
    """JPEG or PNG bytes with fixed encoder options, so the same pixels give the same bytes."""
    buf = io.BytesIO()
    if fmt == "jpg":
        img.save(buf, format="JPEG", quality=jpeg_quality, optimize=False, progressive=False, subsampling=0)
    elif fmt == "png":
        img.save(buf, format="PNG", optimize=False, compress_level=6)
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    return buf.getvalue()

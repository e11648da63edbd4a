"""Deterministic synthetic images with real visual semantics (the embedded default data).

Each image holds one object of a class (a shape) drawn with a random texture and colour at a random position and
scale on a varied background (gradient, noise, stripes or a second texture), plus a few distractor blobs. The class
label and a segmentation mask (0 = background, class + 1 = object) are returned beside the image, so the same
corpus serves pretraining (images only) and evaluation (labels, masks).

Example:
    >>> rng = np.random.default_rng(0)
    >>> image, mask, label = render_image(rng, size=64)
    >>> image.size, mask.shape
    ((64, 64), (64, 64))
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross", "ring", "star", "diamond", "bar")
STYLES = ("objects", "plain", "textures")
TEXTURES = ("hstripes", "vstripes", "checker", "dots", "grid", "rings", "speckle", "zigzag")


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(math.cos(angle + k * math.pi / 2 + math.pi / 4), math.sin(angle + k * math.pi / 2 + math.pi / 4))
               for k in range(4)]
    elif shape == "triangle":
        pts = [(math.cos(angle + k * 2 * math.pi / 3), math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    elif shape == "diamond":
        pts = [(0.6 * math.cos(angle + k * math.pi / 2), math.sin(angle + k * math.pi / 2)) for k in range(4)]
        pts = [(x * math.cos(angle) - y * math.sin(angle), x * math.sin(angle) + y * math.cos(angle)) for x, y in pts]
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = 1.0 if k % 2 == 0 else 0.42
            pts.append((rad * math.cos(angle + k * math.pi / 5), rad * math.sin(angle + k * math.pi / 5)))
    else:
        raise ValueError(f"not a polygon shape: {shape}")
    return [(cx + r * x, cy + r * y) for x, y in pts]


def _shape_mask(shape: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "ring":
        draw.ellipse(box, fill=255)
        inner = 0.55 * r
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    elif shape == "cross":
        w = 0.35 * r
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=255)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=255)
        canvas = canvas.rotate(math.degrees(angle), center=(cx, cy), resample=Image.Resampling.NEAREST)
    elif shape == "bar":
        draw.rectangle((cx - r, cy - 0.28 * r, cx + r, cy + 0.28 * r), fill=255)
        canvas = canvas.rotate(math.degrees(angle), center=(cx, cy), resample=Image.Resampling.NEAREST)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=255)
    return np.asarray(canvas) > 127


def _texture(rng: np.random.Generator, size: int, colour: np.ndarray) -> np.ndarray:
    """A (size, size, 3) float texture around ``colour``: solid, stripes, checker or noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    kind = rng.integers(4)
    if kind == 0:
        pattern = np.zeros((size, size), np.float32)
    elif kind == 1:
        theta, period = rng.uniform(0, math.pi), rng.uniform(4, 12)
        pattern = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period)
    elif kind == 2:
        cell = int(rng.integers(3, 9))
        pattern = ((xx // cell + yy // cell) % 2) * 2.0 - 1.0
    else:
        pattern = rng.standard_normal((size, size)).astype(np.float32) * 0.7
    amplitude = rng.uniform(0.1, 0.35)
    return np.clip(colour[None, None, :] + amplitude * pattern[..., None], 0.0, 1.0)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    if rng.random() < 0.5:
        c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        theta = rng.uniform(0, 2 * math.pi)
        t = np.clip(0.5 + (xx - 0.5) * math.cos(theta) + (yy - 0.5) * math.sin(theta), 0, 1)[..., None]
        return (1 - t) * c0 + t * c1
    return _texture(rng, size, rng.uniform(0.1, 0.9, 3))


def _colour_field(rng: np.random.Generator, size: int, cells: int = 4) -> np.ndarray:
    """A (size, size, 3) colour in [0, 1] that varies across the image: random colours on a ``cells`` x ``cells``
    grid, interpolated bilinearly, so two crops of one image see different colours."""
    grid = rng.uniform(0, 1, (cells, cells, 3)).astype(np.float32)
    pos = np.linspace(0.0, cells - 1.0, size, dtype=np.float32)
    i0 = np.minimum(pos.astype(int), cells - 2)
    t = (pos - i0)[:, None]
    rows = (1 - t)[:, None] * grid[i0] + t[:, None] * grid[i0 + 1]  # (size, cells, 3)
    return (1 - t)[None] * rows[:, i0] + t[None] * rows[:, i0 + 1]


def _pattern(name: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A boolean (size, size) foreground pattern of one texture class, at a random period and phase."""
    period = float(rng.uniform(4, 7))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + rng.uniform(0, period, 2)[:, None, None].astype(np.float32)
    phase_x, phase_y = (xx % period) / period, (yy % period) / period
    if name == "hstripes":
        return phase_y < 0.5
    if name == "vstripes":
        return phase_x < 0.5
    if name == "checker":
        return (phase_x < 0.5) ^ (phase_y < 0.5)
    if name == "dots":
        return (phase_x - 0.5) ** 2 + (phase_y - 0.5) ** 2 < 0.09
    if name == "grid":
        return (phase_x < 0.25) | (phase_y < 0.25)
    if name == "rings":
        c = rng.uniform(0, size, 2)
        return (np.hypot(xx - c[0], yy - c[1]) % period) / period < 0.5
    if name == "speckle":
        return rng.random((size, size)) < 0.3
    if name == "zigzag":
        return ((yy + period / 2 * np.abs((xx % period) / period * 2 - 1)) % period) / period < 0.5
    raise ValueError(f"not a texture: {name}")


def render_image(rng: np.random.Generator, size: int = 64, label: int | None = None,
                 style: str = "objects") -> tuple[Image.Image, np.ndarray, int]:
    """Render one image; returns (RGB image, uint8 mask with 0 = background and label + 1 = object, label).

    ``style``:
      - ``objects``: one textured object of class ``SHAPES[label]`` on a varied background, with distractors;
      - ``plain``: one flat-coloured shape on a flat background, no distractors;
      - ``textures``: the whole image is a pattern of class ``TEXTURES[label]``, dark on light, in colours that vary
        across the image, so colour says nothing about the class and two crops of one image differ in colour.
        The class is present in every crop, which is what a few hundred self-supervised steps can learn at 32 px
        (``franca train``'s learning check); the mask is all ``label + 1``.
    """
    n_classes = len(TEXTURES) if style == "textures" else len(SHAPES)
    label = int(rng.integers(n_classes)) if label is None else int(label)
    if style == "textures":
        fg = _pattern(TEXTURES[label], rng, size)
        field = _colour_field(rng, size)  # dark pattern on light ground in every channel: visible everywhere
        img = np.where(fg[..., None], 0.5 * field, 0.5 + 0.5 * field)
        mask = np.full((size, size), label + 1, np.uint8)
        return Image.fromarray((img * 255).astype(np.uint8), "RGB"), mask, label
    if style == "plain":
        r = rng.uniform(0.25, 0.45) * size
        cx, cy = rng.uniform(r * 0.8, size - r * 0.8, 2)
        obj = _shape_mask(SHAPES[label], size, float(cx), float(cy), float(r), float(rng.uniform(0, 2 * math.pi)))
        img = np.broadcast_to(rng.uniform(0, 1, 3), (size, size, 3)).copy()
        img[obj] = rng.uniform(0, 1, 3)
        mask = np.where(obj, label + 1, 0).astype(np.uint8)
        return Image.fromarray((img * 255).astype(np.uint8), "RGB"), mask, label
    img = _background(rng, size)
    for _ in range(int(rng.integers(0, 3))):  # distractor blobs, not part of the object
        cx, cy, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(0.04, 0.1) * size]
        blob = _shape_mask("circle", size, cx, cy, r, 0.0)
        img[blob] = rng.uniform(0, 1, 3)
    r = rng.uniform(0.18, 0.4) * size
    cx, cy = rng.uniform(r * 0.8, size - r * 0.8, 2)
    obj = _shape_mask(SHAPES[label], size, float(cx), float(cy), float(r), float(rng.uniform(0, 2 * math.pi)))
    tex = _texture(rng, size, rng.uniform(0, 1, 3))
    img[obj] = tex[obj]
    mask = np.where(obj, label + 1, 0).astype(np.uint8)
    return Image.fromarray((img * 255).astype(np.uint8), "RGB"), mask, label


def iter_images(n: int, seed: int = 0, size: int = 64, style: str = "objects") -> Iterator[
        tuple[Image.Image, np.ndarray, int]]:
    """Yield ``n`` images of ``style`` (see ``render_image``), balanced labels; the same seed gives the same images."""
    if style not in STYLES:
        raise ValueError(f"unknown synthetic style {style!r}; expected one of {STYLES}")
    rng = np.random.default_rng(seed)
    n_classes = len(TEXTURES) if style == "textures" else len(SHAPES)
    for i in range(n):
        yield render_image(rng, size, label=i % n_classes, style=style)

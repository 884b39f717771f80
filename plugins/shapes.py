"""Deterministic drawing of coloured shapes, shared by the synthetic datasets.

Every image is a pure function of (seed, index): the same dataset on every machine.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross")


def rng_for(seed: int, index: int) -> np.random.Generator:
    """The random generator of one image."""
    return np.random.default_rng([seed, index])


def background(rng: np.random.Generator, size: int) -> Image.Image:
    """A dark background of random tint with a little pixel noise."""
    base = rng.integers(0, 90, size=3)
    noise = rng.normal(0, 12, size=(size, size, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def bright_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A random light colour, always well visible on a :func:`background`."""
    return tuple(int(c) for c in rng.integers(150, 256, size=3))


def shape_polygon(shape: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of ``shape`` centred at (cx, cy) with circumradius ``radius``, rotated by ``angle``."""

    def ring(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        cos, sin = math.cos(angle), math.sin(angle)
        return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]

    if shape == "square":
        h = radius / math.sqrt(2)
        return ring([(-h, -h), (h, -h), (h, h), (-h, h)])
    if shape == "triangle":
        return ring([(radius * math.cos(a), radius * math.sin(a)) for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))])
    if shape == "star":
        pts = []
        for k in range(10):
            r = radius if k % 2 == 0 else radius * 0.42
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(a), r * math.sin(a)))
        return ring(pts)
    if shape == "cross":
        a, b = radius, radius * 0.33
        return ring([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)])
    raise ValueError(f"unknown shape {shape!r}")


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, radius: float, angle: float, colour) -> tuple[float, float, float, float]:
    """Draw one filled shape; return its tight box (x0, y0, x1, y1) in pixels."""
    if shape == "circle":
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        draw.ellipse(box, fill=colour)
        return box
    points = shape_polygon(shape, cx, cy, radius, angle)
    draw.polygon(points, fill=colour)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return (min(xs), min(ys), max(xs), max(ys))


def single_shape_image(seed: int, index: int, size: int, label: int) -> Image.Image:
    """One image with one shape of class ``SHAPES[label]``.

    A bright shape of random colour, size, place and angle on a dark, noisy background of
    random tint; the image is a pure function of (seed, index, size, label).
    """
    rng = rng_for(seed, index)
    image = background(rng, size)
    radius = rng.uniform(0.22, 0.42) * size
    margin = radius * 0.75
    cx, cy = rng.uniform(margin, size - margin, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    draw_shape(ImageDraw.Draw(image), SHAPES[label], cx, cy, radius, angle, bright_colour(rng))
    return image


SCENE_SHAPES = ("circle", "square", "triangle")
"""The classes of :func:`scene_image` (detection's synthetic scenes)."""


def _box_overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection of two boxes over the area of the smaller one."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / smaller if smaller > 0 else 0.0


def scene_image(
    seed: int,
    index: int,
    size: int,
    *,
    max_objects: int = 4,
    radius_range: tuple[float, float] = (0.08, 0.2),
    max_overlap: float = 0.3,
) -> tuple[Image.Image, list[tuple[float, float, float, float]], list[int]]:
    """A scene of 1..``max_objects`` shapes of :data:`SCENE_SHAPES` with their boxes.

    Returns ``(image, boxes, labels)``: boxes are tight ``(x0, y0, x1, y1)`` pixel boxes of
    the drawn shapes (fully inside the image), labels index :data:`SCENE_SHAPES`. Shapes have
    random class, colour, angle and a radius in ``radius_range`` times ``size``; they may
    overlap, but no box is covered by another for more than ``max_overlap`` of its area,
    so every shape stays visible. The scene is a pure function
    of (seed, index, size) and the options.
    """
    rng = rng_for(seed, 1_000_000_007 + index)
    image = background(rng, size)
    draw = ImageDraw.Draw(image)
    count = int(rng.integers(1, max_objects + 1))
    boxes: list[tuple[float, float, float, float]] = []
    labels: list[int] = []
    for _ in range(count):
        for _attempt in range(20):
            label = int(rng.integers(0, len(SCENE_SHAPES)))
            radius = rng.uniform(*radius_range) * size
            cx, cy = rng.uniform(radius, size - radius, size=2)
            angle = rng.uniform(0, 2 * math.pi)
            colour = bright_colour(rng)
            shape = SCENE_SHAPES[label]
            if shape == "circle":
                box = (cx - radius, cy - radius, cx + radius, cy + radius)
            else:
                points = shape_polygon(shape, cx, cy, radius, angle)
                box = (min(p[0] for p in points), min(p[1] for p in points),
                       max(p[0] for p in points), max(p[1] for p in points))
            if all(_box_overlap(box, other) <= max_overlap for other in boxes):
                draw_shape(draw, shape, cx, cy, radius, angle, colour)
                boxes.append(tuple(float(v) for v in box))
                labels.append(label)
                break
    return image, boxes, labels

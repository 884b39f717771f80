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


def background(rng: np.random.Generator, size: int) -> tuple[Image.Image, np.ndarray]:
    """A noisy background and its mean colour."""
    base = rng.integers(0, 256, size=3)
    noise = rng.normal(0, 12, size=(size, size, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB"), base


def contrasting_colour(rng: np.random.Generator, against: np.ndarray) -> tuple[int, int, int]:
    """A random colour far enough from ``against`` to be visible."""
    for _ in range(100):
        colour = rng.integers(0, 256, size=3)
        if np.abs(colour - against).sum() > 180:
            break
    return tuple(int(c) for c in colour)


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


def dark_background(rng, size):
    base = rng.integers(0, 90, size=3)
    noise = rng.normal(0, 12, size=(size, size, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB"), base


def single_shape_image(seed: int, index: int, size: int, label: int) -> Image.Image:
    """One image with one shape of class ``SHAPES[label]``, random colour, size, place and angle."""
    rng = rng_for(seed, index)
    import os
    if os.environ.get("DARK"):
        image, bg = dark_background(rng, size)
        radius = rng.uniform(0.22, 0.42) * size
        margin = radius * 0.75
        cx, cy = rng.uniform(margin, size - margin, size=2)
        angle = rng.uniform(0, 2 * math.pi)
        draw_shape(ImageDraw.Draw(image), SHAPES[label], cx, cy, radius, angle, tuple(int(c) for c in rng.integers(150, 256, size=3)))
        return image
    image, bg = background(rng, size)
    radius = rng.uniform(0.22, 0.42) * size
    margin = radius * 0.75
    cx, cy = rng.uniform(margin, size - margin, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    draw_shape(ImageDraw.Draw(image), SHAPES[label], cx, cy, radius, angle, contrasting_colour(rng, bg))
    return image

"""A canvas that several tasks draw their predictions on, legibly, in image coordinates.

Tasks draw in the pixels of the ORIGINAL image; the canvas enlarges small images (a 64-pixel
synthetic image is unreadable once a label is written on it), keeps labels from covering one
another, and puts one summary line per task in a legend band above the image, so nothing a
task writes hides what another drew.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
)
"""Distinct colours (Sasha Trubetskoy's list) for classes, keypoints and tasks."""

MIN_SIDE = 384
"""Images whose shorter side is below this are enlarged by a whole factor (at most 8)."""


def colour_for(index: int) -> tuple[int, int, int]:
    """The ``index``-th palette colour (cycling)."""
    return PALETTE[index % len(PALETTE)]


def text_colour_on(fill: Sequence[int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``fill``."""
    r, g, b = fill[:3]
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


@functools.lru_cache(maxsize=16)
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


class Canvas:
    """An enlarged copy of an image to draw on, plus a legend band added by :meth:`finish`.

    Coordinates passed to the drawing methods are pixels of the original image.
    """

    def __init__(self, image: Any, *, min_side: int = MIN_SIDE) -> None:
        from PIL import Image, ImageDraw

        image = image.convert("RGB")
        width, height = image.size
        self.scale = max(1, min(8, math.ceil(min_side / max(1, min(width, height)))))
        resample = Image.NEAREST if self.scale > 1 else Image.BILINEAR
        self.image = image.resize((width * self.scale, height * self.scale), resample) if self.scale > 1 else image.copy()
        self.draw = ImageDraw.Draw(self.image)
        side = min(self.image.size)
        self.font = _font(max(11, round(side / 30)))
        self.line_width = max(2, round(side / 200))
        self._labels: list[tuple[float, float, float, float]] = []
        self._legend: list[tuple[str, tuple[int, int, int]]] = []

    def _xy(self, x: float, y: float) -> tuple[float, float]:
        return x * self.scale, y * self.scale

    def box(self, xyxy: Sequence[float], *, colour: Sequence[int], label: str | None = None) -> None:
        """An outlined box (x0, y0, x1, y1) with an optional label at its top-left corner."""
        x0, y0 = self._xy(*xyxy[:2])
        x1, y1 = self._xy(*xyxy[2:4])
        x0, x1 = min(x0, x1), max(x0, x1)
        y0, y1 = min(y0, y1), max(y0, y1)
        self.draw.rectangle((x0, y0, x1, y1), outline=tuple(colour), width=self.line_width)
        if label:
            self._place_label(label, colour, anchors=[(x0, y0, "above"), (x0, y0, "inside"), (x0, y1, "below")])

    def line(self, a: Sequence[float], b: Sequence[float], *, colour: Sequence[int]) -> None:
        """A straight line from point ``a`` to point ``b``."""
        self.draw.line([self._xy(*a), self._xy(*b)], fill=tuple(colour), width=self.line_width)

    def point(self, x: float, y: float, *, colour: Sequence[int], label: str | None = None) -> None:
        """A filled dot with a dark outline, and an optional label beside it."""
        cx, cy = self._xy(x, y)
        r = self.line_width * 2
        self.draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(colour), outline=(0, 0, 0))
        if label:
            self._place_label(label, colour, anchors=[(cx + r, cy - r, "above"), (cx + r, cy + r, "inside")])

    def mask(self, labels: Any, *, colours: Mapping[int, Sequence[int]], alpha: float = 0.5) -> None:
        """Paint every pixel whose label has a colour in ``colours``, blended with the image by ``alpha``.

        ``labels``: an (H, W) array of integer labels in the ORIGINAL image's pixels (a label map,
        or 0/1 for one mask); labels without a colour (a background) are left as they are.
        """
        import numpy as np
        from PIL import Image

        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise ValueError(f"a mask is an (H, W) array of labels, got shape {labels.shape}")
        picture = Image.fromarray(labels.astype(np.int32), "I").resize(self.image.size, Image.NEAREST)
        scaled = np.asarray(picture)
        lookup = np.zeros((max([int(scaled.max()), *colours]) + 1, 3), dtype=np.float32)
        painted = np.zeros(lookup.shape[0], dtype=bool)
        for label, colour in colours.items():
            lookup[label], painted[label] = colour[:3], True
        pixels = np.asarray(self.image, dtype=np.float32)
        where = painted[scaled][..., None]
        blended = np.where(where, (1 - alpha) * pixels + alpha * lookup[scaled], pixels)
        self.image.paste(Image.fromarray(blended.round().astype(np.uint8), "RGB"))

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the original image: the coordinates drawing methods take."""
        return self.image.width // self.scale, self.image.height // self.scale

    def text(self, x: float, y: float, text: str, *, colour: Sequence[int]) -> None:
        """A label on a filled tag at (x, y), moved down if it would cover an earlier label."""
        cx, cy = self._xy(x, y)
        self._place_label(text, colour, anchors=[(cx, cy, "inside")])

    def legend(self, text: str, *, colour: Sequence[int]) -> None:
        """A line in the legend band above the image (one per task, typically)."""
        self._legend.append((text, tuple(colour)))  # type: ignore[arg-type]

    def _text_size(self, text: str) -> tuple[float, float]:
        left, top, right, bottom = self.draw.textbbox((0, 0), text, font=self.font)
        return right - left + 4, bottom - top + 4

    def _place_label(self, text: str, colour: Sequence[int], *, anchors: list[tuple[float, float, str]]) -> None:
        """Write ``text`` on a filled tag at the first anchor where it overlaps no earlier label."""
        w, h = self._text_size(text)
        width, height = self.image.size
        candidates = []
        for x, y, where in anchors:
            top = y - h if where == "above" else y
            candidates.append((x, top))
        # then slide down from the first anchor until a free place is found
        x0, y0 = candidates[0]
        candidates += [(x0, y0 + k * h) for k in range(1, 12)]
        for x, y in candidates:
            x = min(max(0.0, x), max(0.0, width - w))
            y = min(max(0.0, y), max(0.0, height - h))
            rect = (x, y, x + w, y + h)
            if not any(_overlap(rect, other) for other in self._labels):
                break
        self._labels.append(rect)
        self.draw.rectangle(rect, fill=tuple(colour))
        self.draw.text((rect[0] + 2, rect[1] + 1), text, fill=text_colour_on(colour), font=self.font)

    def finish(self):
        """The drawing: the legend band (if any line was added) above the annotated image."""
        from PIL import Image, ImageDraw

        if not self._legend:
            return self.image
        pad = 4
        heights = [self._text_size(text)[1] for text, _ in self._legend]
        band = int(sum(heights) + pad * (len(heights) + 1))
        out = Image.new("RGB", (self.image.width, self.image.height + band), (24, 24, 24))
        out.paste(self.image, (0, band))
        draw = ImageDraw.Draw(out)
        y = pad
        swatch = max(6, self.line_width * 3)
        for (text, colour), h in zip(self._legend, heights):
            draw.rectangle((pad, y + (h - swatch) / 2, pad + swatch, y + (h + swatch) / 2), fill=colour)
            draw.text((pad * 2 + swatch, y + 1), _fit(draw, text, self.font, out.width - pad * 3 - swatch),
                      fill=(255, 255, 255), font=self.font)
            y += h + pad
        return out


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _fit(draw: Any, text: str, font: Any, width: float) -> str:
    """``text`` cut with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"

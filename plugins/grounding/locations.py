"""Boxes as Florence-2 writes them: ``label<loc_x0><loc_y0><loc_x1><loc_y1>``, coordinates in 1000 bins.

A coordinate ``c`` of an image side ``S`` is bin ``floor(c / S * 1000)`` (clipped to 0..999); a
bin reads back as the centre of its cell, ``(b + 0.5) / 1000 * S`` — transformers' Florence-2
post-processor uses the same convention.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

BINS = 1000
_LOC = re.compile(r"<loc_(\d+)>")
_OBJECT = re.compile(r"([^<]*)((?:<loc_\d+>){4})")


def quantize(box: Sequence[float], width: float, height: float) -> list[int]:
    """Pixel ``(x0, y0, x1, y1)`` → four bins."""
    sides = (width, height, width, height)
    return [min(BINS - 1, max(0, int(float(v) / side * BINS))) for v, side in zip(box, sides)]


def dequantize(bins: Sequence[int], width: float, height: float) -> list[float]:
    """Four bins → pixel ``(x0, y0, x1, y1)`` (cell centres)."""
    sides = (width, height, width, height)
    return [round((int(b) + 0.5) / BINS * side, 1) for b, side in zip(bins, sides)]


def location_text(bins: Sequence[int]) -> str:
    """``<loc_a><loc_b><loc_c><loc_d>``."""
    return "".join(f"<loc_{int(b)}>" for b in bins)


def objects_text(objects: Sequence[tuple[str, Sequence[int]]]) -> str:
    """``label<loc…>label<loc…>…`` for (label, bins) pairs."""
    return "".join(f"{label}{location_text(bins)}" for label, bins in objects)


class SuffixError(ValueError):
    """A target text that is not ``(text<loc_a><loc_b><loc_c><loc_d>)+`` with bins 0..999."""


def parse_objects(text: str, *, strict: bool = True) -> list[tuple[str, list[int]]]:
    """``label<loc…>×4`` groups of ``text`` → (label, bins); ``strict`` refuses anything else in it.

    With ``strict`` (training data): a bin outside 0..999, a box with x0 > x1 or y0 > y1, a group
    of fewer than four locations, or text after the last box raise :class:`SuffixError` saying which. Without it (generated
    text): whatever does not parse is skipped.
    """
    objects: list[tuple[str, list[int]]] = []
    position = 0
    cleaned = text.replace("</s>", "").replace("<s>", "").replace("<pad>", "")
    for match in _OBJECT.finditer(cleaned):
        if strict and match.start() != position:
            raise SuffixError(f"unexpected text {cleaned[position:match.start()]!r} between boxes")
        bins = [int(v) for v in _LOC.findall(match.group(2))]
        if any(b >= BINS for b in bins):
            if strict:
                raise SuffixError(f"<loc_{max(bins)}> is outside 0..{BINS - 1}")
            position = match.end()
            continue
        if bins[0] > bins[2] or bins[1] > bins[3]:  # x0 > x1 or y0 > y1: not a box
            if strict:
                axis = "x" if bins[0] > bins[2] else "y"
                raise SuffixError(f"box {match.group(2)} has {axis}0 > {axis}1; write <loc_x0><loc_y0><loc_x1><loc_y1> "
                                  "with x0 <= x1 and y0 <= y1")
            position = match.end()
            continue
        objects.append((match.group(1).strip(), bins))
        position = match.end()
    if strict:
        rest = cleaned[position:]
        if _LOC.search(rest):
            raise SuffixError(f"{rest!r} has fewer than four <loc_N> for its box")
        if rest.strip():
            raise SuffixError(f"text {rest.strip()!r} after the last box has no <loc_N> box")
        if not objects:
            raise SuffixError("no box: expected label<loc_a><loc_b><loc_c><loc_d>")
    return objects

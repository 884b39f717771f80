"""Box annotations as the shared readers give them: pixel boxes and label indices of one image.

:mod:`.coco` (COCO detection JSON) and :mod:`.yolo` (YOLO txt folders) return one
:class:`BoxAnnotation` per image; a task turns them into its own targets (detection: tensors
normalised to 0..1; grounding: ``<loc_…>`` answer texts).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BoxAnnotation:
    """The objects of one image: ``boxes`` as pixel ``(x0, y0, x1, y1)``, ``labels`` as indices of the label names."""

    boxes: tuple[tuple[float, float, float, float], ...]
    labels: tuple[int, ...]
    width: float
    height: float

"""Prediction results: one :class:`ImageResult` per image, holding one :class:`TaskResult` per task.

``ImageResult.to_dict()`` is exactly the record ``adapters predict --json`` prints for that
image; ``draw()`` shows every task on one picture and ``save()`` writes it. Results of images
read from files keep only the path and re-open the file to draw, so a long stream of results
does not hold the decoded images.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .drawing import Canvas, colour_for
from .errors import LoradexError
from .task import Task


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None, so JSON output is always valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


@dataclass(frozen=True)
class BaseInfo:
    """The shared base the predictions came from."""

    name: str
    revision: str | None
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        """``{"name", "revision", "fingerprint"}``."""
        return {"name": self.name, "revision": self.revision, "fingerprint": self.fingerprint}


def _open_source(path: Path | None, image: Any):
    if image is not None:
        return image
    if path is None:
        raise LoradexError("this result keeps no image to draw on; pass one: result.draw(image)")
    from .data import open_image

    return open_image(path)


@dataclass
class TaskResult:
    """What one adapter (one task head) predicted for one image."""

    key: str
    """``name@vN`` of the adapter (``name@vN#head`` for one head of a multi-task adapter)."""
    task: Task
    prediction: dict[str, Any]
    """The task's plain, JSON-ready prediction (labels, boxes, keypoints … in image pixels)."""
    head_config: Mapping[str, Any] = field(repr=False, default_factory=dict)
    path: Path | None = None
    image: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """``{"task": NAME, **prediction}``: this task's entry in the ``--json`` record."""
        return {"task": self.task.name, **self.prediction}

    def summary(self) -> str:
        """One readable line, e.g. ``circle 0.98 (square 0.01)``."""
        return self.task.summary(self.prediction, self.head_config)

    def __getitem__(self, key: str) -> Any:
        return self.prediction[key]

    def draw(self, image: Any = None):
        """This task's prediction drawn on (an enlarged copy of) the image, as a PIL image."""
        return self.task.draw(_open_source(self.path, image if image is not None else self.image),
                              self.prediction, self.head_config)

    def save(self, path: str | Path) -> Path:
        """Write :meth:`draw` to ``path`` (format from its extension); return the path."""
        path = Path(path)
        self.draw().save(path)
        return path


@dataclass
class ImageResult:
    """Every task's prediction for one image, and the base that served them."""

    source: str
    """The path as given, or ``<image N>`` for an image passed in memory."""
    width: int
    height: int
    base: BaseInfo
    results: dict[str, TaskResult] = field(default_factory=dict)
    error: str | None = None
    """Why the image could not be predicted (only with ``skip_bad``); ``results`` is then empty."""
    path: Path | None = None
    image: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The record ``adapters predict --json`` prints for this image."""
        record: dict[str, Any] = {"image": self.source, "width": self.width, "height": self.height,
                                  "base": self.base.to_dict(),
                                  "predictions": {key: json_safe(r.to_dict()) for key, r in self.results.items()}}
        if self.error is not None:
            record["error"] = self.error
        return record

    def __getitem__(self, key: str) -> TaskResult:
        """The result of adapter ``key``: its full ``name@vN``, its name, or its task's name if unique."""
        if key in self.results:
            return self.results[key]
        matches = [r for k, r in self.results.items() if k.split("@", 1)[0] == key or r.task.name == key]
        if len(matches) == 1:
            return matches[0]
        have = ", ".join(self.results) or "none"
        raise KeyError(f"{key!r} {'is ambiguous' if matches else 'is not among the results'}; results: {have}")

    def __iter__(self) -> Iterator[TaskResult]:
        return iter(self.results.values())

    def __len__(self) -> int:
        return len(self.results)

    def summary(self) -> str:
        """One line per task: ``KEY  SUMMARY``."""
        return "\n".join(f"{key}  {r.summary()}" for key, r in self.results.items())

    def draw(self, image: Any = None):
        """ONE drawing with every task on it: a legend line per task above, boxes and skeletons on the image.

        Each task gets its own colour in the legend and for what it draws; labels never cover
        one another. Tasks from older plugins that only implement ``draw`` are drawn first.
        """
        picture = _open_source(self.path, image if image is not None else self.image)
        modern = []
        for result in self.results.values():
            task_type = type(result.task)
            if task_type.render is Task.render and task_type.draw is not Task.draw:
                picture = result.task.draw(picture, result.prediction, result.head_config).resize(picture.size)
            else:
                modern.append(result)
        canvas = Canvas(picture)
        for index, (key, result) in enumerate(self.results.items()):
            canvas.legend(f"{key}: {result.summary()}", colour=colour_for(index))
        for index, result in enumerate(self.results.values()):
            if result in modern:
                result.task.render(canvas, result.prediction, result.head_config, colour=colour_for(index))
        if self.error:
            canvas.legend(f"error: {self.error}", colour=(200, 0, 0))
        return canvas.finish()

    def save(self, path: str | Path) -> Path:
        """Write :meth:`draw` to ``path``; return the path."""
        path = Path(path)
        self.draw().save(path)
        return path

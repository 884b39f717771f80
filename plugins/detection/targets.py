"""Detection targets and the TaskData every detection reader returns.

A target is a dict of tensors ``{"boxes": (N, 4) xyxy normalised to 0..1, "labels": (N,) long,
"size": (2,) original (width, height) in pixels}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from loradex.core.data import ImageDataset, describe_counts
from loradex.core.data.boxes import BoxAnnotation
from loradex.core.errors import DataError
from loradex.core.task import ImageTransform, TaskData

HEAD_DEFAULTS = {"width": 64, "depth": 2, "upsample": 2}
"""Head architecture recorded in every adapter's head config, so later defaults cannot change it."""


def head_config(labels: Sequence[str]) -> dict:
    """The head configuration of a dataset: its label names and the head architecture."""
    return {"labels": list(labels), **HEAD_DEFAULTS}


def make_target(boxes: Sequence[Sequence[float]], labels: Sequence[int], width: float, height: float) -> dict[str, torch.Tensor]:
    """The target dict of one image from pixel xyxy ``boxes`` and label indices."""
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    pixel = torch.tensor([list(map(float, b)) for b in boxes], dtype=torch.float32).reshape(-1, 4)
    return {
        "boxes": (pixel / scale).clamp(0, 1),
        "labels": torch.tensor(list(labels), dtype=torch.long),
        "size": torch.tensor([float(width), float(height)]),
    }


def targets_of(items: Sequence[tuple[Path, BoxAnnotation]]) -> list[tuple[Path, dict[str, torch.Tensor]]]:
    """The shared readers' ``(path, boxes)`` items as ``(path, target)``."""
    return [(path, make_target(a.boxes, a.labels, a.width, a.height)) for path, a in items]


def split_data(splits: dict[str, list[tuple[Path, dict]]], labels: list[str], what: str,
               transform: ImageTransform) -> TaskData:
    """TaskData of ``(image path, target)`` items per split (images read on access), described as ``what: counts``."""
    if not splits.get("train"):
        raise DataError(f"{what}: the training split has no images")

    def dataset(name: str) -> ImageDataset | None:
        chosen = splits.get(name)
        return ImageDataset([p for p, _ in chosen], [t for _, t in chosen], transform) if chosen else None

    boxes = sum(len(t["labels"]) for chosen in splits.values() for _, t in chosen)
    return TaskData(
        train=dataset("train"), val=dataset("val"), test=dataset("test"), head_config=head_config(labels),
        description=f"{what}: {len(labels)} classes, {describe_counts(splits)} train/val/test images, {boxes} boxes",
    )


class FlipDataset:
    """Training-time horizontal flip with probability ``p`` (Ultralytics' ``fliplr=0.5``): mirrors the
    pixels and the boxes. Small sets (38 aerial tiles) see twice the pictures."""

    def __init__(self, dataset: object, p: float = 0.5) -> None:
        self.dataset, self.p = dataset, p

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> object:
        """The wrapped split's ``paths``, ``targets``, ... (what readers and drawings look at)."""
        if name == "dataset":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pixels, target = self.dataset[index]  # type: ignore[index]
        if float(torch.rand(())) >= self.p:
            return pixels, target
        boxes = target["boxes"]
        flipped = torch.stack([1.0 - boxes[:, 2], boxes[:, 1], 1.0 - boxes[:, 0], boxes[:, 3]], dim=1)
        return pixels.flip(-1), {**target, "boxes": flipped}

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


class Augmented:
    """Training-time flips and quarter turns that move the boxes with the pixels.

    Each item is flipped left-right with probability ``fliplr`` (Ultralytics' default 0.5), up-down
    with ``flipud``, and turned a quarter either way with ``rot90`` (square images only: the batch
    keeps one shape). Small sets (38 aerial tiles) see up to eight pictures of each tile.
    """

    def __init__(self, dataset: object, *, fliplr: float = 0.5, flipud: float = 0.0, rot90: float = 0.0) -> None:
        self.dataset, self.fliplr, self.flipud, self.rot90 = dataset, fliplr, flipud, rot90

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> object:
        """The wrapped split's ``paths``, ``targets``, ... (what readers, caches and drawings look at)."""
        if name == "dataset":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pixels, target = self.dataset[index]  # type: ignore[index]
        x0, y0, x1, y1 = target["boxes"].unbind(-1)
        if self.fliplr and float(torch.rand(())) < self.fliplr:
            pixels, (x0, x1) = pixels.flip(-1), (1.0 - x1, 1.0 - x0)
        if self.flipud and float(torch.rand(())) < self.flipud:
            pixels, (y0, y1) = pixels.flip(-2), (1.0 - y1, 1.0 - y0)
        if self.rot90 and pixels.shape[-1] == pixels.shape[-2] and float(torch.rand(())) < self.rot90:
            if float(torch.rand(())) < 0.5:  # counter-clockwise on screen: x' = y, y' = 1 - x
                pixels, (x0, y0, x1, y1) = torch.rot90(pixels, 1, (-2, -1)), (y0, 1.0 - x1, y1, 1.0 - x0)
            else:  # clockwise: x' = 1 - y, y' = x
                pixels, (x0, y0, x1, y1) = torch.rot90(pixels, -1, (-2, -1)), (1.0 - y1, x0, 1.0 - y0, x1)
        return pixels, {**target, "boxes": torch.stack([x0, y0, x1, y1], dim=-1)}

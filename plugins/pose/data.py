"""Pose data: targets, the synthetic stick figures, crop datasets and flip augmentation.

Every sample is one person: the image a head sees is the person crop (top-down pose). Its
target is a dict of tensors:

- ``keypoints`` (K, 2): x, y in 0..1 of the sample image;
- ``visible`` (K,): 1 where the keypoint is labelled, 0 where it is not;
- ``scale`` (2,): width and height of the sample image in ORIGINAL image pixels;
- ``box`` (2,): width and height of the person box in original pixels (PCK normalisation);
- ``area`` (): the person's area in original pixels² (OKS scale).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loradex.core.data import TensorListDataset, open_image, parse_synthetic, synthetic_splits
from loradex.core.errors import DataError
from loradex.core.task import ImageTransform, TaskData

from .schema import stick_figure_schema
from .synthetic import SYNTHETIC_SIZE, stick_figure

SYNTHETIC_DEFAULTS = {"train": 2000, "val": 200, "test": 200, "seed": 0}


def make_target(keypoints: np.ndarray, visible: np.ndarray, scale: tuple[float, float],
                box: tuple[float, float], area: float) -> dict[str, torch.Tensor]:
    """A sample's target from keypoints in sample pixels (K, 2), visibility (K,) and sizes."""
    sx, sy = scale
    norm = np.asarray(keypoints, dtype=np.float32) / np.array([sx, sy], dtype=np.float32)
    return {
        "keypoints": torch.from_numpy(norm),
        "visible": torch.as_tensor(np.asarray(visible) > 0, dtype=torch.float32),
        "scale": torch.tensor([sx, sy], dtype=torch.float32),
        "box": torch.tensor(box, dtype=torch.float32),
        "area": torch.tensor(float(area), dtype=torch.float32),
    }


def collate_pose(items: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> dict[str, Any]:
    """Stack pixels and every target field."""
    pixels = torch.stack([item[0] for item in items])
    keys = items[0][1].keys() if items else ()
    return {"pixel_values": pixels, "targets": {k: torch.stack([item[1][k] for item in items]) for k in keys}}


class FlipDataset:
    """Training-time horizontal flip with probability ``p``: mirrors pixels, x and swaps left/right."""

    def __init__(self, dataset: Any, flip_pairs: Sequence[Sequence[int]], p: float = 0.5) -> None:
        self.dataset, self.p = dataset, p
        self.order = list(range(len(dataset[0][1]["keypoints"]))) if len(dataset) else []
        for a, b in flip_pairs:
            self.order[a], self.order[b] = b, a

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pixels, target = self.dataset[index]
        if float(torch.rand(())) >= self.p:
            return pixels, target
        flipped = dict(target)
        points = target["keypoints"][self.order].clone()
        points[:, 0] = 1.0 - points[:, 0]
        flipped["keypoints"], flipped["visible"] = points, target["visible"][self.order]
        return pixels.flip(-1), flipped


class CropList:
    """Lazy sequence of person crops (PIL images), for drawing predictions on samples."""

    def __init__(self, paths: Sequence[Path], crops: Sequence[tuple[float, float, float, float]]) -> None:
        self.paths, self.crops = list(paths), list(crops)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        x0, y0, x1, y1 = self.crops[index]
        return open_image(self.paths[index]).crop((round(x0), round(y0), round(x1), round(y1)))


class CropDataset:
    """Person crops read from disk on access: ``(transform(crop), target)``."""

    def __init__(self, paths: Sequence[Path], crops: Sequence[tuple[float, float, float, float]],
                 targets: Sequence[dict[str, torch.Tensor]], transform: ImageTransform) -> None:
        self.images = CropList(paths, crops)
        self.targets, self.transform = list(targets), transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.transform(self.images[index]), self.targets[index]


def synthetic_figures(*, transform: ImageTransform, train: int, val: int, test: int, seed: int) -> TaskData:
    """Stick-figure splits, a pure function of (seed, split, index); one figure per image."""

    def split(offset: int, count: int) -> TensorListDataset:
        images, targets = [], []
        for i in range(count):
            image, points, (x0, y0, x1, y1) = stick_figure(seed, offset + i)
            box = (x1 - x0, y1 - y0)
            targets.append(make_target(points, np.ones(len(points)), image.size, box, box[0] * box[1]))
            images.append(image)
        return TensorListDataset([transform(im) for im in images], targets, images)

    if train < 1 or val < 1:
        raise DataError("synthetic stick figures need at least 1 train and 1 val image")
    train_set, val_set, test_set = synthetic_splits(split, train=train, val=val, test=test)
    return TaskData(
        train=train_set,
        val=val_set,
        test=test_set,
        head_config=stick_figure_schema(),
        description=f"synthetic stick figures: 5 keypoints, {train}/{val}/{test} train/val/test images "
                    f"of {SYNTHETIC_SIZE}px",
    )


def load_pose_data(source: str | None, *, transform: ImageTransform, seed: int) -> TaskData:
    """None/``synthetic[:train=N,val=N,test=N,seed=N]``, a COCO keypoints JSON file, or a folder of them."""
    options = parse_synthetic(source, SYNTHETIC_DEFAULTS)
    if options is not None:
        return synthetic_figures(transform=transform, **options)
    from .coco import load_coco_keypoints

    return load_coco_keypoints(Path(source).expanduser(), transform=transform, seed=seed)

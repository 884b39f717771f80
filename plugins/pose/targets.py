"""Pose targets and the person-crop datasets every pose reader returns.

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

from loradex.core.data import open_image
from loradex.core.task import ImageTransform


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

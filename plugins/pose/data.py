"""Pose data: the synthetic stick figures, and dispatch to the COCO keypoints reader.

Samples and targets are described in :mod:`.targets`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loradex.core.data import TensorListDataset, parse_synthetic, synthetic_splits
from loradex.core.errors import DataError
from loradex.core.task import ImageTransform, TaskData

from .coco import load_coco_keypoints
from .schema import stick_figure_schema
from .synthetic import SYNTHETIC_SIZE, stick_figure
from .targets import make_target

SYNTHETIC_DEFAULTS = {"train": 2000, "val": 200, "test": 200, "seed": 0}


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
    return load_coco_keypoints(Path(source).expanduser(), transform=transform, seed=seed)

"""Classification data: ImageFolder on disk (the core reader), or built-in synthetic shapes."""

from __future__ import annotations

from pathlib import Path

from loradex.core.data import (
    ImageDataset,
    TensorListDataset,
    image_folder,
    parse_synthetic,
    require_folder,
    synthetic_splits,
)
from loradex.core.errors import DataError
from loradex.core.task import ImageTransform, TaskData

from ..shapes import SHAPES, single_shape_image

SYNTHETIC_DEFAULTS = {"train": 3000, "val": 250, "test": 250, "seed": 0}


def load_classification_data(source: str | None, *, transform: ImageTransform, image_size: int, seed: int) -> TaskData:
    """Read ``source``: None/``synthetic[:opts]`` or an ImageFolder root."""
    options = parse_synthetic(source, SYNTHETIC_DEFAULTS)
    if options is not None:
        return synthetic_shapes(transform=transform, image_size=image_size, **options)
    return image_folder_data(require_folder(source), transform=transform, seed=seed)


def synthetic_shapes(*, transform: ImageTransform, image_size: int, train: int, val: int, test: int, seed: int) -> TaskData:
    """Balanced single-shape images, a pure function of (seed, split, index)."""

    def split(offset: int, count: int) -> TensorListDataset:
        labels = [i % len(SHAPES) for i in range(count)]
        images = [single_shape_image(seed, offset + i, image_size, label) for i, label in enumerate(labels)]
        return TensorListDataset([transform(im) for im in images], labels, images)

    if train < len(SHAPES) or val < len(SHAPES):
        raise DataError(f"synthetic shapes need at least {len(SHAPES)} train and val images")
    train_set, val_set, test_set = synthetic_splits(split, train=train, val=val, test=test)
    return TaskData(
        train=train_set,
        val=val_set,
        test=test_set,
        head_config={"labels": list(SHAPES)},
        description=f"synthetic shapes: {len(SHAPES)} classes, {train}/{val}/{test} train/val/test images at {image_size}px",
    )


def image_folder_data(root: Path, *, transform: ImageTransform, seed: int) -> TaskData:
    """``root/{train,val,test}/CLASS/*`` or ``root/CLASS/*`` split 80/20 per class with ``seed``."""
    read = image_folder(root, seed=seed)

    def dataset(name: str) -> ImageDataset | None:
        chosen = read.splits.get(name)
        return ImageDataset([p for p, _ in chosen], [t for _, t in chosen], transform) if chosen else None

    return TaskData(
        train=dataset("train"),
        val=dataset("val"),
        test=dataset("test"),
        head_config={"labels": read.labels},
        description=f"ImageFolder {root} ({read.how}): {len(read.labels)} classes, {read.counts} train/val/test images",
    )

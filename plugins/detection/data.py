"""Detection data: the built-in synthetic scenes, and dispatch to the COCO / YOLO readers.

Every split is a dataset of ``(pixel_values, target)`` items; a target is a dict of tensors
``{"boxes": (N, 4) xyxy normalised to 0..1, "labels": (N,) long, "size": (2,) original
(width, height) in pixels}``.

``source`` may be

* ``None`` or ``synthetic[:train=N,val=N,test=N,seed=N]`` — built-in scenes of 1-4 circles,
  squares and triangles (see :func:`loradex.plugins.shapes.scene_image`);
* a COCO detection JSON file, or a folder of COCO JSON files (see :mod:`.coco`);
* a YOLO folder with ``images/`` and ``labels/`` (see :mod:`.yolo`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from loradex.core.data import ImageDataset, TensorListDataset, parse_synthetic, synthetic_splits
from loradex.core.errors import DataError
from loradex.core.task import ImageTransform, TaskData

from ..shapes import SCENE_SHAPES, scene_image

SYNTHETIC_DEFAULTS = {"train": 1000, "val": 200, "test": 200, "seed": 0}
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
VAL_FRACTION = 0.2
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


def load_detection_data(source: str | None, *, transform: ImageTransform, image_size: int, seed: int) -> TaskData:
    """Read ``source``: None/``synthetic[:opts]``, a COCO JSON file or folder, or a YOLO folder."""
    options = parse_synthetic(source, SYNTHETIC_DEFAULTS)
    if options is not None:
        return synthetic_scenes(transform=transform, image_size=image_size, **options)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{path}: data file or folder does not exist")
    from . import coco, yolo

    if path.is_file():
        if path.suffix.lower() != ".json":
            raise DataError(f"{path}: expected a COCO .json file or a dataset folder")
        return coco.load_coco(path, transform=transform, seed=seed)
    if yolo.is_yolo_folder(path):
        return yolo.load_yolo(path, transform=transform, seed=seed)
    if coco.find_split_files(path):
        return coco.load_coco(path, transform=transform, seed=seed)
    raise DataError(
        f"{path}: not a detection dataset: expected a COCO JSON file, a folder with train/val COCO JSON "
        "files (or annotations/instances_train*.json), or a YOLO folder with images/ and labels/"
    )


def synthetic_scenes(*, transform: ImageTransform, image_size: int, train: int, val: int, test: int, seed: int) -> TaskData:
    """Scenes of circles, squares and triangles, a pure function of (seed, split, index)."""

    def split(offset: int, count: int) -> TensorListDataset:
        images, targets = [], []
        for i in range(count):
            image, boxes, labels = scene_image(seed, offset + i, image_size)
            images.append(image)
            targets.append(make_target(boxes, labels, image_size, image_size))
        return TensorListDataset([transform(im) for im in images], targets, images)

    if train < 1 or val < 1:
        raise DataError("synthetic scenes need at least 1 train and 1 val image")
    train_set, val_set, test_set = synthetic_splits(split, train=train, val=val, test=test)
    return TaskData(
        train=train_set,
        val=val_set,
        test=test_set,
        head_config=head_config(SCENE_SHAPES),
        description=(f"synthetic scenes: {len(SCENE_SHAPES)} classes, 1-4 objects per image, "
                     f"{train}/{val}/{test} train/val/test images at {image_size}px"),
    )


def seeded_split(items: list, seed: int) -> tuple[list, list]:
    """(train, val): a seeded ``VAL_FRACTION`` of ``items`` (at least one) for validation."""
    import random

    order = list(items)
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(order) * VAL_FRACTION)) if len(order) > 1 else 0
    return order[n_val:], order[:n_val]


def image_size_of(path: Path) -> tuple[float, float]:
    """(width, height) of an image file from its header; a DataError names an unreadable file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return float(image.width), float(image.height)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None


def split_data(splits: dict[str, list[tuple[Path, dict]]], labels: list[str], what: str,
               transform: ImageTransform) -> TaskData:
    """TaskData of ``(image path, target)`` items per split (images read on access), described as ``what: counts``."""
    if not splits.get("train"):
        raise DataError(f"{what}: the training split has no images")

    def dataset(name: str) -> ImageDataset | None:
        chosen = splits.get(name)
        return ImageDataset([p for p, _ in chosen], [t for _, t in chosen], transform) if chosen else None

    counts = "/".join(str(len(splits.get(s, []))) for s in SPLITS)
    boxes = sum(len(t["labels"]) for chosen in splits.values() for _, t in chosen)
    return TaskData(
        train=dataset("train"), val=dataset("val"), test=dataset("test"), head_config=head_config(labels),
        description=f"{what}: {len(labels)} classes, {counts} train/val/test images, {boxes} boxes",
    )

"""Classification data: ImageFolder on disk, or built-in synthetic shapes."""

from __future__ import annotations

import random
from pathlib import Path

from loradex.core.data import (
    ImageDataset,
    TensorListDataset,
    is_image_file,
    parse_synthetic,
    require_folder,
    synthetic_splits,
    verify_image,
)
from loradex.core.errors import DataError
from loradex.core.task import ImageTransform, TaskData

from ..shapes import SHAPES, single_shape_image

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
SYNTHETIC_DEFAULTS = {"train": 3000, "val": 250, "test": 250, "seed": 0}
VAL_FRACTION = 0.2


def load_classification_data(source: str | None, *, transform: ImageTransform, image_size: int, seed: int) -> TaskData:
    """Read ``source``: None/``synthetic[:opts]`` or an ImageFolder root."""
    options = parse_synthetic(source, SYNTHETIC_DEFAULTS)
    if options is not None:
        return synthetic_shapes(transform=transform, image_size=image_size, **options)
    return image_folder(require_folder(source), transform=transform, seed=seed)


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


def _class_folders(root: Path) -> dict[str, list[Path]]:
    classes: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in folder.rglob("*") if is_image_file(p))
        if not files:
            raise DataError(f"{folder}: class folder has no images")
        classes[folder.name] = files
    return classes


def _find_splits(root: Path) -> dict[str, Path]:
    found = {}
    for split, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            if (root / alias).is_dir():
                found[split] = root / alias
                break
    return found


def image_folder(root: Path, *, transform: ImageTransform, seed: int) -> TaskData:
    """``root/{train,val,test}/CLASS/*`` or ``root/CLASS/*`` split by a seeded 80/20 ratio."""
    splits = _find_splits(root)
    if splits:
        if "train" not in splits:
            raise DataError(f"{root}: has {', '.join(p.name for p in splits.values())} but no train/ folder")
        per_split = {name: _class_folders(path) for name, path in splits.items()}
        labels = sorted(per_split["train"])
        for name, classes in per_split.items():
            extra = sorted(set(classes) - set(labels))
            if extra:
                raise DataError(f"{splits[name]}: classes {extra} are not in {splits['train']}")
        items = {name: [(p, labels.index(c)) for c, files in classes.items() for p in files] for name, classes in per_split.items()}
        how = "folders " + "/".join(splits[s].name for s in SPLITS if s in splits)
    else:
        classes = _class_folders(root)
        labels = sorted(classes)
        items = {"train": [], "val": []}
        rng = random.Random(seed)
        for index, name in enumerate(labels):
            files = list(classes[name])
            rng.shuffle(files)
            n_val = max(1, round(len(files) * VAL_FRACTION)) if len(files) > 1 else 0
            items["val"] += [(p, index) for p in files[:n_val]]
            items["train"] += [(p, index) for p in files[n_val:]]
        how = f"one folder split {1 - VAL_FRACTION:.0%}/{VAL_FRACTION:.0%} with seed {seed}"
    if len(labels) < 2:
        raise DataError(f"{root}: need at least 2 class folders, found {len(labels)}")
    for split_items in items.values():
        for path, _ in split_items:
            verify_image(path)

    def dataset(name: str) -> ImageDataset | None:
        chosen = items.get(name)
        return ImageDataset([p for p, _ in chosen], [t for _, t in chosen], transform) if chosen else None

    counts = "/".join(str(len(items.get(s, []))) for s in SPLITS)
    return TaskData(
        train=dataset("train"),
        val=dataset("val"),
        test=dataset("test"),
        head_config={"labels": labels},
        description=f"ImageFolder {root} ({how}): {len(labels)} classes, {counts} train/val/test images",
    )

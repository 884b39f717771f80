"""Detection data: the built-in synthetic scenes, and dispatch to the COCO / YOLO readers.

Every split is a dataset of ``(pixel_values, target)`` items (targets: :mod:`.targets`).

``source`` may be

* ``None`` or ``synthetic[:train=N,val=N,test=N,seed=N]`` — built-in scenes of 1-4 circles,
  squares and triangles (see :func:`loradex.plugins.shapes.scene_image`);
* a COCO detection JSON file, or a folder of COCO JSON files (see :mod:`.coco`);
* a YOLO folder with ``images/`` and ``labels/`` (see :mod:`.yolo`);
* a Pascal VOC folder: XML per image, as LabelImg writes it (see :mod:`.voc`).
"""

from __future__ import annotations


from loradex.core.data import TensorListDataset, find_split_files, parse_synthetic, require_path, synthetic_splits
from loradex.core.data.yolo import is_yolo_folder
from loradex.core.errors import DataError
from loradex.core.task import ImageTransform, TaskData

from ..shapes import SCENE_SHAPES, scene_image
from . import coco, voc, yolo
from .targets import head_config, make_target

SYNTHETIC_DEFAULTS = {"train": 1000, "val": 200, "test": 200, "seed": 0}


def load_detection_data(source: str | None, *, transform: ImageTransform, image_size: int, seed: int) -> TaskData:
    """Read ``source``: None/``synthetic[:opts]``, a COCO JSON file or folder, a YOLO folder or a VOC folder."""
    options = parse_synthetic(source, SYNTHETIC_DEFAULTS)
    if options is not None:
        return synthetic_scenes(transform=transform, image_size=image_size, **options)
    path = require_path(source)
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise DataError(f"{path}: expected a COCO .json file or a dataset folder")
        return coco.load_coco(path, transform=transform, seed=seed)
    if is_yolo_folder(path):
        return yolo.load_yolo(path, transform=transform, seed=seed)
    if voc.is_voc_folder(path):
        return voc.load_voc(path, transform=transform, seed=seed)
    if find_split_files(path):
        return coco.load_coco(path, transform=transform, seed=seed)
    raise DataError(
        f"{path}: not a detection dataset: expected a COCO JSON file, a folder with train/val COCO JSON "
        "files (or annotations/instances_train*.json), a YOLO folder with images/ and labels/, or a Pascal VOC "
        "folder of XML files (LabelImg's format)"
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

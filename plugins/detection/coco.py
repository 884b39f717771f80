"""COCO detection JSON reader (the shared COCO rules are in :mod:`loradex.core.data.coco`).

Layouts (``--data`` is a file or a folder):

* ``path/to/annotations.json`` — one file; its images are split into train/val by a seeded
  80/20 ratio.
* a folder holding split files, directly or under ``annotations/``: ``train.json``,
  ``val.json`` (also ``valid``/``validation``), optional ``test.json``, or COCO's own names
  ``instances_train2017.json`` / ``instances_val2017.json``. Without a val file the train
  file is split 80/20.

An image's ``file_name`` is looked up relative to the JSON file's folder, an ``images/``
folder beside it, the data folder and ``DATA/images``, each also with the split's folder
(``train2017/``) appended; it may not lead out of the data folder. Category ids may be any
integers; the labels are the category names in id order. ``iscrowd`` annotations are
skipped. Checked on load, each with a DataError naming the JSON file, image and annotation
id: a box outside its image (more than one pixel), an empty box, a non-finite number, an
undeclared category id, an unknown image id, a missing image file.
"""

from __future__ import annotations

from pathlib import Path

from loradex.core.data import SPLITS, find_split_files, seeded_split
from loradex.core.data.coco import read_coco_boxes
from loradex.core.errors import DataError
from loradex.core.task import ImageTransform, TaskData

from .targets import split_data, targets_of


def load_coco(path: Path, *, transform: ImageTransform, seed: int) -> TaskData:
    """A COCO JSON file (split 80/20 with ``seed``) or a folder of split files; see the module doc."""
    if path.is_file():
        items, categories = read_coco_boxes(path, path.parent)
        splits = dict(zip(("train", "val"), seeded_split(targets_of(items), seed)))
        how = f"one file split 80/20 with seed {seed}"
    else:
        files = find_split_files(path)
        if "train" not in files:
            raise DataError(f"{path}: no train COCO file (train.json or annotations/instances_train*.json)")
        items, categories = read_coco_boxes(files["train"][0], path, split_dir=files["train"][1])
        splits = {"train": targets_of(items)}
        for split in ("val", "test"):
            if split in files:
                splits[split] = targets_of(read_coco_boxes(files[split][0], path, categories, split_dir=files[split][1])[0])
        if "val" not in splits:
            splits["train"], splits["val"] = seeded_split(splits["train"], seed)
        how = "files " + "/".join(files[s][0].name for s in SPLITS if s in files)
    return split_data(splits, list(categories.values()), f"COCO {path} ({how})", transform)

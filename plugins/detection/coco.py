"""COCO detection JSON reader.

Layouts (``--data`` is a file or a folder):

* ``path/to/annotations.json`` — one file; its images are split into train/val by a seeded
  80/20 ratio.
* a folder holding split files, directly or under ``annotations/``: ``train.json``,
  ``val.json`` (also ``valid``/``validation``), optional ``test.json``, or COCO's own names
  ``instances_train2017.json`` / ``instances_val2017.json``. Without a val file the train
  file is split 80/20.

An image's ``file_name`` is looked up, in order, relative to: the JSON file's folder, an
``images/`` folder beside it, the data folder, ``DATA/images``, ``DATA/<split>`` and
``DATA/images/<split>`` (``<split>`` as in the file name: ``train2017`` for
``instances_train2017.json``). Category ids may be any integers; the labels are the category
names in id order. ``iscrowd`` annotations are skipped. Checked on load, each with a
DataError naming the JSON file, image file and annotation id: a box outside its image (more
than one pixel), an empty box, an undeclared category id, an unknown image id, a missing
image file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from loradex.core.errors import DataError
from loradex.core.task import ImageTransform, TaskData

from .data import SPLIT_ALIASES, SPLITS, image_size_of, make_target, seeded_split, split_data

TOLERANCE = 1.0
"""Pixels a box may stick out of its image (rounding) before it is an error; it is clipped."""
_SPLIT_FILE = re.compile(r"^(?:instances_)?(train|val|valid|validation|test)(\d*)$", re.IGNORECASE)


def find_split_files(root: Path) -> dict[str, Path]:
    """Split name → COCO JSON file in ``root`` or ``root/annotations``."""
    found: dict[str, Path] = {}
    for folder in (root, root / "annotations"):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            match = _SPLIT_FILE.match(path.stem)
            if not match:
                continue
            split = next(s for s, aliases in SPLIT_ALIASES.items() if match.group(1).lower() in aliases)
            found.setdefault(split, path)
    return found


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable COCO JSON file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("categories"), list):
        raise DataError(f"{path}: not a COCO detection file: needs 'images' and 'categories' lists")
    if not isinstance(data.get("annotations", []), list):
        raise DataError(f"{path}: 'annotations' must be a list")
    return data


def read_categories(path: Path, data: Mapping[str, Any]) -> dict[int, str]:
    """Category id → name, in id order; duplicate ids or names are errors."""
    categories: dict[int, str] = {}
    for cat in data["categories"]:
        try:
            cid, name = int(cat["id"]), str(cat["name"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: category {cat!r} needs an integer 'id' and a 'name'") from None
        if cid in categories or name in categories.values():
            raise DataError(f"{path}: category id {cid} / name {name!r} is declared twice")
        categories[cid] = name
    if not categories:
        raise DataError(f"{path}: declares no categories")
    return dict(sorted(categories.items()))


def _image_folders(json_path: Path, root: Path) -> list[Path]:
    match = _SPLIT_FILE.match(json_path.stem)
    split_dir = f"{match.group(1)}{match.group(2)}" if match else None
    folders = [json_path.parent, json_path.parent / "images", root, root / "images"]
    if split_dir:
        folders += [root / split_dir, root / "images" / split_dir]
    return list(dict.fromkeys(folders))


def read_coco_file(json_path: Path, root: Path, categories: Mapping[int, str] | None = None
                   ) -> tuple[list[tuple[Path, dict]], dict[int, str]]:
    """Checked ``(image path, target)`` items of one COCO file, and its categories."""
    data = _read_json(json_path)
    declared = read_categories(json_path, data)
    if categories is not None and dict(declared) != dict(categories):
        raise DataError(f"{json_path}: categories {declared} differ from the training file's {dict(categories)}")
    label_of = {cid: index for index, cid in enumerate(declared)}
    images: dict[Any, dict] = {}
    for image in data["images"]:
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise DataError(f"{json_path}: image entry {image!r} needs 'id' and 'file_name'")
        images[image["id"]] = image
    per_image: dict[Any, list[dict]] = {key: [] for key in images}
    for ann in data.get("annotations", []):
        image_id = ann.get("image_id")
        if image_id not in images:
            raise DataError(f"{json_path}: annotation {ann.get('id')} refers to image id {image_id!r}, "
                            "which is not in 'images'")
        per_image[image_id].append(ann)
    folders = _image_folders(json_path, root)
    items = []
    for image_id, image in images.items():
        anns = per_image[image_id]
        file_name = str(image["file_name"])
        path = next((f / file_name for f in folders if (f / file_name).is_file()), None)
        if path is None:
            ids = ", ".join(str(a.get("id")) for a in anns[:5]) + (", ..." if len(anns) > 5 else "")
            raise DataError(f"{json_path}: image file {file_name!r} (image id {image_id}, annotation ids: {ids or 'none'}) "
                            f"does not exist; looked in {', '.join(str(f) for f in folders)}")
        if "width" in image and "height" in image:
            width, height = float(image["width"]), float(image["height"])
        else:
            width, height = image_size_of(path)
        boxes, labels = [], []
        for ann in anns:
            where = f"{json_path}: annotation {ann.get('id')} (image {file_name!r})"
            cid = ann.get("category_id")
            if cid not in label_of:
                raise DataError(f"{where}: category id {cid!r} is not declared in 'categories' "
                                f"(declared: {', '.join(map(str, declared))})")
            if ann.get("iscrowd"):
                continue
            bbox = ann.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
                raise DataError(f"{where}: 'bbox' must be [x, y, width, height], got {bbox!r}")
            x, y, w, h = (float(v) for v in bbox)
            if w <= 0 or h <= 0:
                raise DataError(f"{where}: box {bbox} is empty (width and height must be positive)")
            if x < -TOLERANCE or y < -TOLERANCE or x + w > width + TOLERANCE or y + h > height + TOLERANCE:
                raise DataError(f"{where}: box {bbox} (x, y, w, h) lies outside the {width:g}x{height:g} image")
            boxes.append((max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)))
            labels.append(label_of[cid])
        items.append((path, make_target(boxes, labels, width, height)))
    return items, declared


def load_coco(path: Path, *, transform: ImageTransform, seed: int) -> TaskData:
    """A COCO JSON file (split 80/20 with ``seed``) or a folder of split files; see the module doc."""
    if path.is_file():
        items, categories = read_coco_file(path, path.parent)
        splits = dict(zip(("train", "val"), seeded_split(items, seed)))
        how = f"one file split 80/20 with seed {seed}"
    else:
        files = find_split_files(path)
        if "train" not in files:
            raise DataError(f"{path}: no train COCO file (train.json or annotations/instances_train*.json)")
        items, categories = read_coco_file(files["train"], path)
        splits = {"train": items}
        for split in ("val", "test"):
            if split in files:
                splits[split] = read_coco_file(files[split], path, categories)[0]
        if "val" not in splits:
            splits["train"], splits["val"] = seeded_split(items, seed)
        how = "files " + "/".join(files[s].name for s in SPLITS if s in files)

    return split_data(splits, list(categories.values()), f"COCO {path} ({how})", transform)

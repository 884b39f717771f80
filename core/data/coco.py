"""COCO JSON, read once for every task: structure and types, categories, image lookup, boxes.

Detection, pose and any plugin that reads COCO files share these rules: each fault is a
DataError naming the JSON file and the image or annotation, a wrong JSON type is a fault (not a
traceback), numbers must be finite, and image file names may not lead out of the data folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import DataError
from .boxes import BoxAnnotation
from .images import image_size
from .paths import find_in

BOX_TOLERANCE = 1.0
"""Pixels a box may stick out of its image (rounding) before it is an error; it is clipped."""


def read_coco(path: Path, *, annotations_required: bool = False) -> dict[str, Any]:
    """The JSON of a COCO file, its top-level types checked (images, categories, annotations)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DataError(f"{path}: not a readable COCO JSON file ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: a COCO file is a JSON object, found {type(data).__name__}")
    required = ("images", "categories", "annotations") if annotations_required else ("images", "categories")
    for key in required:
        if not isinstance(data.get(key), list):
            found = type(data[key]).__name__ if key in data else "nothing"
            raise DataError(f"{path}: '{key}' must be a list, found {found}")
    data.setdefault("annotations", [])
    for key in ("images", "categories", "annotations"):
        if not isinstance(data[key], list):
            raise DataError(f"{path}: '{key}' must be a list, found {type(data[key]).__name__}")
        for index, entry in enumerate(data[key]):
            if not isinstance(entry, dict):
                raise DataError(f"{path}: {key}[{index}] must be a JSON object, found {entry!r:.60}")
    for index, image in enumerate(data["images"]):
        if "id" not in image or not isinstance(image.get("file_name"), str):
            raise DataError(f"{path}: images[{index}] needs an 'id' and a 'file_name' string")
        for key in ("width", "height"):
            if key in image and not (_is_number(image[key]) and image[key] > 0):
                raise DataError(f"{path}: image {image['id']!r}: '{key}' must be a positive number, got {image[key]!r}")
    return data


def category_names(path: Path, data: Mapping[str, Any]) -> dict[int, str]:
    """Category id → name, in id order; duplicate ids or names are errors."""
    categories: dict[int, str] = {}
    for cat in data["categories"]:
        cid, name = cat.get("id"), cat.get("name")
        if not isinstance(cid, int) or isinstance(cid, bool) or not isinstance(name, str) or not name:
            raise DataError(f"{path}: category {cat!r:.80} needs an integer 'id' and a 'name'")
        if cid in categories or name in categories.values():
            raise DataError(f"{path}: category id {cid} / name {name!r} is declared twice")
        categories[cid] = name
    if not categories:
        raise DataError(f"{path}: declares no categories")
    return dict(sorted(categories.items()))


def image_folders(json_path: Path, root: Path, split_dir: str = "") -> list[Path]:
    """Where a COCO ``file_name`` is looked up, in order.

    The JSON file's folder, its ``images/`` folder, the data folder and its ``images/`` folder,
    and each of those with the split's folder (``val2017/``) appended — COCO's own layout.
    """
    bases = list(dict.fromkeys([json_path.parent, json_path.parent / "images", root, root / "images"]))
    return bases + ([b / split_dir for b in bases] if split_dir else [])


class ImageLookup:
    """Finds each image of a COCO file once: its path (inside the data folder) and size."""

    def __init__(self, json_path: Path, root: Path, split_dir: str = "") -> None:
        self.json_path, self.root = json_path, root
        self.folders = image_folders(json_path, root, split_dir)
        self._found: dict[Any, tuple[Path, float, float]] = {}

    def __call__(self, image: Mapping[str, Any], *, annotation: Any = None) -> tuple[Path, float, float]:
        """(path, width, height) of a COCO image entry; a DataError if the file is missing or escapes."""
        key = image["id"]
        if key not in self._found:
            name = image["file_name"]
            where = f"{self.json_path}: image {key!r}" + (f" (annotation {annotation})" if annotation is not None else "")
            path = find_in(name, self.folders, root=self.root, where=where)
            if path is None:
                raise DataError(f"{where}: image file {name!r} does not exist; looked in "
                                + ", ".join(str(f) for f in self.folders))
            if "width" in image and "height" in image:
                width, height = float(image["width"]), float(image["height"])
            else:
                width, height = (float(v) for v in image_size(path))
            self._found[key] = (path, width, height)
        return self._found[key]


def numbers(values: Any, *, count: int | None, where: str, what: str) -> list[float]:
    """``values`` as finite floats (``count`` of them, if given); NaN, infinities and text are refused."""
    if not isinstance(values, (list, tuple)) or (count is not None and len(values) != count):
        size = f"{count} " if count is not None else ""
        raise DataError(f"{where}: '{what}' must be a list of {size}numbers, got {values!r:.80}")
    out = []
    for value in values:
        if not _is_number(value):
            raise DataError(f"{where}: '{what}' holds {value!r}, which is not a finite number")
        out.append(float(value))
    return out


def box_xyxy(bbox: Any, width: float, height: float, *, where: str,
             tolerance: float = BOX_TOLERANCE) -> tuple[float, float, float, float]:
    """A COCO ``[x, y, w, h]`` box checked (finite, non-empty, inside the image) and clipped, as xyxy."""
    x, y, w, h = numbers(bbox, count=4, where=where, what="bbox")
    if w <= 0 or h <= 0:
        raise DataError(f"{where}: box {bbox} is empty (width and height must be positive)")
    if x < -tolerance or y < -tolerance or x + w > width + tolerance or y + h > height + tolerance:
        raise DataError(f"{where}: box {bbox} (x, y, w, h) lies outside the {width:g}x{height:g} image")
    return max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def annotations_by_image(path: Path, data: Mapping[str, Any]) -> dict[Any, list[dict[str, Any]]]:
    """Annotations grouped by image id; one naming an image that is not in 'images' is a DataError."""
    grouped: dict[Any, list[dict[str, Any]]] = {image["id"]: [] for image in data["images"]}
    for ann in data["annotations"]:
        image_id = ann.get("image_id")
        try:
            grouped[image_id].append(ann)
        except (KeyError, TypeError):
            raise DataError(f"{path}: annotation {ann.get('id')!r} refers to image id {image_id!r}, "
                            "which is not in 'images'") from None
    return grouped


def split_sequence(values: Sequence[float], size: int) -> list[list[float]]:
    """``[x1, y1, v1, x2, ...]`` → ``[[x1, y1, v1], ...]``."""
    return [list(values[i:i + size]) for i in range(0, len(values), size)]


def read_coco_boxes(json_path: Path, root: Path, categories: Mapping[int, str] | None = None, split_dir: str = ""
                    ) -> tuple[list[tuple[Path, BoxAnnotation]], dict[int, str]]:
    """Checked ``(image path, boxes)`` items of one COCO detection file, and its categories (``iscrowd`` skipped)."""
    data = read_coco(json_path)
    declared = category_names(json_path, data)
    if categories is not None and dict(declared) != dict(categories):
        raise DataError(f"{json_path}: categories {declared} differ from the training file's {dict(categories)}")
    label_of = {cid: index for index, cid in enumerate(declared)}
    per_image = annotations_by_image(json_path, data)
    lookup = ImageLookup(json_path, root, split_dir)
    items = []
    for image in data["images"]:
        anns = per_image[image["id"]]
        path, width, height = lookup(image, annotation=anns[0].get("id") if anns else None)
        boxes, labels = [], []
        for ann in anns:
            where = f"{json_path}: annotation {ann.get('id')} (image {image['file_name']!r})"
            cid = ann.get("category_id")
            if cid not in label_of:
                raise DataError(f"{where}: category id {cid!r} is not declared in 'categories' "
                                f"(declared: {', '.join(map(str, declared))})")
            if ann.get("iscrowd"):
                continue
            boxes.append(box_xyxy(ann.get("bbox"), width, height, where=where))
            labels.append(label_of[cid])
        items.append((path, BoxAnnotation(boxes=tuple(map(tuple, boxes)), labels=tuple(labels), width=width,
                                          height=height)))
    return items, declared

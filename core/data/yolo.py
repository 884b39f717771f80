"""YOLO txt folders (the Ultralytics / Darknet layout), read for every task that takes boxes.

Each image ``.../images/NAME.jpg`` has a label file ``.../labels/NAME.txt`` (the last
``images`` folder of the path replaced by ``labels``) with one object per line:
``class cx cy w h``, all but the class normalised to 0..1 (a longer line is a polygon
``class x1 y1 x2 y2 ...``, whose bounding box is used). An image without a label file has no
objects. Class names come from ``data.yaml`` (``names:`` as a list or an ``{id: name}``
mapping) or from ``classes.txt`` / ``obj.names`` (one per line).

Splits, first match wins: ``train:``/``val:``/``test:`` image folders in ``data.yaml``
(relative to its ``path:`` or its own folder); ``images/{train,val,test}``;
``{train,valid,val,test}/images``; or one flat ``images/`` folder split 80/20 with the seed.
Checked on load, each a DataError naming the label file and line: a class id that is not
declared, a box outside the image, a malformed line, and a label file without an image.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import DataError
from .annotations import read_class_names
from .boxes import BoxAnnotation
from .images import IMAGE_EXTENSIONS, image_size, is_image_file
from .splits import SPLIT_ALIASES, SPLITS, find_split_folders

TOLERANCE = 1e-3
"""How far (in image fractions) a box may stick out of the image before it is an error."""
NAME_FILES = ("classes.txt", "obj.names")
YAML_FILES = ("data.yaml", "data.yml", "dataset.yaml")


def is_yolo_folder(root: Path) -> bool:
    """Whether ``root`` looks like a YOLO dataset (a labels folder or a data.yaml)."""
    if any((root / name).is_file() for name in YAML_FILES) or (root / "labels").is_dir():
        return True
    return any((root / alias / "labels").is_dir() for aliases in SPLIT_ALIASES.values() for alias in aliases)


def _read_yaml(root: Path) -> tuple[Path | None, dict]:
    import yaml

    for name in YAML_FILES:
        path = root / name
        if path.is_file():
            try:
                data = yaml.safe_load(_text(path)) or {}
            except yaml.YAMLError as exc:
                raise DataError(f"{path}: not readable YAML ({exc})") from None
            if not isinstance(data, dict):
                raise DataError(f"{path}: expected a mapping with 'names'")
            return path, data
    return None, {}


def read_names(root: Path) -> tuple[list[str], str]:
    """Class names and the file they came from."""
    yaml_path, data = _read_yaml(root)
    if yaml_path is not None and "names" in data:
        names = data["names"]
        if isinstance(names, dict):
            try:
                keys = sorted(int(k) for k in names)
            except (TypeError, ValueError):
                raise DataError(f"{yaml_path}: 'names' keys must be class ids 0..n-1") from None
            if keys != list(range(len(keys))):
                raise DataError(f"{yaml_path}: 'names' ids must be 0..{len(keys) - 1} without gaps, got {keys}")
            names = [names[k] if k in names else names[str(k)] for k in keys]
        if not isinstance(names, list) or not names:
            raise DataError(f"{yaml_path}: 'names' must be a non-empty list or {{id: name}} mapping")
        return [str(n) for n in names], str(yaml_path)
    for name in NAME_FILES:
        path = root / name
        if path.is_file():
            return read_class_names(path), str(path)
    raise DataError(f"{root}: no class names: add data.yaml with 'names: [...]' or classes.txt (one name a line)")


def find_image_folders(root: Path) -> dict[str, Path]:
    """Split name → images folder (see the module doc); ``{"all": folder}`` for a flat layout."""
    yaml_path, data = _read_yaml(root)
    if yaml_path is not None and "train" in data:
        base = Path(data.get("path") or yaml_path.parent)
        base = base if base.is_absolute() else yaml_path.parent / base
        found = {}
        for split in SPLITS:
            value = data.get(split)
            if not value:
                continue
            if not isinstance(value, str):
                raise DataError(f"{yaml_path}: '{split}' must be one images folder, got {value!r}")
            folder = base / value
            if not folder.is_dir():
                raise DataError(f"{yaml_path}: '{split}' folder {folder} does not exist")
            found[split] = folder
        return found
    for pattern in ("images/{}", "{}/images"):
        found = find_split_folders(root, pattern)
        if found:
            return found
    if (root / "images").is_dir():
        return {"all": root / "images"}
    raise DataError(f"{root}: no images folder (images/, images/train, train/images or train:/val: in data.yaml)")


def label_path(image: Path) -> Path:
    """The label file of ``image``: the last ``images`` folder in its path becomes ``labels``."""
    parts = list(image.parts)
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] == "images":
            parts[index] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def read_label_file(path: Path, names: list[str], names_source: str) -> tuple[list[tuple[float, ...]], list[int]]:
    """Normalised xyxy boxes and class ids of one label file, checked line by line."""
    boxes, labels = [], []
    for number, line in enumerate(_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{number}"
        try:
            cls_value, values = float(fields[0]), [float(v) for v in fields[1:]]
        except ValueError:
            raise DataError(f"{where}: expected 'class cx cy w h' numbers, got {line.strip()!r}") from None
        if not all(math.isfinite(v) for v in (cls_value, *values)):
            raise DataError(f"{where}: holds a value that is not a finite number: {line.strip()!r}")
        if not cls_value.is_integer():
            raise DataError(f"{where}: class id {fields[0]!r} is not an integer")
        cls = int(cls_value)
        if not 0 <= cls < len(names):
            raise DataError(f"{where}: class id {cls} is not declared in {names_source} "
                            f"({len(names)} classes, ids 0..{len(names) - 1})")
        if len(values) == 4:
            cx, cy, w, h = values
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        elif len(values) >= 6 and len(values) % 2 == 0:
            xs, ys = values[0::2], values[1::2]
            box = (min(xs), min(ys), max(xs), max(ys))
        else:
            raise DataError(f"{where}: expected 'class cx cy w h' (or a polygon), got {len(fields)} values")
        if box[2] <= box[0] or box[3] <= box[1]:
            raise DataError(f"{where}: box is empty (width and height must be positive)")
        if min(box) < -TOLERANCE or max(box) > 1 + TOLERANCE:
            raise DataError(f"{where}: box {' '.join(fields[1:5])} lies outside the image "
                            "(YOLO coordinates are fractions 0..1 of the image size)")
        boxes.append(tuple(min(max(v, 0.0), 1.0) for v in box))
        labels.append(cls)
    return boxes, labels


def read_folder(images: Path, names: list[str], names_source: str) -> list[tuple[Path, BoxAnnotation]]:
    """Checked ``(image path, boxes)`` items of one images folder."""
    files = sorted(p for p in images.rglob("*") if is_image_file(p))
    items = []
    for image in files:
        labels_file = label_path(image)
        boxes, labels = read_label_file(labels_file, names, names_source) if labels_file.is_file() else ([], [])
        width, height = image_size(image)
        pixel = tuple((b[0] * width, b[1] * height, b[2] * width, b[3] * height) for b in boxes)
        items.append((image, BoxAnnotation(boxes=pixel, labels=tuple(labels), width=width, height=height)))
    labels_dir = label_path(images / "x.png").parent
    if labels_dir.is_dir():
        have = {label_path(p) for p in files}
        for orphan in sorted(p for p in labels_dir.rglob("*.txt") if p not in have):
            raise DataError(f"{orphan}: no image file for this label file (looked for {orphan.stem}"
                            f"{{{','.join(sorted(IMAGE_EXTENSIONS))}}} in {images})")
    return items


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); label files are plain text") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None

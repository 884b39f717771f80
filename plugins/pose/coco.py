"""COCO keypoints JSON: reading, checking, and cutting one crop per person (top-down).

Layouts ``--data`` accepts:

- a JSON file (``annotations.json``): split into train/val by image, 80/20, with the run's seed;
- a folder holding JSON files whose names end in ``train``, ``val`` (or ``valid``/``validation``)
  and optionally ``test``, each optionally followed by digits (``person_keypoints_val2017.json``),
  directly or in an ``annotations/`` subfolder. A folder with exactly one JSON file is read as a file.

An image's ``file_name`` is looked up relative to the JSON's folder, then its ``images/``
subfolder, then the data folder and its ``images/`` subfolder, and each of those with the
split's folder name (``val2017/``) appended — COCO's own layout.

Top-down practice: every annotation with at least one labelled keypoint (and not ``iscrowd``)
becomes its own sample, the square crop of side 1.25 x max(box w, h) centred on its box (parts
outside the image are black). Predictions and metrics are mapped back to original pixels.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np

from loradex.core.errors import DataError
from loradex.core.task import ImageTransform, TaskData

from .data import CropDataset, make_target
from .schema import guess_flip_pairs

CROP_PADDING = 1.25
"""Side of a person crop relative to the larger side of its box."""
BOX_TOLERANCE = 1.0
"""Pixels a box may stick out of its image before it counts as outside."""
VAL_FRACTION = 0.2
SPLIT_PATTERN = re.compile(r"(?:^|[_\-.])(train|val|valid|validation|test)(\d*)$", re.IGNORECASE)
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


class Sample:
    """One person crop: its image file, crop box (x0, y0, x1, y1) and target."""

    __slots__ = ("path", "crop", "target", "image_id")

    def __init__(self, path: Path, crop: tuple[float, float, float, float], target: dict, image_id: Any) -> None:
        self.path, self.crop, self.target, self.image_id = path, crop, target, image_id


def find_split_files(root: Path) -> dict[str, tuple[Path, str]]:
    """split → (JSON file, folder name of that split's images such as ``val2017``)."""
    found: dict[str, tuple[Path, str]] = {}
    candidates = sorted(root.glob("*.json")) + sorted((root / "annotations").glob("*.json"))
    for path in candidates:
        match = SPLIT_PATTERN.search(path.stem)
        if match:
            split = SPLIT_NAMES[match.group(1).lower()]
            if split in found:
                raise DataError(f"{root}: two {split} annotation files, {found[split][0].name} and {path.name}")
            found[split] = (path, match.group(1) + match.group(2))
    if not found and len(candidates) == 1:
        return {"all": (candidates[0], "")}
    if not found:
        raise DataError(f"{root}: no COCO keypoints JSON named *train.json / *val.json (or a single .json file) "
                        "here or in annotations/")
    if "train" not in found:
        raise DataError(f"{root}: has {', '.join(p.name for p, _ in found.values())} but no *train.json")
    return found


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise DataError(f"{path}: not COCO format (needs lists 'images', 'annotations' and 'categories')")
    return data


def read_schema(path: Path, data: dict[str, Any]) -> tuple[dict[str, Any], set[Any]]:
    """Head configuration from the keypoint category, and the ids of keypoint categories."""
    with_kps = [c for c in data["categories"] if isinstance(c, dict) and c.get("keypoints")]
    if not with_kps:
        raise DataError(f"{path}: no category declares 'keypoints'")
    first = with_kps[0]
    for other in with_kps[1:]:
        if other["keypoints"] != first["keypoints"]:
            raise DataError(f"{path}: categories {first.get('id')} and {other.get('id')} declare different keypoints")
    names = [str(n) for n in first["keypoints"]]
    skeleton = []
    for pair in first.get("skeleton") or []:  # COCO skeletons count keypoints from 1
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(i, int) and 1 <= i <= len(names) for i in pair)):
            raise DataError(f"{path}: category {first.get('id')}: skeleton pair {pair!r} is not two keypoint numbers 1..{len(names)}")
        skeleton.append([pair[0] - 1, pair[1] - 1])
    head = {"keypoints": names, "skeleton": skeleton, "flip_pairs": guess_flip_pairs(names),
            "category": str(first.get("name", "person"))}
    return head, {c.get("id") for c in with_kps}


def _image_dirs(json_path: Path, root: Path, split_dir: str) -> list[Path]:
    bases = list(dict.fromkeys([json_path.parent, json_path.parent / "images", root, root / "images"]))
    return bases + ([b / split_dir for b in bases] if split_dir else [])


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None


def read_coco_file(json_path: Path, root: Path, split_dir: str = "") -> tuple[dict[str, Any], list[Sample]]:
    """Check a COCO keypoints file and turn its people into samples; DataError names file and annotation."""
    data = _load_json(json_path)
    head, kp_categories = read_schema(json_path, data)
    k = len(head["keypoints"])
    declared = {c.get("id") for c in data["categories"] if isinstance(c, dict)}
    images = {im.get("id"): im for im in data["images"] if isinstance(im, dict)}
    dirs = _image_dirs(json_path, root, split_dir)
    resolved: dict[Any, tuple[Path, float, float]] = {}
    samples: list[Sample] = []
    for ann in data["annotations"]:
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        where = f"{json_path}: annotation {ann_id}"
        if not isinstance(ann, dict):
            raise DataError(f"{json_path}: an annotation is not a JSON object: {ann!r}")
        if ann.get("category_id") not in declared:
            raise DataError(f"{where}: category_id {ann.get('category_id')!r} is not declared in 'categories'")
        if ann.get("category_id") not in kp_categories:
            continue
        kps = ann.get("keypoints")
        if not isinstance(kps, list) or len(kps) != 3 * k:
            got = len(kps) if isinstance(kps, list) else type(kps).__name__
            raise DataError(f"{where}: 'keypoints' must hold 3 x {k} = {3 * k} numbers "
                            f"(x, y, v for {k} keypoints), found {got}")
        triples = np.asarray(kps, dtype=np.float64).reshape(k, 3)
        if not np.isin(triples[:, 2], (0, 1, 2)).all():
            raise DataError(f"{where}: keypoint visibility flags must be 0, 1 or 2")
        image = images.get(ann.get("image_id"))
        if image is None:
            raise DataError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        if image["id"] not in resolved:
            name = str(image.get("file_name", ""))
            path = next((d / name for d in dirs if name and (d / name).is_file()), None)
            if path is None:
                raise DataError(f"{where}: image file {name!r} of image {image['id']} not found in "
                                + ", ".join(str(d) for d in dirs))
            width, height = image.get("width"), image.get("height")
            if not width or not height:
                width, height = _image_size(path)
            resolved[image["id"]] = (path, float(width), float(height))
        path, width, height = resolved[image["id"]]
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise DataError(f"{where}: 'bbox' must be [x, y, width, height], found {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        t = BOX_TOLERANCE
        if w <= 0 or h <= 0 or x < -t or y < -t or x + w > width + t or y + h > height + t:
            raise DataError(f"{where}: bbox {bbox} is outside its image {path.name} ({width:g}x{height:g})")
        visible = triples[:, 2] > 0
        if ann.get("iscrowd") or not visible.any():
            continue
        side = round(CROP_PADDING * max(w, h))
        x0, y0 = round(x + w / 2 - side / 2), round(y + h / 2 - side / 2)
        points = triples[:, :2] - np.array([x0, y0])
        area = float(ann.get("area") or w * h)
        target = make_target(points * visible[:, None], visible, (side, side), (w, h), area)
        samples.append(Sample(path, (x0, y0, x0 + side, y0 + side), target, image["id"]))
    return head, samples


def _dataset(samples: list[Sample], transform: ImageTransform) -> CropDataset | None:
    if not samples:
        return None
    return CropDataset([s.path for s in samples], [s.crop for s in samples], [s.target for s in samples], transform)


def load_coco_keypoints(path: Path, *, transform: ImageTransform, seed: int) -> TaskData:
    """Read a COCO keypoints file or folder (see the module docstring) into person-crop splits."""
    if not path.exists():
        raise DataError(f"{path}: no such COCO keypoints file or folder")
    if path.is_file():
        files = {"all": (path, "")}
        root = path.parent
    else:
        files, root = find_split_files(path), path
    read = {split: read_coco_file(file, root, split_dir) for split, (file, split_dir) in files.items()}
    head = next(iter(read.values()))[0]
    for split, (other, _) in read.items():
        if other["keypoints"] != head["keypoints"]:
            raise DataError(f"{files[split][0]}: keypoints {other['keypoints']} differ from {head['keypoints']}")
    if "all" in read:
        samples = read["all"][1]
        ids = sorted({s.image_id for s in samples}, key=str)
        random.Random(seed).shuffle(ids)
        n_val = max(1, round(len(ids) * VAL_FRACTION)) if len(ids) > 1 else 0
        val_ids = set(ids[:n_val])
        splits = {"train": [s for s in samples if s.image_id not in val_ids],
                  "val": [s for s in samples if s.image_id in val_ids]}
        how = f"{path.name} split {1 - VAL_FRACTION:.0%}/{VAL_FRACTION:.0%} by image with seed {seed}"
    else:
        splits = {split: samples for split, (_, samples) in read.items()}
        how = ", ".join(f"{split} {files[split][0].name}" for split in splits)
    counts = "/".join(str(len(splits.get(s, []))) for s in ("train", "val", "test"))
    if not splits.get("train"):
        raise DataError(f"{path}: no annotated people in the training split")
    return TaskData(
        train=_dataset(splits["train"], transform),
        val=_dataset(splits.get("val", []), transform),
        test=_dataset(splits.get("test", []), transform),
        head_config=head,
        description=f"COCO keypoints ({how}): {len(head['keypoints'])} keypoints, {counts} train/val/test people",
    )

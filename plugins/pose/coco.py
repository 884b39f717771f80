"""COCO keypoints JSON: reading, checking, and cutting one crop per person (top-down).

Layouts ``--data`` accepts:

- a JSON file (``annotations.json``): split into train/val by image, 80/20, with the run's seed;
- a folder holding JSON files whose names end in ``train``, ``val`` (or ``valid``/``validation``)
  and optionally ``test``, each optionally followed by digits (``person_keypoints_val2017.json``),
  directly or in an ``annotations/`` subfolder. A folder with exactly one JSON file is read as a file.

An image's ``file_name`` is looked up as :mod:`loradex.core.data.coco` says for every task
(the JSON's folder, ``images/``, the data folder, each with the split's folder such as
``val2017/``); it may not lead out of the data folder. Every number must be finite.

Top-down practice: every annotation with at least one labelled keypoint (and not ``iscrowd``)
becomes its own sample, the square crop of side 1.25 x max(box w, h) centred on its box (parts
outside the image are black). Predictions and metrics are mapped back to original pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from loradex.core.data import describe_counts, find_split_files as find_coco_split_files, seeded_split
from loradex.core.data.coco import ImageLookup, box_xyxy, numbers, read_coco
from loradex.core.errors import DataError
from loradex.core.task import ImageTransform, TaskData

from .schema import guess_flip_pairs
from .targets import CropDataset, make_target

CROP_PADDING = 1.25
"""Side of a person crop relative to the larger side of its box."""


class Sample:
    """One person crop: its image file, crop box (x0, y0, x1, y1) and target."""

    __slots__ = ("path", "crop", "target", "image_id")

    def __init__(self, path: Path, crop: tuple[float, float, float, float], target: dict, image_id: Any) -> None:
        self.path, self.crop, self.target, self.image_id = path, crop, target, image_id


def find_split_files(root: Path) -> dict[str, tuple[Path, str]]:
    """split → (JSON file, folder name of that split's images such as ``val2017``); a lone file is "all"."""
    found = find_coco_split_files(root)
    candidates = sorted(root.glob("*.json")) + sorted((root / "annotations").glob("*.json"))
    if not found and len(candidates) == 1:
        return {"all": (candidates[0], "")}
    if not found:
        raise DataError(f"{root}: no COCO keypoints JSON named *train.json / *val.json (or a single .json file) "
                        "here or in annotations/")
    if "train" not in found:
        raise DataError(f"{root}: has {', '.join(p.name for p, _ in found.values())} but no *train.json")
    return found


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


def read_coco_file(json_path: Path, root: Path, split_dir: str = "") -> tuple[dict[str, Any], list[Sample]]:
    """Check a COCO keypoints file and turn its people into samples; DataError names file and annotation."""
    data = read_coco(json_path, annotations_required=True)
    head, kp_categories = read_schema(json_path, data)
    k = len(head["keypoints"])
    declared = {c.get("id") for c in data["categories"]}
    images = {im["id"]: im for im in data["images"]}
    lookup = ImageLookup(json_path, root, split_dir)
    samples: list[Sample] = []
    for ann in data["annotations"]:
        ann_id = ann.get("id")
        where = f"{json_path}: annotation {ann_id}"
        if ann.get("category_id") not in declared:
            raise DataError(f"{where}: category_id {ann.get('category_id')!r} is not declared in 'categories'")
        if ann.get("category_id") not in kp_categories:
            continue
        kps = ann.get("keypoints")
        if not isinstance(kps, list) or len(kps) != 3 * k:
            got = len(kps) if isinstance(kps, list) else type(kps).__name__
            raise DataError(f"{where}: 'keypoints' must hold 3 x {k} = {3 * k} numbers "
                            f"(x, y, v for {k} keypoints), found {got}")
        triples = np.asarray(numbers(kps, count=3 * k, where=where, what="keypoints")).reshape(k, 3)
        if not np.isin(triples[:, 2], (0, 1, 2)).all():
            raise DataError(f"{where}: keypoint visibility flags must be 0, 1 or 2")
        image = images.get(ann.get("image_id"))
        if image is None:
            raise DataError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        path, width, height = lookup(image, annotation=ann_id)
        x0, y0, x1, y1 = box_xyxy(ann.get("bbox"), width, height, where=f"{where} (image {path.name})")
        w, h = x1 - x0, y1 - y0
        visible = triples[:, 2] > 0
        if ann.get("iscrowd") or not visible.any():
            continue
        side = round(CROP_PADDING * max(w, h))
        cx0, cy0 = round(x0 + w / 2 - side / 2), round(y0 + h / 2 - side / 2)
        points = triples[:, :2] - np.array([cx0, cy0])
        area = ann.get("area")
        area = float(area) if isinstance(area, (int, float)) and not isinstance(area, bool) and area > 0 else w * h
        target = make_target(points * visible[:, None], visible, (side, side), (w, h), area)
        samples.append(Sample(path, (cx0, cy0, cx0 + side, cy0 + side), target, image["id"]))
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
        train, val = seeded_split(read["all"][1], seed, group=lambda sample: sample.image_id)
        splits = {"train": train, "val": val}
        how = f"{path.name} split 80/20 by image with seed {seed}"
    else:
        splits = {split: samples for split, (_, samples) in read.items()}
        how = ", ".join(f"{split} {files[split][0].name}" for split in splits)
    counts = describe_counts(splits)
    if not splits.get("train"):
        raise DataError(f"{path}: no annotated people in the training split")
    return TaskData(
        train=_dataset(splits["train"], transform),
        val=_dataset(splits.get("val", []), transform),
        test=_dataset(splits.get("test", []), transform),
        head_config=head,
        description=f"COCO keypoints ({how}): {len(head['keypoints'])} keypoints, {counts} train/val/test people",
    )

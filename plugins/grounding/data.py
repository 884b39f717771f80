"""Grounding data: records of (image, task prompt, answer text), from JSONL, COCO, YOLO or synthetic scenes.

A record is what Florence-2 trains on: ``{"prefix": "<OD>", "suffix": "drop<loc_732><loc_481>…",
"image": "0 (1).jpg"}``. Three kinds are read:

- ``<OD>`` — object detection: ``category<loc×4>`` per object;
- ``<DENSE_REGION_CAPTION>`` — region captions: ``description<loc×4>`` per region;
- ``<CAPTION_TO_PHRASE_GROUNDING>PHRASE`` — phrase grounding: ``PHRASE<loc×4>`` (one or more boxes).

Sources: a ``.jsonl`` file (images beside it or in ``images/``; split 80/20 by image with the
seed); a folder with ``train/``, ``valid/`` (or ``val/``) and ``test/`` folders each holding a
``.jsonl`` and its images, or ``train.jsonl`` / ``valid.jsonl`` / ``test.jsonl`` side by side;
a COCO detection JSON or YOLO folder (read by the detection task's readers, turned into
``<OD>`` records); or ``synthetic[:train=N,val=N,test=N,seed=N]`` — scenes of coloured shapes
with all three kinds. Each fault names the file and line: a ``<loc_N>`` outside 0..999, a
malformed answer, an unknown prompt, a missing image.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from loradex.core.data import (
    SPLITS,
    describe_counts,
    find_in,
    find_split_folders,
    image_size,
    open_image,
    parse_synthetic,
    require_path,
    seeded_split,
    split_of,
    synthetic_splits,
)
from loradex.core.data.boxes import BoxAnnotation
from loradex.core.errors import DataError
from loradex.core.task import ImageTransform, TaskData

from ..shapes import SCENE_SHAPES, background, draw_shape, rng_for, shape_polygon
from .locations import SuffixError, dequantize, location_text, objects_text, parse_objects, quantize

OD, REGION, PHRASE = "<OD>", "<DENSE_REGION_CAPTION>", "<CAPTION_TO_PHRASE_GROUNDING>"
KINDS = {OD: "od", REGION: "region", PHRASE: "phrase"}
KIND_ORDER = ("od", "region", "phrase")
SYNTHETIC_DEFAULTS = {"train": 300, "val": 30, "test": 0, "seed": 0}
COLOURS = {"red": (235, 60, 60), "green": (70, 210, 90), "blue": (80, 130, 255), "yellow": (240, 225, 60),
           "white": (245, 245, 245), "purple": (190, 100, 240)}


@dataclass
class Record:
    """One training example: an image, the task prompt and the answer text, with its boxes in pixels."""

    prefix: str
    suffix: str
    kind: str
    size: tuple[float, float]
    labels: list[str] = field(default_factory=list)
    boxes: list[list[float]] = field(default_factory=list)
    path: Path | None = None
    image: Any = None
    where: str = ""

    def target(self) -> dict[str, Any]:
        """The target an item carries (plain values: strings, floats, lists)."""
        return {"prefix": self.prefix, "suffix": self.suffix, "kind": self.kind, "size": list(self.size),
                "labels": list(self.labels), "boxes": [list(b) for b in self.boxes]}


def make_record(prefix: str, suffix: str, size: tuple[float, float], *, where: str, path: Path | None = None,
                image: Any = None) -> Record:
    """A checked record: its kind from the prompt, its boxes from the answer (bins → pixels)."""
    task_token = next((token for token in KINDS if prefix.startswith(token)), None)
    if task_token is None or (task_token != PHRASE and prefix != task_token):
        raise DataError(f"{where}: prefix {prefix!r} is not one of {OD}, {REGION} or {PHRASE}PHRASE")
    if task_token == PHRASE and not prefix[len(PHRASE):].strip():
        raise DataError(f"{where}: {PHRASE} needs the phrase after it, e.g. {PHRASE}a red circle")
    try:
        objects = parse_objects(suffix)
    except SuffixError as exc:
        raise DataError(f"{where}: suffix {suffix[:60]!r}…: {exc}") from None
    width, height = size
    return Record(prefix=prefix, suffix=suffix, kind=KINDS[task_token], size=(float(width), float(height)),
                  labels=[label for label, _ in objects], boxes=[dequantize(b, width, height) for _, b in objects],
                  path=path, image=image, where=where)


class RecordDataset:
    """Records as ``(pixel_values, target)`` items; images decoded on access (or kept, for synthetic data)."""

    def __init__(self, records: Sequence[Record], transform: ImageTransform) -> None:
        self.records, self.transform = list(records), transform
        self.images = _ImageList(self.records)
        """The original images (for drawing predictions on validation samples)."""

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        record = self.records[index]
        return self.transform(self.images[index]), record.target()

    def kinds(self) -> list[str]:
        """The kind of every item (what the ``mix`` order sorts by)."""
        return [r.kind for r in self.records]


class _ImageList:
    def __init__(self, records: Sequence[Record]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        return record.image if record.image is not None else open_image(record.path)


class MixSampler:
    """Training order of multi-kind data: ``interleave`` shuffles everything together; ``sequential``
    gives each kind in turn (OD, region captions, grounding), shuffled within the kind."""

    def __init__(self, kinds: Sequence[str], *, mix: str, seed: int) -> None:
        self.kinds, self.mix, self.seed, self.epoch = list(kinds), mix, seed, 0

    def __len__(self) -> int:
        return len(self.kinds)

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        order = list(range(len(self.kinds)))
        rng.shuffle(order)
        if self.mix == "sequential":
            rank = {kind: i for i, kind in enumerate(KIND_ORDER)}
            order.sort(key=lambda index: rank.get(self.kinds[index], len(rank)))
        return iter(order)


# ------------------------------------------------------------------------------------------------ readers


def load_grounding_data(source: str | None, *, transform: ImageTransform, image_size: int, seed: int) -> TaskData:
    """Records per split from ``source`` (see the module docstring)."""
    options = parse_synthetic(source, SYNTHETIC_DEFAULTS)
    if options is not None:
        return synthetic_data(transform=transform, image_size=image_size, **options)
    path = require_path(source)
    if path.is_file() and path.suffix.lower() == ".jsonl":
        records = read_jsonl(path, root=path.parent)
        train, val = seeded_split(records, seed, group=lambda r: str(r.path))
        return task_data({"train": train, "val": val}, transform, f"JSONL {path} (split 80/20 by image, seed {seed})")
    if path.is_dir() and (splits := _jsonl_splits(path)):
        records = {split: read_jsonl(file, root=file.parent) for split, file in splits.items()}
        if "val" not in records:
            records["train"], records["val"] = seeded_split(records["train"], seed, group=lambda r: str(r.path))
        return task_data(records, transform, f"JSONL {path} ({', '.join(f.name for f in splits.values())})")
    return _from_detection_data(path, transform=transform, seed=seed)


def _jsonl_splits(root: Path) -> dict[str, Path]:
    """Split → JSONL file: ``SPLIT/*.jsonl`` folders, or ``SPLIT.jsonl`` files in ``root``."""
    found: dict[str, Path] = {}
    for split, folder in find_split_folders(root).items():
        files = sorted(folder.glob("*.jsonl"))
        if len(files) > 1:
            raise DataError(f"{folder}: holds {len(files)} .jsonl files; keep one per split")
        if files:
            found[split] = files[0]
    for file in sorted(root.glob("*.jsonl")):
        split = split_of(file.stem)
        if split and split not in found:
            found[split] = file
    if found and "train" not in found:
        raise DataError(f"{root}: has {', '.join(p.name for p in found.values())} but no train split")
    return found


def read_jsonl(path: Path, *, root: Path) -> list[Record]:
    """Checked records of one JSONL file; images are looked up beside it, then in ``images/``."""
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    sizes: dict[Path, tuple[int, int]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise DataError(f"{where}: not valid JSON ({getattr(exc, 'msg', 'nested too deeply')})") from None
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("prefix", "suffix", "image")):
            raise DataError(f"{where}: a record needs the strings 'prefix', 'suffix' and 'image'")
        image = find_in(entry["image"], [root, root / "images"], root=root, where=where)
        if image is None:
            raise DataError(f"{where}: image {entry['image']!r} does not exist beside {path.name} or in images/")
        if image not in sizes:
            sizes[image] = image_size(image)
        records.append(make_record(entry["prefix"], entry["suffix"], sizes[image], where=where, path=image))
    if not records:
        raise DataError(f"{path}: holds no records")
    return records


def _from_detection_data(path: Path, *, transform: ImageTransform, seed: int) -> TaskData:
    """A COCO JSON or YOLO folder, read by the shared box readers (core.data), as ``<OD>`` records."""
    from loradex.core.data import coco, yolo

    if path.is_file() and path.suffix.lower() == ".json":
        items, categories = coco.read_coco_boxes(path, path.parent)
        labels = list(categories.values())
        splits = dict(zip(("train", "val"), seeded_split(items, seed)))
        how = f"COCO {path}"
    elif path.is_dir() and yolo.is_yolo_folder(path):
        labels, names_source = yolo.read_names(path)
        folders = yolo.find_image_folders(path)
        splits = {s: yolo.read_folder(f, labels, names_source) for s, f in folders.items()}
        if "all" in splits:
            splits = dict(zip(("train", "val"), seeded_split(splits.pop("all"), seed)))
        elif "val" not in splits:
            splits["train"], splits["val"] = seeded_split(splits["train"], seed)
        how = f"YOLO {path}"
    else:
        raise DataError(f"{path}: not grounding data: expected a .jsonl file, a folder of split .jsonl files, "
                        "a COCO detection JSON or a YOLO folder")
    records = {split: [_od_record(p, t, labels) for p, t in items] for split, items in splits.items()}
    return task_data(records, transform, f"{how} as {OD} records", labels=labels)


def _od_record(path: Path, annotation: BoxAnnotation, labels: Sequence[str]) -> Record:
    width, height = float(annotation.width), float(annotation.height)
    boxes = [[min(max(float(v), 0.0), side) for v, side in zip(box, (width, height, width, height))]
             for box in annotation.boxes]  # clamped into the image, as the detection targets are
    objects = sorted(((labels[int(c)], quantize(b, width, height)) for b, c in zip(boxes, annotation.labels)),
                     key=lambda o: (o[1][1], o[1][0]))
    return make_record(OD, objects_text(objects), (width, height), where=str(path), path=path)


def task_data(splits: dict[str, list[Record]], transform: ImageTransform, what: str,
              labels: Sequence[str] | None = None) -> TaskData:
    """TaskData of record datasets; the head configuration holds the OD categories and the kinds present."""
    if not splits.get("train"):
        raise DataError(f"{what}: the training split has no records")
    everything = [r for records in splits.values() for r in records]
    categories = list(labels) if labels else sorted({lab for r in everything if r.kind == "od" for lab in r.labels})
    kinds = [k for k in KIND_ORDER if any(r.kind == k for r in everything)]
    counts = describe_counts(splits)
    sets = {s: RecordDataset(splits[s], transform) if splits.get(s) else None for s in SPLITS}
    return TaskData(train=sets["train"], val=sets["val"], test=sets["test"],
                    head_config={"labels": categories, "kinds": kinds},
                    description=f"{what}: {counts} train/val/test records of {', '.join(kinds)}")


# ------------------------------------------------------------------------------------------------ synthetic


def scene(seed: int, index: int, size: int) -> tuple[Image.Image, list[tuple[str, str, list[float]]]]:
    """A scene of 1-3 shapes in named colours: (image, [(shape, colour, pixel box)]), a pure function of its args."""
    rng = rng_for(seed, 2_000_000_011 + index)
    image = background(rng, size)
    draw = ImageDraw.Draw(image)
    objects: list[tuple[str, str, list[float]]] = []
    names = list(COLOURS)
    for _ in range(int(rng.integers(1, 4))):
        for _attempt in range(20):
            shape = SCENE_SHAPES[int(rng.integers(0, len(SCENE_SHAPES)))]
            colour = names[int(rng.integers(0, len(names)))]
            radius = rng.uniform(0.12, 0.24) * size
            cx, cy = rng.uniform(radius, size - radius, size=2)
            angle = rng.uniform(0, 2 * math.pi)
            points = shape_polygon(shape, cx, cy, radius, angle) if shape != "circle" else [
                (cx - radius, cy - radius), (cx + radius, cy + radius)]
            box = [min(p[0] for p in points), min(p[1] for p in points), max(p[0] for p in points),
                   max(p[1] for p in points)]
            if all(_overlap(box, other) < 0.2 for _, _, other in objects):
                draw_shape(draw, shape, cx, cy, radius, angle, COLOURS[colour])
                objects.append((shape, colour, box))
                break
    return image, objects


def scene_records(image: Image.Image, objects: list[tuple[str, str, list[float]]], *, where: str) -> list[Record]:
    """The three kinds of records of one synthetic scene (objects in reading order)."""
    size = image.size
    ordered = sorted(objects, key=lambda o: (quantize(o[2], *size)[1], quantize(o[2], *size)[0]))
    records = [
        make_record(OD, objects_text([(s, quantize(b, *size)) for s, _, b in ordered]), size, where=where, image=image),
        make_record(REGION, objects_text([(f"{c} {s}", quantize(b, *size)) for s, c, b in ordered]), size,
                    where=where, image=image),
    ]
    counts: dict[tuple[str, str], int] = {}
    for s, c, _ in objects:
        counts[(s, c)] = counts.get((s, c), 0) + 1
    unique = [o for o in ordered if counts[(o[0], o[1])] == 1]
    if unique:
        shape, colour, box = unique[0]
        phrase = f"the {colour} {shape}"
        records.append(make_record(f"{PHRASE}{phrase}", f"{phrase}{location_text(quantize(box, *size))}", size,
                                   where=where, image=image))
    return records


def synthetic_data(*, transform: ImageTransform, image_size: int, train: int, val: int, test: int,
                   seed: int) -> TaskData:
    """Synthetic scenes with OD, region-caption and phrase-grounding records, a pure function of the seed."""

    def split(offset: int, count: int) -> list[Record]:
        out = []
        for i in range(count):
            image, objects = scene(seed, offset + i, image_size)
            out += scene_records(image, objects, where=f"synthetic scene {offset + i}")
        return out

    if train < 1 or val < 1:
        raise DataError("synthetic grounding scenes need at least 1 train and 1 val image")
    splits = dict(zip(SPLITS, synthetic_splits(split, train=train, val=val, test=test)))
    return task_data({k: v for k, v in splits.items() if v}, transform,
                     f"synthetic scenes at {image_size}px ({train}/{val}/{test} images)", labels=SCENE_SHAPES)


def _overlap(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / smaller if smaller > 0 else 0.0

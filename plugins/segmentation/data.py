"""Segmentation data: synthetic shapes with masks, ``images/`` + ``masks/`` folders, Pascal VOC folders, COCO.

- ``synthetic[:train=N,val=N,test=N,seed=N]``: shapes (circle, square, triangle) on noisy
  backgrounds; the mask holds each pixel's class (0 = background).
- a folder with ``images/`` and ``masks/`` (one mask PNG per image, same stem; a pixel value is
  the class index, 255 = ignore) and ``classes.txt`` (one name per line, index 0 first), split
  80/20 with the seed unless ``images/{train,val}`` and ``masks/{train,val}`` exist;
- a Pascal VOC folder: ``JPEGImages/``, ``SegmentationClass/`` palette PNGs (the palette index
  is the class, 255 = the ignored border) and ``ImageSets/Segmentation/{train,val}.txt``; class
  names from ``classes.txt`` if present, else VOC's 21;
- a COCO instances ``.json`` (polygons or RLE, images beside it or in ``images/``): each image's
  objects painted into one mask (class = category, background 0, crowds ignored), split 80/20.

Checked when read, each a DataError naming the file: a mask whose size differs from its image, a
class index with no name, a mask missing for an image, an RGB mask colour that is not in the palette.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from loradex import (
    SPLITS, DataError, ImageDataset, TaskData, TensorListDataset, image_size, is_image_file, paired_files,
    parse_synthetic, read_class_names, require_folder, seeded_split, synthetic_splits,
)

IGNORE = 255
"""Mask value of pixels no loss or metric counts (VOC's object borders)."""
SHAPES = ("background", "circle", "square", "triangle")
SYNTHETIC = {"train": 1200, "val": 120, "test": 0, "seed": 0}
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


@functools.lru_cache(maxsize=1)
def voc_palette() -> tuple[tuple[int, int, int], ...]:
    """The 256 colours of VOC's label PNGs (class i's colour is palette[i])."""
    colours = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r, g, b = r | ((c >> 0) & 1) << shift, g | ((c >> 1) & 1) << shift, b | ((c >> 2) & 1) << shift
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


def shapes_scene(seed: int, index: int, size: int) -> tuple[Image.Image, np.ndarray]:
    """(image, mask) of 1-3 shapes on a noisy background: a pure function of its arguments."""
    rng = np.random.default_rng([seed, index, 7])
    pixels = rng.normal(rng.uniform(60, 190), 25, size=(size, size, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    mask = Image.new("L", (size, size), 0)
    draw, paint = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(1, 4))):
        label = int(rng.integers(1, len(SHAPES)))
        r = rng.uniform(0.12, 0.25) * size
        cx, cy = rng.uniform(r, size - r, size=2)
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        box = (cx - r, cy - r, cx + r, cy + r)
        points = [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
        for canvas, fill in ((draw, colour), (paint, label)):
            if SHAPES[label] == "circle":
                canvas.ellipse(box, fill=fill)
            elif SHAPES[label] == "square":
                canvas.rectangle(box, fill=fill)
            else:
                canvas.polygon(points, fill=fill)
    return image, np.asarray(mask, dtype=np.uint8)


class MaskTargets:
    """Mask files read on first access, resized (nearest) to the training size, as (H, W) long tensors.

    Each resized mask is kept (one byte a pixel at the training size: 16 KB at 128 px), so later
    epochs do not decode the PNGs again.
    """

    def __init__(self, paths: list[Path], size: int, num_classes: int, *, palette: bool = False) -> None:
        self.paths, self.size, self.num_classes, self.palette = paths, size, num_classes, palette
        self._kept: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        import torch

        if index not in self._kept:
            mask = read_mask(self.paths[index], self.num_classes, palette=self.palette)
            self._kept[index] = np.asarray(Image.fromarray(mask).resize((self.size, self.size), Image.NEAREST))
        return torch.from_numpy(self._kept[index].astype(np.int64))


def read_mask(path: Path, num_classes: int, *, palette: bool = False) -> np.ndarray:
    """A mask file as (H, W) class indices (255: ignore); a DataError names a bad file or value."""
    try:
        with Image.open(path) as picture:
            if picture.mode == "RGB" and palette:  # a VOC mask saved as colours, not palette indices
                mask = _from_colours(path, np.asarray(picture))
            elif picture.mode in ("L", "P", "I", "I;16"):
                mask = np.asarray(picture).astype(np.int64)
            else:
                raise DataError(f"{path}: a mask must be a one-channel (L or palette) PNG, not {picture.mode}")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable mask ({exc})") from None
    bad = np.unique(mask[(mask >= num_classes) & (mask != IGNORE)])
    if bad.size:
        raise DataError(f"{path}: class index {int(bad[0])} has no name ({num_classes} classes; 255 is ignored)")
    return mask.astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _palette_index() -> dict[tuple[int, int, int], int]:
    return {colour: index for index, colour in enumerate(voc_palette())}


def _from_colours(path: Path, pixels: np.ndarray) -> np.ndarray:
    lookup = _palette_index()  # built once, not for every mask of every epoch
    flat = pixels.reshape(-1, 3)
    colours, inverse = np.unique(flat, axis=0, return_inverse=True)
    indices = []
    for colour in map(tuple, colours.tolist()):
        if colour not in lookup:
            raise DataError(f"{path}: colour {colour} is not a class colour of the VOC palette")
        indices.append(lookup[colour])
    return np.asarray(indices)[inverse.reshape(-1)].reshape(pixels.shape[:2])


def load_segmentation_data(source: str | None, *, transform, image_size: int, seed: int) -> TaskData:
    """``source``: None/``synthetic[:opts]``, an ``images/`` + ``masks/`` folder or a VOC folder."""
    options = parse_synthetic(source, SYNTHETIC)
    if options is not None:
        return synthetic_data(transform=transform, size=image_size, **options)
    if str(source).lower().endswith(".json"):
        return _coco(Path(source).expanduser(), transform, image_size, seed)
    root = require_folder(source)
    if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
        return _voc(root, transform, image_size, seed)
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return _folders(root, transform, image_size, seed)
    raise DataError(f"{root}: not segmentation data: expected images/ + masks/ (with classes.txt), a VOC folder "
                    "(JPEGImages/, SegmentationClass/) or a COCO instances .json")


def synthetic_data(*, transform, size: int, train: int, val: int, test: int, seed: int) -> TaskData:
    """Shapes scenes with their masks, drawn at the training size."""
    import torch

    def make(offset: int, count: int) -> TensorListDataset:
        scenes = [shapes_scene(seed, offset + i, size) for i in range(count)]
        return TensorListDataset([transform(image) for image, _ in scenes],
                                 [torch.from_numpy(mask.astype(np.int64)) for _, mask in scenes],
                                 images=[image for image, _ in scenes])

    sets = synthetic_splits(make, train=train, val=val, test=test)
    return TaskData(*sets, head_config={"labels": list(SHAPES)},
                    description=f"synthetic shapes with masks: {len(SHAPES)} classes, {train}/{val}/{test} images")


def _dataset(pairs, labels, transform, size: int, *, palette: bool = False) -> ImageDataset:
    for image, mask in pairs:  # sizes checked when read: a wrong one fails before training, naming both files
        with Image.open(mask) as opened:
            if opened.size != image_size(image):
                raise DataError(f"{mask}: mask is {opened.size[0]}x{opened.size[1]}, its image {image.name} is "
                                f"{image_size(image)[0]}x{image_size(image)[1]}")
    return ImageDataset([i for i, _ in pairs], MaskTargets([m for _, m in pairs], size, len(labels), palette=palette),
                        transform)


def _folders(root: Path, transform, size: int, seed: int) -> TaskData:
    classes = root / "classes.txt"
    if not classes.is_file():
        raise DataError(f"{root}: classes.txt is missing (one class name per line, background first)")
    labels = read_class_names(classes)
    split_dirs = {s: root / "images" / s for s in SPLITS if (root / "images" / s).is_dir()}
    if "train" in split_dirs:
        splits = {s: paired_files(sorted(p for p in d.iterdir() if is_image_file(p)), root / "masks" / s)
                  for s, d in split_dirs.items()}
        if "val" not in splits:
            splits["train"], splits["val"] = seeded_split(splits["train"], seed)
    else:
        pairs = paired_files(sorted(p for p in (root / "images").iterdir() if is_image_file(p)), root / "masks")
        splits = dict(zip(("train", "val"), seeded_split(pairs, seed)))
    return _task_data(splits, labels, transform, size, f"images/ + masks/ {root}")


def _voc(root: Path, transform, size: int, seed: int) -> TaskData:
    labels = read_class_names(root / "classes.txt") if (root / "classes.txt").is_file() else list(VOC_CLASSES)
    lists = root / "ImageSets" / "Segmentation"

    def pairs_of(stems: list[str]) -> list[tuple[Path, Path]]:
        images = []
        for stem in stems:
            found = [p for p in (root / "JPEGImages").glob(f"{stem}.*") if is_image_file(p)]
            if not found:
                raise DataError(f"{lists}: {stem!r} has no image in JPEGImages/")
            images.append(found[0])
        return paired_files(images, root / "SegmentationClass")

    if (lists / "train.txt").is_file():
        splits = {s: pairs_of((lists / f"{s}.txt").read_text().split()) for s in SPLITS if (lists / f"{s}.txt").is_file()}
        if "val" not in splits:
            splits["train"], splits["val"] = seeded_split(splits["train"], seed)
    else:
        stems = sorted(p.stem for p in (root / "SegmentationClass").glob("*.png"))
        splits = dict(zip(("train", "val"), seeded_split(pairs_of(stems), seed)))
    return _task_data(splits, labels, transform, size, f"VOC {root}", palette=True)


class CocoMasks:
    """Semantic masks painted from COCO instance annotations (polygons or RLE), at the training size."""

    def __init__(self, masks: list[np.ndarray]) -> None:
        self.masks = masks

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, index: int):
        import torch

        return torch.from_numpy(self.masks[index].astype(np.int64))


def _coco(path: Path, transform, size: int, seed: int) -> TaskData:
    """A COCO instances file: each image's objects painted into one mask (class = category; crowds ignored)."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    if not path.is_file():
        raise DataError(f"{path}: data file does not exist")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(path))
    except (ValueError, KeyError, TypeError, RecursionError, AssertionError) as exc:
        raise DataError(f"{path}: not a readable COCO instances file ({type(exc).__name__}: {exc})") from None
    ids = sorted(coco.getCatIds())
    labels = ["background", *(coco.cats[i]["name"] for i in ids)]
    index_of = {cid: k + 1 for k, cid in enumerate(ids)}
    items = []
    for image_id in sorted(coco.getImgIds()):
        info = coco.imgs[image_id]
        image = next((p for p in (path.parent / info["file_name"], path.parent / "images" / info["file_name"])
                      if p.is_file()), None)
        if image is None:
            raise DataError(f"{path}: image {info['file_name']!r} is not beside it or in images/")
        mask = np.zeros((int(info["height"]), int(info["width"])), dtype=np.uint8)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            if ann.get("category_id") not in index_of:
                raise DataError(f"{path}: annotation {ann.get('id')} has category id {ann.get('category_id')!r}, "
                                "which 'categories' does not declare")
            try:
                pixels = coco.annToMask(ann).astype(bool)
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                raise DataError(f"{path}: annotation {ann.get('id')}: unreadable segmentation ({exc})") from None
            mask[pixels] = IGNORE if ann.get("iscrowd") else index_of[ann["category_id"]]
        items.append((image, np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))))
    if not items:
        raise DataError(f"{path}: holds no images")
    splits = dict(zip(("train", "val"), seeded_split(items, seed)))
    sets = {s: ImageDataset([i for i, _ in chosen], CocoMasks([m for _, m in chosen]), transform)
            for s, chosen in splits.items() if chosen}
    return TaskData(train=sets.get("train"), val=sets.get("val"), head_config={"labels": labels},
                    description=f"COCO {path}: {len(labels)} classes, {len(splits['train'])}/{len(splits['val'])}/0 "
                                "train/val/test images")


def _task_data(splits, labels, transform, size, what: str, *, palette: bool = False) -> TaskData:
    if not splits.get("train"):
        raise DataError(f"{what}: the training split has no images")
    sets = {s: _dataset(splits[s], labels, transform, size, palette=palette) if splits.get(s) else None
            for s in SPLITS}
    counts = "/".join(str(len(splits.get(s) or [])) for s in SPLITS)
    return TaskData(train=sets["train"], val=sets["val"], test=sets["test"], head_config={"labels": labels},
                    description=f"{what}: {len(labels)} classes, {counts} train/val/test images")

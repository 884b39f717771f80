"""Real labelled images that install offline, written as folders loradex reads.

- Fashion-MNIST (Debian ``dataset-fashion-mnist``, IDX files): an ImageFolder with a fixed
  10,000-image train subset and 2,000-image val subset of the 60k training set (seeded), and
  the full 10,000-image test set.
- scikit-learn's digits (1,797 8x8 scans): an ImageFolder, a stratified 70/30 train/val split
  (seed 0), the val images doubling as the test set.
- Fashion scenes (``write_fashion_scenes``): Fashion-MNIST items pasted on 128 px canvases at
  32-64 px; a mask and exact boxes from their own pixels: one folder that both segmentation
  (images/ + masks/ + classes.txt) and detection (YOLO: labels/ + data.yaml) read.
- deepforest's aerial trees (PyPI ``deepforest`` 2.1.0, installed with ``--no-deps``): a Pascal
  VOC folder in LabelImg's layout (one folder, each image beside its XML; loradex splits it 80/20
  with the seed). The two large crops are tiled into 400 px tiles (a box kept on the tile that
  holds most of it, clipped), beside the two 400 px images OSBS_029 and SOAP_061. Every box is a
  ``Tree`` (SOAP_061's Alive/Dead included). A split by source image instead (train on one site,
  validate on another) was tried first: with 37 training tiles every model overfits to the
  training site (val mAP@.5 about 0.01 while the training loss falls).

Each ``write_*`` returns the folder, and does nothing when it is already complete.
"""

from __future__ import annotations

import gzip
import importlib.util
import struct
from pathlib import Path

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
TILE = 400


def read_idx(path: Path):
    """An IDX file (gzip) as a numpy array."""
    import numpy as np

    with gzip.open(path, "rb") as handle:
        data = handle.read()
    zero, dtype, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _done(root: Path) -> bool:
    return (root / ".complete").is_file()


def _write_images(root: Path, split: str, images, labels, names) -> None:
    from PIL import Image

    for index, (pixels, label) in enumerate(zip(images, labels)):
        folder = root / split / names[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{split}_{index:05d}.png")


def write_fashion(root: Path, *, train: int = 10_000, val: int = 2_000, seed: int = 0) -> Path:
    """Fashion-MNIST as ``root/{train,val,test}/CLASS/*.png``."""
    import numpy as np

    if _done(root):
        return root
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        raise SystemExit(f"{FASHION_DIR}: Fashion-MNIST is missing; apt-get install dataset-fashion-mnist")
    images = read_idx(FASHION_DIR / "train-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_DIR / "train-labels-idx1-ubyte.gz")
    order = np.random.default_rng(seed).permutation(len(images))
    _write_images(root, "train", images[order[:train]], labels[order[:train]], FASHION_CLASSES)
    _write_images(root, "val", images[order[train:train + val]], labels[order[train:train + val]], FASHION_CLASSES)
    _write_images(root, "test", read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz"),
                  read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz"), FASHION_CLASSES)
    (root / ".complete").touch()
    return root


def write_digits(root: Path, *, seed: int = 0) -> Path:
    """scikit-learn's digits as ``root/{train,val,test}/DIGIT/*.png`` (test = val)."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if _done(root):
        return root
    digits = load_digits()
    pixels = (digits.images * (255 / 16)).round().astype(np.uint8)
    train_x, val_x, train_y, val_y = train_test_split(pixels, digits.target, test_size=0.3, random_state=seed,
                                                      stratify=digits.target)
    names = [str(d) for d in range(10)]
    _write_images(root, "train", train_x, train_y, names)
    _write_images(root, "val", val_x, val_y, names)
    _write_images(root, "test", val_x, val_y, names)
    (root / ".complete").touch()
    return root


def deepforest_data() -> Path:
    """The folder of deepforest's sample images and annotations (without importing deepforest)."""
    spec = importlib.util.find_spec("deepforest")
    if spec is None or spec.origin is None:
        raise SystemExit("deepforest is not installed: uv pip install --no-deps deepforest==2.1.0")
    return Path(spec.origin).parent / "data"


def _voc_xml(filename: str, width: int, height: int, boxes) -> str:
    objects = "".join(
        f"  <object>\n    <name>Tree</name>\n    <pose>Unspecified</pose>\n    <truncated>0</truncated>\n"
        f"    <difficult>0</difficult>\n    <bndbox>\n      <xmin>{x1}</xmin>\n      <ymin>{y1}</ymin>\n"
        f"      <xmax>{x2}</xmax>\n      <ymax>{y2}</ymax>\n    </bndbox>\n  </object>\n"
        for x1, y1, x2, y2 in boxes)
    return (f"<annotation>\n  <folder>images</folder>\n  <filename>{filename}</filename>\n  <size>\n"
            f"    <width>{width}</width>\n    <height>{height}</height>\n    <depth>3</depth>\n  </size>\n"
            f"  <segmented>0</segmented>\n{objects}</annotation>\n")


def _boxes(xml: Path) -> list[tuple[int, int, int, int]]:
    from xml.etree import ElementTree

    root = ElementTree.parse(xml).getroot()
    return [tuple(int(float(o.findtext(f"bndbox/{k}"))) for k in ("xmin", "ymin", "xmax", "ymax"))
            for o in root.findall("object")]


def _tiles(image, boxes, stem: str):
    """400 px tiles of ``image`` with the boxes whose larger part lies on them, clipped."""
    width, height = image.size
    for top in range(0, height, TILE):
        for left in range(0, width, TILE):
            right, bottom = min(left + TILE, width), min(top + TILE, height)
            if right - left < TILE // 2 or bottom - top < TILE // 2:
                continue
            kept = []
            for x1, y1, x2, y2 in boxes:
                cx1, cy1, cx2, cy2 = max(x1, left), max(y1, top), min(x2, right), min(y2, bottom)
                if cx2 - cx1 < 2 or cy2 - cy1 < 2:
                    continue
                if (cx2 - cx1) * (cy2 - cy1) >= 0.5 * (x2 - x1) * (y2 - y1):
                    kept.append((cx1 - left, cy1 - top, cx2 - left, cy2 - top))
            yield f"{stem}_{top}_{left}", image.crop((left, top, right, bottom)), kept


def write_trees(root: Path) -> Path:
    """deepforest's trees as a LabelImg-style VOC folder ``root/`` (see the module doc)."""
    from PIL import Image

    if _done(root):
        return root
    source = deepforest_data()
    items = [("2019_YELL_2_528000_4978000_image_crop2", True), ("2019_YELL_2_541000_4977000_image_crop", True),
             ("OSBS_029", False), ("SOAP_061", False)]
    root.mkdir(parents=True, exist_ok=True)
    for stem, tile in items:
        image = Image.open(source / f"{stem}.png").convert("RGB")
        boxes = _boxes(source / f"{stem}.xml")
        pieces = _tiles(image, boxes, stem) if tile else [(stem, image, boxes)]
        for name, piece, kept in pieces:
            piece.save(root / f"{name}.png")
            (root / f"{name}.xml").write_text(_voc_xml(f"{name}.png", *piece.size, kept), encoding="utf-8")
    (root / ".complete").touch()
    return root


SCENE = {"size": 128, "train": 1000, "val": 300, "items": (1, 3), "scale": (32, 64), "threshold": 40}
"""Fashion scenes: 128 px canvases holding 1-3 items each, scaled from 28 px to 32-64 px."""
VISIBLE = 0.3
"""An item left with less than this share of its pixels visible (covered by later items) gets no box."""


def fashion_scene(rng, items, labels, *, size: int, scale: tuple[int, int], threshold: int):
    """One canvas (RGB, textured noise) with ``items`` pasted at random places and scales, tinted.

    Returns (image, mask, boxes): the mask holds class + 1 where an item's own pixels are brighter
    than ``threshold`` (0: background); a box ``(class, x0, y0, x1, y1)`` in pixels spans each
    item's pixels, for items that stay at least :data:`VISIBLE` visible.
    """
    import numpy as np
    from PIL import Image

    base = rng.integers(0, 70, 3)
    canvas = np.clip(base + rng.normal(0, 18, (size, size, 3)), 0, 255)
    mask = np.zeros((size, size), dtype=np.uint8)
    owner = np.full((size, size), -1, dtype=np.int64)
    placed = []
    for number, (pixels, label) in enumerate(zip(items, labels)):
        side = int(rng.integers(scale[0], scale[1] + 1))
        item = np.asarray(Image.fromarray(pixels).resize((side, side), Image.BILINEAR), dtype=np.float64)
        y, x = (int(v) for v in rng.integers(0, size - side + 1, 2))
        tint = rng.uniform(0.55, 1.0, 3)
        body = item > threshold
        region = canvas[y:y + side, x:x + side]
        region[body] = (item[..., None] * tint)[body]
        mask[y:y + side, x:x + side][body] = int(label) + 1
        owner[y:y + side, x:x + side][body] = number
        rows, cols = np.nonzero(body)
        if rows.size:
            placed.append((number, int(label), x + int(cols.min()), y + int(rows.min()), x + int(cols.max()) + 1,
                           y + int(rows.max()) + 1, int(rows.size)))
    boxes = [(label, x0, y0, x1, y1) for number, label, x0, y0, x1, y1, area in placed
             if (owner == number).sum() >= VISIBLE * area]
    return Image.fromarray(canvas.astype(np.uint8)), mask, boxes


def write_fashion_scenes(root: Path, *, seed: int = 0) -> Path:
    """Fashion-MNIST items on canvases, for segmentation AND detection in one folder:
    ``images/{train,val}``, ``masks/{train,val}`` (class index per pixel) with ``classes.txt``
    (background + the 10 classes), and ``labels/{train,val}`` (YOLO boxes) with ``data.yaml``
    (the 10 classes).

    Train items come from Fashion-MNIST's training set, val items from its test set (no item in both).
    """
    import numpy as np
    from PIL import Image

    if _done(root):
        return root
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        raise SystemExit(f"{FASHION_DIR}: Fashion-MNIST is missing; apt-get install dataset-fashion-mnist")
    sources = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
               "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
    rng = np.random.default_rng(seed)
    size = SCENE["size"]
    for split, (images_file, labels_file) in sources.items():
        images, labels = read_idx(FASHION_DIR / images_file), read_idx(FASHION_DIR / labels_file)
        order = iter(rng.permutation(len(images)))
        for folder in ("images", "masks", "labels"):
            (root / folder / split).mkdir(parents=True, exist_ok=True)
        for index in range(SCENE[split]):
            count = int(rng.integers(SCENE["items"][0], SCENE["items"][1] + 1))
            picked = [next(order) for _ in range(count)]
            image, mask, boxes = fashion_scene(rng, images[picked], labels[picked], size=size,
                                               scale=SCENE["scale"], threshold=SCENE["threshold"])
            stem = f"{split}_{index:05d}"
            image.save(root / "images" / split / f"{stem}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{stem}.png")
            lines = [f"{label} {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} {(x1 - x0) / size:.6f} "
                     f"{(y1 - y0) / size:.6f}" for label, x0, y0, x1, y1 in boxes]
            (root / "labels" / split / f"{stem}.txt").write_text("".join(f"{line}\n" for line in lines))
    (root / "classes.txt").write_text("\n".join(("background", *FASHION_CLASSES)) + "\n", encoding="utf-8")
    (root / "data.yaml").write_text("names: [" + ", ".join(FASHION_CLASSES) + "]\n", encoding="utf-8")
    (root / ".complete").touch()
    return root

"""Pascal VOC XML reader (what LabelImg writes by default, and the VOC datasets' layout).

One XML file per image: ``<annotation>`` with ``<filename>``, ``<size><width>/<height>``, and an
``<object>`` per box with ``<name>`` and ``<bndbox><xmin>/<ymin>/<xmax>/<ymax>`` in pixels
(a box may touch the image's far edge: VOC counts pixels from 1). Layouts, first match wins:

- ``Annotations/*.xml`` beside ``JPEGImages/`` (the VOC datasets); splits from
  ``ImageSets/Main/{train,val,test}.txt`` when present;
- ``{train,valid,val,test}/`` folders, each holding images and their XML side by side;
- one folder of images with their XML side by side (LabelImg's default), split 80/20 with the seed.

Class names come from ``classes.txt``, ``labels.txt`` or ``predefined_classes.txt`` (LabelImg's
own list), one per line; without one, from the training XML, sorted. Checked on load, each a
DataError naming the XML file and, for an object, its index and name: malformed XML, a missing
field, a number that is not one, a box outside its image or empty, a class not in the list, an
image that does not exist, and a ``<size>`` that disagrees with the image file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple
from xml.etree import ElementTree

from loradex.core.data import (
    IMAGE_EXTENSIONS, SPLITS, find_in, find_split_folders, image_size, read_class_names, seeded_split,
)
from loradex.core.errors import DataError
from loradex.core.task import ImageTransform, TaskData

from .targets import make_target, split_data

NAME_FILES = ("classes.txt", "labels.txt", "predefined_classes.txt")
TOLERANCE = 1.0
"""Pixels a box may stick out of the image (VOC's 1-based coordinates reach width, not width - 1)."""


def is_voc_folder(root: Path) -> bool:
    """Whether ``root`` holds Pascal VOC XML (an Annotations folder, or XML files at the top or in split folders)."""
    if (root / "Annotations").is_dir():
        return True
    if any(root.glob("*.xml")):
        return True
    return any(any(folder.glob("*.xml")) for folder in find_split_folders(root).values())


def read_names(root: Path) -> tuple[list[str] | None, str]:
    """Declared class names and where they came from (None when no list exists)."""
    for name in NAME_FILES:
        path = root / name
        if path.is_file():
            return read_class_names(path), str(path)
    return None, "the training annotations"


class VocObject(NamedTuple):
    """One checked ``<object>``: class name and pixel xyxy box (clamped into the image)."""

    name: str
    box: tuple[float, float, float, float]


class VocImage(NamedTuple):
    """One checked XML file: where it is, its image, the image's size and its objects."""

    xml: Path
    image: Path
    width: int
    height: int
    objects: list[VocObject]


def _text(element: ElementTree.Element, path: str, where: str) -> str:
    found = element.find(path)
    if found is None or found.text is None or not found.text.strip():
        raise DataError(f"{where}: missing <{path.replace('/', '><')}>")
    return found.text.strip()


def _number(element: ElementTree.Element, path: str, where: str) -> float:
    text = _text(element, path, where)
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: <{path.rsplit('/', 1)[-1]}> is {text!r}, not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: <{path.rsplit('/', 1)[-1]}> is {text!r}, not a finite number")
    return value


def read_xml(xml: Path, *, root: Path, image_folders: list[Path]) -> VocImage:
    """The image, its size and its checked objects, from one VOC XML file."""
    try:
        tree = ElementTree.parse(xml)
    except ElementTree.ParseError as exc:
        line = exc.position[0] if exc.position else "?"
        raise DataError(f"{xml}:{line}: not well-formed XML ({exc.msg if hasattr(exc, 'msg') else exc})") from None
    except OSError as exc:
        raise DataError(f"{xml}: cannot be read ({exc.strerror or exc})") from None
    annotation = tree.getroot()
    if annotation.tag != "annotation":
        raise DataError(f"{xml}: the root element is <{annotation.tag}>, not a VOC <annotation>")
    image = _find_image(xml, annotation, root=root, folders=image_folders)
    width, height = image_size(image)
    if annotation.find("size") is not None:
        declared = (_number(annotation, "size/width", str(xml)), _number(annotation, "size/height", str(xml)))
        if declared != (width, height):
            raise DataError(f"{xml}: <size> says {declared[0]:g}x{declared[1]:g}, but {image.name} is {width}x{height}")
    objects = []
    for index, obj in enumerate(annotation.findall("object")):
        name_element = obj.find("name")
        name = name_element.text.strip() if name_element is not None and name_element.text else ""
        where = f"{xml}: object {index}" + (f" ({name!r})" if name else "")
        if not name:
            raise DataError(f"{where}: missing <name>")
        box = tuple(_number(obj, f"bndbox/{k}", where) for k in ("xmin", "ymin", "xmax", "ymax"))
        x1, y1, x2, y2 = box
        if x2 <= x1 or y2 <= y1:
            raise DataError(f"{where}: box {x1:g},{y1:g},{x2:g},{y2:g} is empty (xmax must exceed xmin, ymax ymin)")
        if min(x1, y1) < -TOLERANCE or x2 > width + TOLERANCE or y2 > height + TOLERANCE:
            raise DataError(f"{where}: box {x1:g},{y1:g},{x2:g},{y2:g} lies outside the {width}x{height} image "
                            f"{image.name}")
        objects.append(VocObject(name, (max(x1, 0.0), max(y1, 0.0), min(x2, width), min(y2, height))))
    return VocImage(xml, image, width, height, objects)


def _find_image(xml: Path, annotation: ElementTree.Element, *, root: Path, folders: list[Path]) -> Path:
    candidates = [xml.parent, *folders]
    filename = annotation.findtext("filename")
    if filename and filename.strip():
        found = find_in(filename.strip(), candidates, root=root, where=str(xml))
        if found is not None:
            return found
    for folder in candidates:  # LabelImg keeps the name it saw; the file may since have moved beside the XML
        for extension in sorted(IMAGE_EXTENSIONS):
            for candidate in (folder / f"{xml.stem}{extension}", folder / f"{xml.stem}{extension.upper()}"):
                if candidate.is_file():
                    return find_in(candidate.name, [folder], root=root, where=str(xml)) or candidate
    named = f" {filename.strip()!r}" if filename and filename.strip() else ""
    raise DataError(f"{xml}: image{named} not found beside it or in {', '.join(str(f) for f in folders) or xml.parent}")


def _split_lists(root: Path) -> dict[str, list[str]]:
    main = root / "ImageSets" / "Main"
    found = {}
    for split, aliases in (("train", ("train",)), ("val", ("val", "valid")), ("test", ("test",))):
        for alias in aliases:
            path = main / f"{alias}.txt"
            if path.is_file():
                found[split] = [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
                break
    return found


def find_annotation_files(root: Path) -> tuple[dict[str, list[Path]], list[Path], str]:
    """Split → XML files, the folders images may live in, and a description of the layout."""
    if (root / "Annotations").is_dir():
        annotations = root / "Annotations"
        folders = [root / "JPEGImages"] if (root / "JPEGImages").is_dir() else []
        lists = _split_lists(root)
        if lists:
            splits = {}
            for split, stems in lists.items():
                files = []
                for stem in stems:
                    xml = annotations / f"{stem}.xml"
                    if not xml.is_file():
                        raise DataError(f"{root / 'ImageSets' / 'Main' / (split + '.txt')}: lists {stem!r}, "
                                        f"but {xml} does not exist")
                    files.append(xml)
                splits[split] = files
            return splits, folders, "Annotations/ with ImageSets/Main lists"
        return {"all": sorted(annotations.glob("*.xml"))}, folders, "Annotations/"
    split_folders = find_split_folders(root)
    if split_folders:
        return ({split: sorted(folder.glob("*.xml")) for split, folder in split_folders.items()}, [],
                "folders " + "/".join(split_folders[s].name for s in SPLITS if s in split_folders))
    return {"all": sorted(root.glob("*.xml"))}, [], "one folder"


def load_voc(root: Path, *, transform: ImageTransform, seed: int) -> TaskData:
    """A Pascal VOC folder; see the module doc for layouts and checks."""
    declared, names_source = read_names(root)
    files, folders, how = find_annotation_files(root)
    read = {split: [read_xml(xml, root=root, image_folders=folders) for xml in xmls] for split, xmls in files.items()}
    if not any(read.values()):
        raise DataError(f"{root}: no VOC XML annotation files")
    if "all" in read:
        read = dict(zip(("train", "val"), seeded_split(read["all"], seed)))
        how += f" split 80/20 with seed {seed}"
    if not read.get("train"):
        raise DataError(f"{root}: has {how} but no training annotations")
    names = declared or sorted({o.name for item in read["train"] for o in item.objects})
    if not names:
        raise DataError(f"{root}: the training annotations hold no objects, so there are no classes")
    index = {name: i for i, name in enumerate(names)}
    splits: dict[str, list[tuple[Path, dict]]] = {}
    for split, items in read.items():
        chosen = []
        for item in items:
            for number, obj in enumerate(item.objects):
                if obj.name not in index:
                    raise DataError(f"{item.xml}: object {number} ({obj.name!r}): class not in {names_source} "
                                    f"({', '.join(names)})")
            chosen.append((item.image, make_target([o.box for o in item.objects],
                                                   [index[o.name] for o in item.objects], item.width, item.height)))
        splits[split] = chosen
    return split_data(splits, names, f"Pascal VOC {root} ({how})", transform)


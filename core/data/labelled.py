"""Readers of the two simplest labelled-image layouts, for built-in tasks and plugin authors alike.

- :func:`image_folder`: ``root/CLASS/*.jpg`` (or ``root/{train,val,test}/CLASS/*``) → class labels;
- :func:`labels_csv`: images beside a CSV of ``file,label`` rows (and an optional ``split``
  column) → any per-image value.

Both hold out a seeded validation split when the data has none, check every image's header,
and name the file and line of any fault.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from .images import image_size, is_image_file
from .paths import find_in
from .splits import SPLITS, describe_counts, find_split_folders, seeded_split, split_of


@dataclass
class Labelled:
    """``(image path, label)`` items per split, and how they were read."""

    splits: dict[str, list[tuple[Path, Any]]]
    how: str
    labels: list[str] = field(default_factory=list)
    """Class names (image folders); empty for other labels."""

    @property
    def counts(self) -> str:
        """``train/val/test`` item counts."""
        return describe_counts(self.splits)


def _class_folders(root: Path) -> dict[str, list[Path]]:
    classes: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in folder.rglob("*") if is_image_file(p))
        if not files:
            raise DataError(f"{folder}: class folder has no images")
        classes[folder.name] = files
    return classes


def image_folder(root: Path, *, seed: int) -> Labelled:
    """``root/{train,val,test}/CLASS/*`` or ``root/CLASS/*`` (then 80/20 per class with ``seed``).

    Labels are the class folder names, sorted; a class that appears only in val/test is an error.
    """
    splits = find_split_folders(root)
    if splits:
        if "train" not in splits:
            raise DataError(f"{root}: has {', '.join(p.name for p in splits.values())} but no train/ folder")
        per_split = {name: _class_folders(path) for name, path in splits.items()}
        labels = sorted(per_split["train"])
        for name, classes in per_split.items():
            extra = sorted(set(classes) - set(labels))
            if extra:
                raise DataError(f"{splits[name]}: classes {extra} are not in {splits['train']}")
        items = {name: [(p, labels.index(c)) for c, files in classes.items() for p in files]
                 for name, classes in per_split.items()}
        how = "folders " + "/".join(splits[s].name for s in SPLITS if s in splits)
    else:
        classes = _class_folders(root)
        labels = sorted(classes)
        everything = [(p, labels.index(c)) for c in labels for p in classes[c]]
        train, val = seeded_split(everything, seed, stratify=lambda item: item[1])
        items = {"train": train, "val": val}
        how = f"one folder split 80/20 per class with seed {seed}"
    if len(labels) < 2:
        raise DataError(f"{root}: need at least 2 class folders, found {len(labels)}")
    for split_items in items.values():
        for path, _ in split_items:
            image_size(path)
    return Labelled(splits=items, how=how, labels=labels)


def labels_csv(root: Path, *, file: str = "labels.csv", parse: Callable[[str], Any] = float,
               column: str = "label", seed: int = 0) -> Labelled:
    """Images in ``root`` labelled by ``root/file``: a header, then ``file,label[,split]`` rows.

    ``parse`` turns the label text into a value (a DataError naming the line if it raises);
    a ``split`` column (train/val/test) decides the splits, else 20% is held out with ``seed``.
    File names are relative to ``root`` and may not lead out of it.
    """
    path = root / file
    if not path.is_file():
        raise DataError(f"{root}: no {file} (a CSV with a header and 'file,{column}' rows)")
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    if not rows:
        raise DataError(f"{path}: empty; expected a header and 'file,{column}' rows")
    header = [h.strip().lower() for h in rows[0]]
    if "file" not in header or column not in header:
        raise DataError(f"{path}:1: the header must name the columns 'file' and '{column}', found {rows[0]}")
    at = {name: header.index(name) for name in header}
    items: dict[str, list[tuple[Path, Any]]] = {}
    unsplit: list[tuple[Path, Any]] = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path}:{number}"
        if len(row) < len(header):
            raise DataError(f"{where}: expected {len(header)} columns ({', '.join(header)}), found {len(row)}")
        image = find_in(row[at["file"]].strip(), [root], root=root, where=where)
        if image is None:
            raise DataError(f"{where}: image {row[at['file']].strip()!r} does not exist in {root}")
        image_size(image)
        try:
            value = parse(row[at[column]].strip())
        except (ValueError, TypeError) as exc:
            raise DataError(f"{where}: {column} {row[at[column]]!r} is not valid ({exc})") from None
        if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
            raise DataError(f"{where}: {column} {row[at[column]]!r} is not a finite number")
        if "split" in at and row[at["split"]].strip():
            split = split_of(row[at["split"]].strip())
            if split is None:
                raise DataError(f"{where}: split {row[at['split']]!r} is not train, val or test")
            items.setdefault(split, []).append((image, value))
        else:
            unsplit.append((image, value))
    if unsplit:
        if items:
            raise DataError(f"{path}: some rows name a split and some do not; name one for every row or for none")
        train, val = seeded_split(unsplit, seed)
        items = {"train": train, "val": val}
        how = f"{file} split 80/20 with seed {seed}"
    else:
        how = f"{file} with a split column"
    if not items.get("train"):
        raise DataError(f"{path}: no training rows")
    return Labelled(splits=items, how=how)

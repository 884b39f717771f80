"""Train/val/test splits: the names every reader accepts and the one seeded split they all use."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..errors import DataError

T = TypeVar("T")

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
"""Folder and file names read as each split."""
VAL_FRACTION = 0.2
"""Share of the data held out for validation when a dataset has no validation split of its own."""
SPLIT_FILE = re.compile(r"(?:^|[_\-.])(train|val|valid|validation|test)(\d*)$", re.IGNORECASE)
"""Annotation file stems read as a split: ``train``, ``val2017``, ``instances_val2017``, ``person_keypoints_train``."""


def split_of(alias: str) -> str | None:
    """``valid`` → ``val``; None for a name that is not a split."""
    return next((split for split, names in SPLIT_ALIASES.items() if alias.lower() in names), None)


def val_count(total: int, fraction: float = VAL_FRACTION) -> int:
    """How many of ``total`` items (or groups) go to validation: at least one when there are two or more."""
    return max(1, round(total * fraction)) if total > 1 else 0


def seeded_split(items: Sequence[T], seed: int, *, fraction: float = VAL_FRACTION,
                 group: Callable[[T], Hashable] | None = None,
                 stratify: Callable[[T], Hashable] | None = None) -> tuple[list[T], list[T]]:
    """(train, val): a seeded ``fraction`` of ``items`` held out, the same on every machine.

    ``group`` keeps items with one key together (every person of one image); ``stratify``
    holds out the fraction of each class separately. Without either, the items are shuffled.
    """
    rng = random.Random(seed)
    if stratify is not None:
        by_class: dict[Hashable, list[T]] = {}
        for item in items:
            by_class.setdefault(stratify(item), []).append(item)
        train: list[T] = []
        val: list[T] = []
        for key in sorted(by_class, key=str):
            members = list(by_class[key])
            rng.shuffle(members)
            n = val_count(len(members), fraction)
            val += members[:n]
            train += members[n:]
        return train, val
    if group is not None:
        keys = sorted({group(item) for item in items}, key=str)
        rng.shuffle(keys)
        held = set(keys[:val_count(len(keys), fraction)])
        return [i for i in items if group(i) not in held], [i for i in items if group(i) in held]
    order = list(items)
    rng.shuffle(order)
    n = val_count(len(order), fraction)
    return order[n:], order[:n]


def find_split_folders(root: Path, pattern: str = "{}") -> dict[str, Path]:
    """Split → ``root/pattern.format(alias)`` for the first alias of each split that is a folder.

    ``pattern`` is ``"{}"`` for ImageFolder (``root/train``), ``"images/{}"`` or ``"{}/images"``
    for YOLO.
    """
    found = {}
    for split, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            folder = root / pattern.format(alias)
            if folder.is_dir():
                found[split] = folder
                break
    return found


def find_split_files(root: Path, suffix: str = ".json") -> dict[str, tuple[Path, str]]:
    """Split → (annotation file, the split's folder name such as ``val2017``), in ``root`` or ``root/annotations``.

    Two files for one split are an error naming both.
    """
    found: dict[str, tuple[Path, str]] = {}
    for folder in (root, root / "annotations"):
        for path in sorted(folder.glob(f"*{suffix}")) if folder.is_dir() else ():
            match = SPLIT_FILE.search(path.stem)
            if not match:
                continue
            split = split_of(match.group(1))
            assert split is not None
            if split in found:
                raise DataError(f"{root}: two {split} annotation files, {found[split][0].name} and {path.name}")
            found[split] = (path, match.group(1) + match.group(2))
    return found


def describe_counts(splits: dict[str, Sequence[Any]]) -> str:
    """``"800/200/0"``: items per train/val/test split."""
    return "/".join(str(len(splits.get(s) or [])) for s in SPLITS)

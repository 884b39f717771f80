"""YOLO folders as detection data: the layouts, names and checks are :mod:`loradex.core.data.yolo`'s
(shared with grounding); this module turns their boxes into detection targets and splits."""

from __future__ import annotations

from pathlib import Path

from loradex.core.data import SPLITS, seeded_split
from loradex.core.data.yolo import find_image_folders, read_folder, read_names
from loradex.core.errors import DataError
from loradex.core.task import ImageTransform, TaskData

from .targets import split_data, targets_of


def load_yolo(root: Path, *, transform: ImageTransform, seed: int) -> TaskData:
    """A YOLO folder; see the module doc for layouts and checks."""
    names, names_source = read_names(root)
    folders = find_image_folders(root)
    if "all" in folders:
        splits = dict(zip(("train", "val"), seeded_split(targets_of(read_folder(folders["all"], names, names_source)), seed)))
        how = f"one images/ folder split 80/20 with seed {seed}"
    else:
        if "train" not in folders:
            raise DataError(f"{root}: has {', '.join(str(f) for f in folders.values())} but no train images")
        splits = {split: targets_of(read_folder(folder, names, names_source)) for split, folder in folders.items()}
        if "val" not in splits:
            splits["train"], splits["val"] = seeded_split(splits["train"], seed)
        how = "folders " + "/".join(str(folders[s].relative_to(root)) if folders[s].is_relative_to(root) else str(folders[s])
                                    for s in SPLITS if s in folders)

    return split_data(splits, names, f"YOLO {root} ({how})", transform)

"""The one data layer every task uses, built in or from a plugin.

Images (:mod:`.images`: decoding with 16-bit and bomb checks), datasets (:mod:`.datasets`),
splits (:mod:`.splits`: the split names and the one seeded split), paths (:mod:`.paths`: files
that must stay inside the data folder), synthetic sources (:mod:`.synthetic`), COCO JSON
(:mod:`.coco`), YOLO txt folders and ``classes.txt`` (:mod:`.yolo`), the pixel boxes both give
(:mod:`.boxes`) and the simple labelled layouts (:mod:`.labelled`: ImageFolder, labels CSV).
"""

from .annotations import paired_files, read_class_names
from .datasets import ImageDataset, TensorListDataset
from .images import IMAGE_EXTENSIONS, image_size, is_image_file, open_image, to_rgb, verify_image
from .labelled import Labelled, image_folder, labels_csv
from .paths import find_in, inside, require_folder, require_path
from .splits import (
    SPLIT_ALIASES,
    SPLITS,
    VAL_FRACTION,
    describe_counts,
    find_split_files,
    find_split_folders,
    seeded_split,
    split_of,
)
from .synthetic import SPLIT_OFFSETS, SYNTHETIC, parse_synthetic, synthetic_splits

__all__ = [
    "IMAGE_EXTENSIONS", "ImageDataset", "Labelled", "SPLITS", "SPLIT_ALIASES", "SPLIT_OFFSETS", "SYNTHETIC",
    "TensorListDataset", "VAL_FRACTION", "describe_counts", "find_in", "find_split_files", "find_split_folders",
    "image_folder", "image_size", "inside", "is_image_file", "labels_csv", "open_image", "paired_files",
    "parse_synthetic", "read_class_names",
    "require_folder", "require_path", "seeded_split", "split_of", "synthetic_splits", "to_rgb", "verify_image",
]

"""Dataset building blocks every task uses: image datasets, image checks, synthetic options."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import DataError, suggest

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SYNTHETIC = "synthetic"


class ImageDataset:
    """Images read from disk on access (``paths``) with a target each, through ``transform``."""

    def __init__(self, paths: Sequence[Path], targets: Sequence[Any], transform: Callable) -> None:
        if len(paths) != len(targets):
            raise ValueError("paths and targets differ in length")
        self.paths, self.targets, self.transform = list(paths), list(targets), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        return self.transform(open_image(self.paths[index])), self.targets[index]


class TensorListDataset:
    """Pre-transformed tensors in memory with a target each (synthetic data)."""

    def __init__(self, tensors: Sequence[Any], targets: Sequence[Any], images: Sequence[Any] | None = None) -> None:
        self.tensors, self.targets = list(tensors), list(targets)
        self.images = list(images) if images is not None else None
        """The original PIL images, kept for drawing predictions."""

    def __len__(self) -> int:
        return len(self.tensors)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        return self.tensors[index], self.targets[index]


def is_image_file(path: Path) -> bool:
    """A visible file with an image extension."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def open_image(path: Path):
    """Open ``path`` as an RGB PIL image; a DataError names the file if it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None


def verify_image(path: Path) -> tuple[int, int]:
    """Check that ``path`` decodes; return its (width, height). Raises DataError naming it."""
    return open_image(path).size


def parse_synthetic(source: str | None, defaults: Mapping[str, int]) -> dict[str, int] | None:
    """``None``/``synthetic``/``synthetic:train=400,val=100`` → options; any other source → None."""
    if source is None:
        return dict(defaults)
    if source != SYNTHETIC and not source.startswith(SYNTHETIC + ":"):
        return None
    options = dict(defaults)
    rest = source[len(SYNTHETIC) + 1 :]
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in defaults:
            raise DataError(f"synthetic data option {part!r} is not one of {', '.join(f'{k}=N' for k in defaults)}"
                            + (suggest(key, defaults) if key else ""))
        try:
            options[key] = int(value)
        except ValueError:
            raise DataError(f"synthetic data option {key!r} needs an integer, got {value!r}") from None
        if options[key] < 0 or (key != "seed" and options[key] > 1_000_000):
            raise DataError(f"synthetic data option {key}={value} is out of range")
    return options


def require_folder(source: str) -> Path:
    """``source`` as an existing folder, or a DataError naming it."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{path}: data folder does not exist")
    if not path.is_dir():
        raise DataError(f"{path}: expected a data folder, found a file")
    return path


SPLIT_OFFSETS = {"train": 0, "val": 10_000_000, "test": 20_000_000}
"""Index offsets of the synthetic splits: the same (seed, index) never lands in two splits."""


def synthetic_splits(make: Callable[[int, int], Any], *, train: int, val: int, test: int) -> tuple[Any, Any, Any]:
    """(train, val, test) datasets from ``make(offset, count)``; a split of 0 images is None."""
    counts = {"train": train, "val": val, "test": test}
    train_set, val_set, test_set = (make(SPLIT_OFFSETS[name], n) if n else None for name, n in counts.items())
    return train_set, val_set, test_set

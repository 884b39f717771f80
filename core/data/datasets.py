"""The two dataset shapes every task uses: images read from disk on access, and tensors in memory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .images import open_image


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

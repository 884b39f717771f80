"""The two dataset shapes every task uses (images read from disk on access, tensors in memory), and a subset."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Subset as TorchSubset

from .transforms import open_for


class ImageDataset:
    """Images read from disk on access (``paths``) with a target each, through ``transform``.

    With a ``cache`` (an :class:`~loradex.core.data.loading.ImageCache` the engine attaches for
    ``--cache ram|disk``) the resized pixels come from there and are only normalised here.
    """

    def __init__(self, paths: Sequence[Path], targets: Sequence[Any], transform: Callable) -> None:
        if len(paths) != len(targets):
            raise ValueError("paths and targets differ in length")
        self.paths, self.targets, self.transform = list(paths), list(targets), transform
        self.cache: Any = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        if self.cache is not None:
            return self.transform.to_tensor(self.cache[index]), self.targets[index]
        return self.transform(open_for(self.paths[index], self.transform)), self.targets[index]

    def subset(self, indices: Sequence[int]) -> ImageDataset:
        """These items only, as a dataset of their own (so that a cache holds only them)."""
        return ImageDataset([self.paths[i] for i in indices], [self.targets[i] for i in indices], self.transform)


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


class Subset(TorchSubset):
    """torch's ``Subset``, with ``kinds()`` following the chosen items when the dataset has kinds (grounding)."""

    def kinds(self) -> list[str] | None:
        """The kind of each chosen item, or None when the dataset has no kinds."""
        kinds = self.dataset.kinds() if hasattr(self.dataset, "kinds") else None
        return [kinds[i] for i in self.indices] if kinds else None


def take(dataset: Any, count: int, *, seed: int) -> Any:
    """``count`` items of ``dataset`` drawn with ``seed`` (kept in their order); the dataset itself if it has no more.

    A seeded draw, not the first ``count``: a folder's items come sorted by class.
    """
    import random

    if count >= len(dataset):
        return dataset
    indices = sorted(random.Random(seed).sample(range(len(dataset)), count))
    return dataset.subset(indices) if isinstance(dataset, ImageDataset) else Subset(dataset, indices)

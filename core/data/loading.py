"""Batches for training and prediction: worker processes, pinned memory, an image cache, clear errors.

- :func:`make_loader` builds the ``DataLoader``: ``workers`` processes (persistent across
  epochs), pinned memory for CUDA, and the same seeded order with or without workers.
- A :class:`~loradex.core.errors.LoradexError` raised inside a worker (an unreadable image,
  named by file) reaches the caller as itself, one line, not as torch's "Caught DataError in
  DataLoader worker process 0" with a traceback pasted in; a worker that dies (killed, out of
  memory) is one :class:`DataError` saying so and what to try (:func:`checked_batches`).
- :func:`default_workers` fits the machine: none on a CPU with few cores (the model needs them
  all), up to 8 on a GPU machine, none for data already in memory.
- :class:`ImageCache` keeps every image decoded and resized (uint8) in RAM or in a file under
  the loradex home, filled once before training, after announcing what it will take.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..devices import available_cpus
from ..errors import ConfigError, DataError, LoradexError, first_line
from ..home import file_digest
from ..spec import CACHES
from .datasets import ImageDataset
from .transforms import FastTransform


class _Failed:
    """A worker's LoradexError, carried to the main process as a value."""

    def __init__(self, error: LoradexError) -> None:
        self.error = error


class _Carrying:
    """``dataset`` whose LoradexErrors are returned as :class:`_Failed` instead of raised in a worker."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except LoradexError as exc:
            return _Failed(exc)


class _CarryingCollate:
    def __init__(self, collate: Callable | None) -> None:
        self.collate = collate

    def __call__(self, items: list[Any]) -> Any:
        failed = next((item for item in items if isinstance(item, _Failed)), None)
        if failed is not None:
            return failed
        if self.collate is None:
            from torch.utils.data import default_collate

            return default_collate(items)
        return self.collate(items)


def default_workers(dataset: Any, *, device: Any = None, cpus: int | None = None) -> int:
    """Worker processes that suit this machine for ``dataset`` (0: load in the training process).

    Data already in memory needs none. On a GPU the data path is the bottleneck: up to 8, one
    core left for the training process. On a CPU the model competes for the same cores: one
    worker per 4 cores beyond the first 4 (none on 2 or 4 cores, where bench/data_throughput.py
    measured workers slowing training down).
    """
    if find_image_dataset(dataset) is None:
        return 0
    cpus = cpus or available_cpus()
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        return max(0, min(8, cpus - 1))
    return max(0, (cpus - 4) // 4)


def make_loader(dataset: Any, *, batch_size: int, collate: Callable | None, shuffle: bool = False, seed: int = 0,
                sampler: Any = None, workers: int | None = None, device: Any = None) -> Any:
    """A DataLoader over ``dataset`` for a model on ``device``; iterate it through :func:`checked_batches`.

    ``workers`` None fits the machine (:func:`default_workers`); memory is pinned for a CUDA
    device. The order depends on ``seed`` only: each worker's random stream is seeded from the
    same generator, and items come back in order whatever the number of workers.
    """
    import torch
    from torch.utils.data import DataLoader

    if workers is None:
        workers = default_workers(dataset, device=device)
    if workers < 0:
        raise ConfigError(f"workers must be 0 or more, got {workers}")
    options: dict[str, Any] = {"batch_size": batch_size, "collate_fn": _CarryingCollate(collate),
                               "pin_memory": getattr(device, "type", None) == "cuda"}
    if workers:
        options.update(num_workers=workers, persistent_workers=True, prefetch_factor=4)
    if sampler is None and shuffle:
        # The sampler gets a generator of its own: the DataLoader also draws a worker seed from its
        # generator, every epoch without workers but only once with persistent ones, which made the
        # order of epoch 2 on depend on the number of workers.
        sampler = torch.utils.data.RandomSampler(range(len(dataset)), generator=torch.Generator().manual_seed(seed))
    if sampler is not None:
        options["sampler"] = sampler
    options["generator"] = torch.Generator().manual_seed(seed)
    return DataLoader(_Carrying(dataset), **options)


def checked_batches(loader: Iterable[Any]) -> Iterator[Any]:
    """Iterate ``loader``, raising a worker's LoradexError as itself and a dead worker as one DataError."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except RuntimeError as exc:
            text = str(exc)
            if "DataLoader worker" in text:
                raise DataError(f"a data-loading worker died ({first_line(exc)}); rerun with --workers 0 to load in the "
                                "training process and see the image at fault") from None
            raise
        if isinstance(batch, _Failed):
            raise batch.error
        yield batch


def find_image_dataset(dataset: Any) -> ImageDataset | None:
    """The :class:`ImageDataset` inside ``dataset`` (through wrappers with a ``.dataset``), if any."""
    seen = 0
    while dataset is not None and seen < 8:
        if isinstance(dataset, ImageDataset):
            return dataset
        dataset, seen = getattr(dataset, "dataset", None), seen + 1
    return None


class ImageCache:
    """The resized uint8 pixels of every image of an :class:`ImageDataset`, in RAM or in a file.

    On disk the file is ``<folder>/<key>.u8`` (``key``: a hash of the image paths, sizes,
    modification times and the target size), reused by later runs on the same images; a file
    is only used once its ``.json`` marker says it is complete.
    """

    def __init__(self, paths: list[Path], transform: FastTransform, *, kind: str, folder: Path | None = None) -> None:
        if kind not in CACHES:
            raise ConfigError(f"cache must be one of {', '.join(CACHES)}, got {kind!r}")
        self.paths, self.transform, self.kind = list(paths), transform, kind
        width, height = transform.size
        self.shape = (len(self.paths), height, width, 3)
        self.folder = folder
        self.pixels: Any = None

    @property
    def nbytes(self) -> int:
        """What the cache holds: one byte per channel per pixel of every image."""
        count, height, width, channels = self.shape
        return count * height * width * channels

    def key(self) -> str:
        """A hash of the images (paths, sizes, mtimes) and the target size and filter."""
        digest = hashlib.sha256(json.dumps([self.shape, self.transform.resample]).encode())
        for path in self.paths:
            stat = os.stat(path)
            digest.update(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:32]

    def fill(self, *, say: Callable[[str], None], threads: int | None = None) -> None:
        """Announce the size, check there is room, then decode every image (in threads: PIL frees the GIL)."""
        import numpy as np

        size_mb = self.nbytes / 1e6
        where = "RAM" if self.kind == "ram" else f"disk ({self.folder})"
        if self.kind == "ram":
            available = _available_memory()
            if available is not None and self.nbytes > 0.8 * available:
                raise ConfigError(f"--cache ram needs {size_mb:,.0f} MB for {self.shape[0]:,} images but only "
                                  f"{available / 1e6:,.0f} MB of memory is free; use --cache disk")
            say(f"cache: {self.shape[0]:,} images at {self.shape[2]}x{self.shape[1]} take {size_mb:,.1f} MB of {where}")
            self.pixels = np.empty(self.shape, dtype=np.uint8)
            self._decode(threads)
            return
        assert self.folder is not None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._unwritable(exc) from None
        key = self.key()
        data, marker = self.folder / f"{key}.u8", self.folder / f"{key}.json"
        if marker.is_file() and data.is_file():
            fault = cache_fault(data, marker, nbytes=self.nbytes)
            if fault is None:
                say(f"cache: reusing {data} ({size_mb:,.1f} MB, {self.shape[0]:,} images)")
                self.pixels = np.memmap(data, dtype=np.uint8, mode="r", shape=self.shape)
                return
            say(f"cache: {data} is damaged ({fault}); building it again")
        import shutil

        free = shutil.disk_usage(self.folder).free
        if self.nbytes > free:
            raise ConfigError(f"--cache disk needs {size_mb:,.0f} MB in {self.folder} but only {free / 1e6:,.0f} MB "
                              "is free")
        say(f"cache: {self.shape[0]:,} images at {self.shape[2]}x{self.shape[1]} take {size_mb:,.1f} MB of {where}")
        # Built in a file of this run's own and published by renames: a run reading the cache keeps its
        # file (its inode) whatever another run publishes meanwhile, and nobody reads a half-built one.
        try:
            handle, private = tempfile.mkstemp(prefix=f".{key}.", suffix=".building", dir=self.folder)
        except OSError as exc:
            raise self._unwritable(exc) from None
        os.close(handle)
        try:
            pixels = np.memmap(private, dtype=np.uint8, mode="w+", shape=self.shape)
            self.pixels = pixels
            self._decode(threads)
            pixels.flush()
            del pixels
            self.pixels = None
            record = {"images": self.shape[0], "shape": self.shape, "bytes": self.nbytes,
                      "blake2b": file_digest(Path(private), algorithm="blake2b")}
            marker_private = Path(private).with_suffix(".json")
            marker_private.write_text(json.dumps(record) + "\n", encoding="utf-8")
            os.replace(private, data)
            os.replace(marker_private, marker)
        finally:
            for leftover in (Path(private), Path(private).with_suffix(".json")):
                leftover.unlink(missing_ok=True)
        self.pixels = np.memmap(data, dtype=np.uint8, mode="r", shape=self.shape)

    def _unwritable(self, exc: OSError) -> ConfigError:
        return ConfigError(f"--cache disk cannot write in {self.folder} ({exc.strerror or first_line(exc)}); "
                           "train with --cache ram, or without --cache")

    def _decode(self, threads: int | None) -> None:
        from .transforms import open_for

        def one(index: int) -> None:
            self.pixels[index] = self.transform.resize(open_for(self.paths[index], self.transform))

        with ThreadPoolExecutor(max_workers=threads or available_cpus()) as pool:
            for _ in pool.map(one, range(len(self.paths))):
                pass

    def __getitem__(self, index: int) -> Any:
        return self.pixels[index]


def cache_fault(data: Path, marker: Path, *, nbytes: int | None = None) -> str | None:
    """Why the disk cache ``data`` cannot be trusted (size or checksum against its marker), or None."""
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
        size = data.stat().st_size
    except (OSError, ValueError, RecursionError) as exc:
        return f"its marker cannot be read ({type(exc).__name__})"
    if not isinstance(record, dict) or "blake2b" not in record:
        return "its marker has no checksum (written by an older loradex)"
    expected = nbytes if nbytes is not None else record.get("bytes")
    if size != expected:
        return f"{size:,} bytes instead of {expected:,}"
    if file_digest(data, algorithm="blake2b") != record["blake2b"]:
        return "its checksum differs: the pixels were changed after it was written"
    return None


def damaged_caches(folder: Path) -> list[str]:
    """One line per disk cache in ``folder`` that fails its checks (for ``adapters verify``)."""
    if not folder.is_dir():
        return []
    lines = []
    for data in sorted(folder.glob("*.u8")):
        marker = data.with_suffix(".json")
        if not marker.is_file():
            lines.append(f"{data}: image cache without its marker (an interrupted build); delete it")
            continue
        fault = cache_fault(data, marker)
        if fault is not None:
            lines.append(f"{data}: image cache is damaged ({fault}); delete it, the next run builds it again")
    return lines


def _available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def attach_cache(dataset: Any, *, kind: str, folder: Path, say: Callable[[str], None]) -> bool:
    """Fill a cache for the images of ``dataset`` and make it read from there; False if it has no files
    or its transform is not a :class:`FastTransform` (a processor that crops or pads)."""
    images = find_image_dataset(dataset)
    if images is None or not isinstance(images.transform, FastTransform) or not len(images):
        return False
    cache = ImageCache(images.paths, images.transform, kind=kind, folder=folder)
    cache.fill(say=say)
    images.cache = cache
    return True

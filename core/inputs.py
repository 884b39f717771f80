"""What a user hands to ``predict``: image files, folders, globs, PIL images and numpy arrays.

Paths are expanded here (a folder recursively and sorted, a glob sorted) and images are only
decoded when a batch needs them, so predicting a folder of 10,000 images never holds them all.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import is_image_file, open_image
from .errors import DataError

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class ImageInput:
    """One image to predict on: a file (``path``) or an image already in memory (``image``)."""

    source: str
    """How results name it: the path as given, or ``<image N>`` for in-memory images."""
    path: Path | None = None
    image: Any = None
    """A PIL image (RGB) when the input was in memory."""

    def load(self):
        """The RGB PIL image; a DataError names a file that cannot be decoded."""
        if self.image is not None:
            return self.image
        assert self.path is not None
        return open_image(self.path)


def expand_paths(inputs: Iterable[str | Path]) -> list[Path]:
    """Image files named by ``inputs``: files as given, folders searched recursively, globs expanded.

    Raises DataError naming an input that does not exist, a glob that matches nothing, or a
    folder without images. A file named directly is kept whatever its extension, so that a
    file that is not an image is reported (by name) when it is read.
    """
    found: list[Path] = []
    for item in inputs:
        text = str(item)
        path = Path(text).expanduser()
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            images = sorted(p for p in path.rglob("*") if is_image_file(p)
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not images:
                raise DataError(f"{path}: folder has no images (looked for .jpg, .png, .bmp, .webp, .tif, ...)")
            found.extend(images)
        elif _GLOB_CHARS & set(text):
            matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
            files = [m for m in matches if m.is_file()]
            if not files:
                raise DataError(f"{text}: no files match this pattern")
            found.extend(files)
        else:
            raise DataError(f"{path}: no such image file or folder")
    seen: set[Path] = set()
    unique = []
    for path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def image_inputs(images: Any) -> list[ImageInput]:
    """Normalise what the Python API accepts into :class:`ImageInput` objects.

    ``images`` is a path (file, folder or glob; str or Path), a PIL image, a numpy array
    (H×W, H×W×3 or H×W×4; uint8, or floats in 0..1), or a list/tuple of these.
    """
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    out: list[ImageInput] = []
    for index, item in enumerate(items):
        if isinstance(item, ImageInput):
            out.append(item)
        elif isinstance(item, (str, Path)):
            out.extend(ImageInput(source=str(p), path=p) for p in expand_paths([item]))
        elif _is_pil(item):
            out.append(ImageInput(source=f"<image {index}>", image=item.convert("RGB")))
        elif type(item).__module__ == "numpy" and hasattr(item, "shape"):
            out.append(ImageInput(source=f"<image {index}>", image=array_to_image(item, index=index)))
        else:
            raise DataError(f"input {index} is a {type(item).__name__}; pass a path, a PIL image or a numpy array")
    if not out:
        raise DataError("no images to predict on")
    return out


def array_to_image(array: Any, *, index: int = 0):
    """A numpy image (H×W, H×W×1/3/4; uint8, or floats in 0..1) as an RGB PIL image."""
    import numpy as np
    from PIL import Image

    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) or 0 in a.shape:
        raise DataError(f"input {index}: array of shape {a.shape} is not an image (H×W, H×W×3 or H×W×4)")
    if a.dtype == np.uint8:
        pixels = a
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise DataError(f"input {index}: array holds NaN or infinite values")
        if a.min() < 0 or a.max() > 1:
            raise DataError(f"input {index}: float arrays must hold values in 0..1, found {a.min():g}..{a.max():g}")
        pixels = (a * 255 + 0.5).astype(np.uint8)
    else:
        raise DataError(f"input {index}: array of dtype {a.dtype}; use uint8, or floats in 0..1")
    return Image.fromarray(pixels).convert("RGB")


def check_readable(inputs: Sequence[ImageInput]) -> dict[str, str]:
    """A cheap look at each file's header: ``{source: reason}`` for those that are not images."""
    from PIL import Image, UnidentifiedImageError

    bad: dict[str, str] = {}
    for item in inputs:
        if item.path is None:
            continue
        try:
            with Image.open(item.path) as image:
                image.size  # noqa: B018 - the header is parsed by now
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            bad[item.source] = f"{type(exc).__name__}: {exc}"
    return bad


def _is_pil(item: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(item, Image.Image)

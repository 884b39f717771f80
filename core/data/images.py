"""Reading images safely: one decoder for every task, with the checks every reader needs.

16-bit and 32-bit integer images (medical, depth, scientific PNG/TIFF) are scaled down to 8
bits instead of being clipped to white; images beyond Pillow's decompression-bomb limit, files
that are not images and truncated files all give one DataError naming the file.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def is_image_file(path: Path) -> bool:
    """A visible file with an image extension."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _reading_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image, UnidentifiedImageError

    return (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def to_rgb(image):
    """``image`` as 8-bit RGB; wide integer modes (``I;16``, ``I``) are rescaled, not clipped."""
    import numpy as np
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max(initial=0) <= 65535 else float(pixels.max())
        scaled = np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, "L").convert("RGB")
    if image.mode == "F":
        pixels = np.nan_to_num(np.asarray(image, dtype=np.float64))
        low, high = float(pixels.min(initial=0)), float(pixels.max(initial=0))
        scaled = (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)
        return Image.fromarray((scaled * 255 + 0.5).astype(np.uint8), "L").convert("RGB")
    return image.convert("RGB")


def open_image(path: Path, *, draft: tuple[int, int] | None = None):
    """Open ``path`` as an RGB PIL image; a DataError names the file if it cannot be read.

    ``draft``: for a JPEG, let the decoder skip detail down to about this size (1/2, 1/4 or 1/8
    scale, never below it): several times faster for photos that are resized smaller anyway.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            if draft is not None and image.format == "JPEG":
                image.draft("RGB", draft)
            return to_rgb(image)
    except _reading_errors() as exc:
        raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding it; a DataError names a bad file."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except _reading_errors() as exc:
        raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None


def verify_image(path: Path) -> tuple[int, int]:
    """Check that ``path`` decodes; return its (width, height). Raises DataError naming it."""
    return open_image(path).size

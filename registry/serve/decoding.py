"""Request images to RGB PIL images: checked before they are decoded, decoded off the event loop."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from loradex.core.errors import DataError


def open_checked(data: bytes, *, name: str, max_pixels: int, hint: str = " (--max-pixels)") -> Any:
    """``data`` (PNG, JPEG, WebP, ...) opened with its header read and its size checked, nothing decoded.

    An image of more than ``max_pixels`` is refused before a single pixel is decoded (a
    decompression bomb costs nothing); a DataError names ``name`` and what is wrong, and
    ``hint`` says how the limit is set.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise DataError(f"{name}: empty file, not an image")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise DataError(f"{name}: refused as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise DataError(f"{name}: not a readable image (no known image format)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{name}: not a readable image ({type(exc).__name__}: {exc})") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise DataError(f"{name}: {width}x{height} is {width * height:,} pixels, more than the limit of "
                        f"{max_pixels:,}{hint}")
    return image


def decode(image: Any, *, name: str) -> Any:
    """An image from :func:`open_checked` decoded to RGB (in any thread); a DataError names a broken file."""
    from loradex.core.data.images import to_rgb

    try:
        with image:
            return to_rgb(image)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{name}: not a readable image ({type(exc).__name__}: {exc})") from None


def decode_base64(text: Any, *, name: str) -> bytes:
    """The bytes of a base64 string (a ``data:image/png;base64,`` prefix is allowed)."""
    if not isinstance(text, str):
        raise DataError(f"{name}: expected a base64 string, got {type(text).__name__}")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise DataError(f"{name}: not valid base64") from None

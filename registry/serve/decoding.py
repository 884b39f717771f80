"""Request images to RGB PIL images: checked before they are decoded, decoded off the event loop."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from loradex.core.errors import DataError


def decode_image(data: bytes, *, name: str, max_pixels: int) -> Any:
    """``data`` (PNG, JPEG, WebP, ...) as an RGB PIL image; a DataError names ``name`` and what is wrong.

    The size is read from the header first: an image of more than ``max_pixels`` is refused
    before a single pixel is decoded (a decompression bomb costs nothing).
    """
    from PIL import Image, UnidentifiedImageError

    from loradex.core.data.images import to_rgb

    if not data:
        raise DataError(f"{name}: empty file, not an image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise DataError(f"{name}: {width}x{height} is {width * height:,} pixels, more than this server's "
                                f"limit of {max_pixels:,} (--max-pixels)")
            return to_rgb(image)
    except Image.DecompressionBombError as exc:
        raise DataError(f"{name}: refused as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise DataError(f"{name}: not a readable image (no known image format)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{name}: not a readable image ({type(exc).__name__}: {exc})") from None


def header_pixels(data: bytes) -> int:
    """Width x height from the image header alone (0 when the header cannot be read)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 - decode_image reports what is wrong, by name
        return 0
    return width * height


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

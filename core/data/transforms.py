"""Fast image transforms: the processor's resize and normalisation without its per-call overhead.

A transformers image processor converts every PIL image to numpy, validates, resizes through
PIL, rescales and normalises in float64 numpy, one image per call: at 224 px from small PNGs
that is most of the time a data-loading worker spends. :class:`FastTransform` does the same
steps — the same PIL resize filter to the same size, then ``(x / 255 - mean) / std`` in float32
torch — so it gives the processor's tensors to float rounding (tests/test_data_loading.py).
Its two halves are separate so that a cache can keep the resized uint8 pixels
(:meth:`FastTransform.resize`) and normalise on access (:meth:`FastTransform.to_tensor`).

JPEG decoding is where full-size photos spend their time: :func:`open_for` asks libjpeg to
decode at a reduced scale (``Image.draft``: 1/2, 1/4 or 1/8) that is still at least the target
size on each side, which the resize then brings down. That is no longer the processor's exact
result on large JPEGs (within 0.05 in normalised units on average; the test checks it); images
already near the target size are decoded in full.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .images import open_image

JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})


@dataclass(frozen=True)
class FastTransform:
    """Resize to ``size`` (width, height) with PIL's ``resample`` filter, then normalise with ``mean``/``std``."""

    size: tuple[int, int]
    resample: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float = 1 / 255

    def resize(self, image: Any) -> Any:
        """An RGB PIL image → (H, W, 3) uint8 numpy pixels at the target size."""
        import numpy as np

        image = image.convert("RGB") if image.mode != "RGB" else image
        if image.size != self.size:
            image = image.resize(self.size, self.resample)
        return np.asarray(image, dtype=np.uint8)

    def to_tensor(self, pixels: Any) -> Any:
        """(H, W, 3) uint8 pixels → the normalised (3, H, W) float32 tensor."""
        import torch

        tensor = torch.from_numpy(pixels.copy() if not pixels.flags.writeable else pixels).permute(2, 0, 1).float()
        mean, std = self._mean_std
        return (tensor - mean) / std

    @functools.cached_property
    def _mean_std(self) -> tuple[Any, Any]:
        """``mean`` and ``std`` in pixel units as (3, 1, 1) tensors, built once, not per image."""
        import torch

        return tuple(torch.tensor(v, dtype=torch.float32).view(3, 1, 1) / self.scale for v in (self.mean, self.std))

    def __call__(self, image: Any) -> Any:
        """One PIL image → normalised (3, H, W) tensor."""
        return self.to_tensor(self.resize(image))


def fast_transform_for(processor: Any, size: int) -> FastTransform | None:
    """A :class:`FastTransform` equal to ``processor`` resized to ``size`` pixels, or None if it does more.

    Only plain processors qualify: resize to a fixed height and width, rescale, normalise, no
    crop, padding or other steps (ViT, DeiT-style, DINOv2 at a fixed size, SigLIP, ...).
    """
    from PIL import Image

    if getattr(processor, "do_center_crop", None) or getattr(processor, "do_pad", None):
        return None
    if not getattr(processor, "do_resize", True) or not getattr(processor, "do_rescale", True):
        return None
    if not getattr(processor, "do_normalize", True):
        return None
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    resample = getattr(processor, "resample", None)
    scale = getattr(processor, "rescale_factor", None)
    if mean is None or std is None or resample is None or scale is None:
        return None
    mean, std = (tuple(float(v) for v in mean), tuple(float(v) for v in std))
    if len(mean) != 3 or len(std) != 3:
        return None
    return FastTransform(size=(size, size), resample=int(getattr(resample, "value", resample) or Image.BILINEAR),
                         mean=mean, std=std, scale=float(scale))


def open_for(path: Path, transform: Any) -> Any:
    """Open ``path`` as RGB; a large JPEG is decoded at a reduced scale when ``transform`` resizes it anyway."""
    size = getattr(transform, "size", None) if isinstance(transform, FastTransform) else None
    if size is None or Path(path).suffix.lower() not in JPEG_SUFFIXES:
        return open_image(path)
    return open_image(path, draft=size)

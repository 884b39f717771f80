"""Any ViT-family encoder from transformers, or a timm model, by Hub id or local folder, at a pinned revision."""

from __future__ import annotations

import re
from pathlib import Path

from loradex.core.backbone import LoadedBackbone
from loradex.core.errors import BackboneError, first_line

# Multi-modal checkpoints whose vision tower is the encoder we want.
_VISION_TOWERS = {
    "clip": "CLIPVisionModel",
    "siglip": "SiglipVisionModel",
    "siglip2": "Siglip2VisionModel",
}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubBackbone:
    """Loads ViT, DeiT, DINOv2, CLIP/SigLIP vision and kin with safetensors weights only."""

    name = "hf"
    description = ("any ViT-family encoder, timm model or Florence-2 by Hub id (org/name) or local folder; "
                   "--revision pins it")

    def handles(self, source: str) -> bool:
        """A local folder, or something shaped like a Hub repo id ``org/name``."""
        return Path(source).is_dir() or bool(_REPO_ID.match(source))

    def load(self, source: str, *, revision: str | None = None) -> LoadedBackbone:
        """Load config, weights (safetensors only) and image processor from ``source``."""
        import transformers
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        try:
            config = AutoConfig.from_pretrained(source, revision=revision)
            if config.model_type == "florence2":
                from .florence import load_florence

                return load_florence(source, revision=revision)
            if config.model_type == "timm_wrapper":
                from .timm_models import load_timm

                return load_timm(source, revision=revision)
            tower = _VISION_TOWERS.get(config.model_type)
            kwargs = {"revision": revision, "use_safetensors": True}
            if tower:
                model = getattr(transformers, tower).from_pretrained(source, **kwargs)
            else:
                model = AutoModel.from_pretrained(source, **kwargs)
            processor = AutoImageProcessor.from_pretrained(source, revision=revision)
        except (OSError, ValueError, KeyError) as exc:
            raise BackboneError(f"cannot load backbone {source!r}: {first_line(exc)}") from None
        return finish_loading(model, processor, name=source, revision=revision)


def finish_loading(model, processor, *, name: str, revision: str | None, pretrained: bool = True) -> LoadedBackbone:
    """Measure image size and prefix-token count with one dummy image, then freeze."""
    import torch
    from PIL import Image

    model.name_or_path = name  # PEFT records it as base_model_name_or_path
    model.config._name_or_path = name

    pixel_values = processor(images=Image.new("RGB", (64, 64)), return_tensors="pt")["pixel_values"]
    height, width = pixel_values.shape[-2:]
    patch = model.config.patch_size
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    if height != width or height % patch:
        raise BackboneError(f"backbone {name!r}: processor output {height}x{width} is not a square multiple of {patch}")
    with torch.no_grad():
        tokens = model(pixel_values=pixel_values).last_hidden_state.shape[1]
    prefix = tokens - (height // patch) * (width // patch)
    if prefix < 0:
        raise BackboneError(f"backbone {name!r}: {tokens} tokens for a {height // patch}² patch grid")
    return LoadedBackbone.from_model(model, processor, name=name, revision=revision, image_size=height,
                                     num_prefix_tokens=prefix, pretrained=pretrained)

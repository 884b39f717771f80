"""Offline presets: real transformers ViTs built from a config with a fixed seed.

No weights can be downloaded here, so a preset is initialised from a seed; on the same
torch version it is bit-identical on every machine (the fingerprint proves it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loradex.core.backbone import LoadedBackbone


@dataclass(frozen=True)
class PresetBackbone:
    """A ViT built from ``config`` with ``seed``; ``name`` is what users type."""

    name: str
    description: str
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    default_for: tuple[str, ...] = ()
    """Kinds of task (``encoder``) that train on this preset when no base is named."""

    def handles(self, source: str) -> bool:
        """Presets answer to their own name only."""
        return source == self.name

    def load(self, source: str | None = None, *, revision: str | None = None) -> LoadedBackbone:
        """Build the model deterministically; ``revision`` must be None for a preset."""
        import torch
        import transformers
        from transformers import ViTConfig, ViTModel

        from .hub import finish_loading

        if revision is not None:
            from loradex.core.errors import BackboneError

            raise BackboneError(f"backbone {self.name!r} is a built-in preset and has no revisions")
        config = ViTConfig(**self.config)
        state = torch.random.get_rng_state()
        try:
            torch.manual_seed(self.seed)
            model = ViTModel(config, add_pooling_layer=False)
        finally:
            torch.random.set_rng_state(state)
        size = config.image_size
        processor_cls = getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
        processor = processor_cls(
            size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        )
        return finish_loading(model, processor, name=self.name, revision=None, pretrained=False)


PRESETS: tuple[PresetBackbone, ...] = (
    PresetBackbone(
        name="tiny-vit",
        default_for=("encoder",),
        description="2-layer, 192-wide ViT at 64px, patch 8 (0.94M params): fast on a CPU",
        config=dict(
            hidden_size=192, num_hidden_layers=2, num_attention_heads=3, intermediate_size=768,
            image_size=64, patch_size=8, initializer_range=0.07,
        ),
    ),
    PresetBackbone(
        name="vit-base",
        description="ViT-Base/16 at 224px (86M params), random init: for size and speed measurements",
        config=dict(
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
            image_size=224, patch_size=16,
        ),
    ),
)

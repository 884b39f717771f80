"""Built-in backbones: offline presets and any ViT-family encoder from transformers."""

from loradex.core.hookspecs import hookimpl


@hookimpl
def register_backbones(register):
    """Register the offline presets and the Hub / local-folder loader."""
    from .hub import HubBackbone
    from .presets import PRESETS

    for preset in PRESETS:
        register(preset)
    register(HubBackbone())

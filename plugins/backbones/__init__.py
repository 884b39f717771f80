"""Built-in backbones: offline presets, any ViT-family encoder and Florence-2 from transformers."""

from loradex.core.hookspecs import hookimpl


@hookimpl
def register_backbones(register):
    """Register the offline presets and the Hub / local-folder loader."""
    from .florence import FLORENCE_PRESETS
    from .hub import HubBackbone
    from .presets import PRESETS

    for preset in (*PRESETS, *FLORENCE_PRESETS):
        register(preset)
    register(HubBackbone())

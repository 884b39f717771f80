"""Built-in backbones: offline presets (random ViTs, pretrained EfficientNet-Lite0), ViT-family, timm and Florence-2 models."""

from loradex.core.hookspecs import hookimpl


@hookimpl
def register_backbones(register):
    """Register the offline presets and the Hub / local-folder loader."""
    from .efficientnet import EfficientNetLite0Preset
    from .florence import FLORENCE_PRESETS
    from .hub import HubBackbone
    from .presets import PRESETS

    for preset in (*PRESETS, *(EfficientNetLite0Preset(output_stride=s) for s in (32, 16, 8)),
                   *FLORENCE_PRESETS):
        register(preset)
    register(HubBackbone())

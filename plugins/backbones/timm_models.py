"""timm bases (CNNs and ViTs) through transformers' ``TimmWrapperModel``.

Any timm architecture loads by Hub id (``timm/vit_small_patch16_224.augreg_in21k``) or from a
folder that ``save_pretrained`` wrote, safetensors only. Heads get the same
:class:`~loradex.core.backbone.EncoderOutput` as on a ViT: ``cls`` is timm's own pooled vector
(``forward_head(pre_logits=True)``: the CLS token of a ViT, the global average of a CNN) and
``patches`` the last feature map laid out as a (B, h, w, C) grid.

LoRA targets are named by what the layers do:

- ``attn.qkv`` a fused query-key-value Linear (``attn.q``/``k``/``v`` name the same layer),
  ``attn.o``, ``mlp.in``, ``mlp.out``: the blocks of a timm ViT;
- ``conv.pw``: pointwise (1x1, ungrouped) convolutions: an inverted residual's expansion
  (``conv_pw``) and projection (``conv_pwl``), the head conv, a ResNet's 1x1 convs;
- ``conv.full``: dense kxk convolutions (a ResNet's 3x3).

Depthwise convolutions are no target: PEFT's LoRA on a conv with ``groups > 1`` needs a rank
divisible by the channel count and cannot be merged into the base. The stem conv (or ViT's
patch embedding) is no target either: it sees raw pixels, and LoRA there buys nothing per byte.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from loradex.core.backbone import EncoderOutput, LoadedBackbone, classify_block_module, fingerprint
from loradex.core.errors import BackboneError, first_line
from loradex.core.spec import BackboneRef

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from torch import nn

ARCHITECTURE = "timm_wrapper"


def _is_stem(name: str, first_conv: str | None) -> bool:
    return name == first_conv or name.startswith(("patch_embed", "stem", "conv_stem"))


def timm_target_patterns(model: nn.Module) -> dict[str, str]:
    """Semantic LoRA target → regex of the layers that implement it in a ``TimmWrapperModel``."""
    from torch import nn

    found: dict[str, list[str]] = {}
    timm_model = getattr(model, "timm_model", model)
    prefix = "timm_model." if timm_model is not model else ""
    first_conv = next((n for n, m in timm_model.named_modules() if isinstance(m, nn.Conv2d)), None)
    for name, module in timm_model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        targets: tuple[str, ...] = ()
        if isinstance(module, nn.Linear):
            if leaf == "qkv":
                targets = ("attn.qkv", "attn.q", "attn.k", "attn.v")
            elif leaf == "proj" and name.endswith("attn.proj"):
                targets = ("attn.o",)
            elif leaf in ("fc1", "fc2") and ".mlp." in f".{name}":
                targets = ("mlp.in",) if leaf == "fc1" else ("mlp.out",)
            elif (target := classify_block_module(".".join(name.split(".")[-2:]))) in ("attn.q", "attn.k", "attn.v"):
                targets = (target, "attn.qkv")
        elif isinstance(module, nn.Conv2d) and not _is_stem(name, first_conv):
            if module.groups == 1 and tuple(module.kernel_size) == (1, 1):
                targets = ("conv.pw",)
            elif module.groups == 1:
                targets = ("conv.full",)
        for target in targets:
            found.setdefault(target, []).append(prefix + name)
    return {t: "|".join(re.escape(n) for n in names) for t, names in found.items()}


def default_targets(patterns: dict[str, str]) -> tuple[str, ...]:
    """What LoRA adapts on this family unless told otherwise: q,v-style on ViTs, pointwise convs on CNNs."""
    if "attn.qkv" in patterns:
        return tuple(t for t in ("attn.qkv", "attn.o", "mlp.in", "mlp.out") if t in patterns)
    return tuple(t for t in ("conv.pw",) if t in patterns) or tuple(patterns)[:1]


@dataclass
class TimmLoadedBackbone(LoadedBackbone):
    """A :class:`LoadedBackbone` over a ``TimmWrapperModel``: own resize/normalise, pooled vector from timm."""

    level_indices: dict[int, int] = field(default_factory=dict)
    """Stride → index in the wrapper's ``hidden_states`` of each map in ``feature_levels``."""

    @property
    def is_convolutional(self) -> bool:
        """A timm CNN (no patch embedding): its features come from convolutions."""
        return not hasattr(self.model.timm_model, "patch_embed")

    def grid_at(self, image_size: int) -> tuple[int, int]:
        """Feature grid (rows, cols) at ``image_size`` pixels: the image over the network's total stride."""
        side = -(-image_size // self.patch_size) if self.interpolates else image_size // self.patch_size
        return side, side

    def check_image_size(self, image_size: int) -> None:
        """A CNN runs at any multiple of its stride; a timm ViT at its own size only."""
        if image_size % self.patch_size:
            raise BackboneError(f"image size {image_size} is not a multiple of {self.ref.name!r}'s stride "
                                f"{self.patch_size}")
        if image_size != self.image_size and not self.interpolates:
            raise BackboneError(f"backbone {self.ref.name!r} runs at {self.image_size}px only, not {image_size}px")

    def fast_transform(self, size: int) -> Any:
        """Squash to ``size`` with a bicubic filter, as ViT processors do (timm's own eval transform
        resizes and center-crops), and normalise with the model's mean and std."""
        from PIL import Image as PILImage

        from loradex.core.data.transforms import FastTransform

        cfg = getattr(self.model.timm_model, "pretrained_cfg", None) or {}
        mean, std = (tuple(float(v) for v in cfg.get(k, (0.5, 0.5, 0.5))) for k in ("mean", "std"))
        return FastTransform(size=(size, size), resample=int(PILImage.BICUBIC), mean=mean, std=std)

    def export_encoding(self) -> dict[str, Any]:
        """timm's own pooled vector (``pooler_output``); the wrapper takes no ``interpolate_pos_encoding``;
        ``levels``: stride → index in ``hidden_states`` of the finer maps."""
        return {"pooled": "pooler_output", "interpolate_kwarg": False,
                "levels": {str(s): i for s, i in self.level_indices.items()}}

    def save_image_processor(self, folder: Path) -> None:
        """A plain ``ViTImageProcessor`` config doing what :meth:`fast_transform` does (squash, bicubic,
        the model's mean and std): transformers' timm processor keeps its settings in ``config.json``
        and resizes and crops as timm's eval transform does, which is not what the heads were trained on."""
        from transformers import ViTImageProcessor

        fast = self.fast_transform(self.image_size)
        ViTImageProcessor(do_resize=True, size={"height": self.image_size, "width": self.image_size},
                          resample=fast.resample, do_rescale=True, rescale_factor=fast.scale, do_normalize=True,
                          image_mean=list(fast.mean), image_std=list(fast.std)).save_pretrained(folder)

    def encode(self, model: nn.Module, pixel_values: torch.Tensor, **kwargs: Any) -> EncoderOutput:
        """Run the wrapped timm model (possibly under PEFT) and lay its last features out as a grid;
        a CNN's stride-8/16 stage outputs come as ``levels`` (timm's ``forward_intermediates``, same cost)."""
        if self.level_indices:
            kwargs.setdefault("output_hidden_states", True)
        out = model(pixel_values=pixel_values, **kwargs)
        levels = {stride: out.hidden_states[index].permute(0, 2, 3, 1)
                  for stride, index in self.level_indices.items()} if self.level_indices else {}
        features, pooled = out.last_hidden_state, out.pooler_output
        if features.ndim == 4:  # a CNN: (B, C, h, w)
            patches = features.permute(0, 2, 3, 1)
        else:  # a ViT: (B, prefix + h*w, D)
            rows, cols = self.grid_at(pixel_values.shape[-2])[0], self.grid_at(pixel_values.shape[-1])[1]
            tokens = features[:, self.num_prefix_tokens : self.num_prefix_tokens + rows * cols]
            patches = tokens.reshape(features.shape[0], rows, cols, features.shape[-1])
        if pooled is None or pooled.ndim != 2:
            pooled = patches.flatten(1, 2).mean(dim=1)
        return EncoderOutput(cls=pooled, patches=patches, levels=levels)


def timm_backbone(model: Any, processor: Any, *, name: str, revision: str | None,
                  pretrained: bool = True) -> TimmLoadedBackbone:
    """Freeze a ``TimmWrapperModel``, fingerprint it and describe its grid, stride and LoRA targets."""
    import torch

    if getattr(model.config, "model_type", "") != ARCHITECTURE:
        raise BackboneError(f"backbone {name!r}: not a timm model (model_type {model.config.model_type!r})")
    model.eval()
    model.requires_grad_(False)
    model.name_or_path = name
    model.config._name_or_path = name
    timm_model = model.timm_model
    cfg = dict(getattr(timm_model, "pretrained_cfg", None) or {})
    image_size = int(cfg.get("input_size", (3, 224, 224))[-1])
    is_vit = hasattr(timm_model, "patch_embed")
    stages = not is_vit and hasattr(timm_model, "forward_intermediates")  # a CNN's stage maps, in the same pass
    with torch.no_grad():
        probe = model(pixel_values=torch.zeros(1, 3, image_size, image_size), output_hidden_states=stages or None)
    features = probe.last_hidden_state
    prefix = int(getattr(timm_model, "num_prefix_tokens", 0))
    if is_vit:
        patch = timm_model.patch_embed.patch_size
        stride = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        if features.shape[1] != prefix + (image_size // stride) ** 2:
            raise BackboneError(f"backbone {name!r}: {features.shape[1]} tokens for a {image_size // stride}² patch "
                                f"grid and {prefix} prefix tokens")
    else:  # measured, not read from feature_info: a dilated model (output_stride=16) keeps its nominal reductions
        stride = image_size // int(features.shape[-1])
    indices, widths = _pyramid(probe.hidden_states if stages else (), image_size, stride)
    patterns = timm_target_patterns(model)
    if not patterns:
        raise BackboneError(f"backbone {name!r} ({model.config.architecture}): no Linear or conv layer LoRA can target")
    backbone = TimmLoadedBackbone(
        ref=BackboneRef(name=name, revision=revision, fingerprint=fingerprint(model), architecture=ARCHITECTURE),
        model=model,
        processor=processor,
        hidden_size=int(timm_model.num_features),
        patch_size=stride,
        image_size=image_size,
        num_prefix_tokens=prefix,
        interpolates=not is_vit or bool(getattr(timm_model.patch_embed, "dynamic_img_size", False)),
        target_patterns=patterns,
        pretrained=pretrained,
        default_targets=default_targets(patterns),
        feature_levels=widths,
        level_indices=indices,
    )
    return backbone


PYRAMID_STRIDES = (8, 16)
"""The finer maps a CNN offers heads: stride 4 costs more than it gives at loradex's image sizes."""


def _pyramid(states: Any, image_size: int, stride: int) -> tuple[dict[int, int], dict[int, int]]:
    """Stride → hidden-state index, and stride → channels, of the deepest stage at each of
    :data:`PYRAMID_STRIDES` finer than ``stride``, from the stage maps of a blank ``image_size``
    image (measured, so dilation counts)."""
    indices: dict[int, int] = {}
    widths: dict[int, int] = {}
    for index, state in enumerate(states or ()):
        level = image_size // int(state.shape[-1])
        if state.ndim == 4 and level in PYRAMID_STRIDES and level < stride:
            indices[level], widths[level] = index, int(state.shape[1])
    return indices, widths


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' progress bars and load reports (the classifier a feature model drops is expected)."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def load_timm(source: str, *, revision: str | None = None, name: str | None = None,
              pretrained: bool = True, model_args: dict[str, Any] | None = None) -> TimmLoadedBackbone:
    """A timm base by Hub id or folder (``config.json`` with ``architecture``, safetensors weights).

    ``model_args``: extra ``timm.create_model`` arguments (``output_stride=16``: a finer grid, same weights).
    """
    from transformers import TimmWrapperConfig, TimmWrapperImageProcessor, TimmWrapperModel

    try:
        with quiet_transformers():
            config = TimmWrapperConfig.from_pretrained(source, revision=revision)
            # timm's save_for_hf may record num_classes here too; the feature model sets it
            config.model_args = {**{k: v for k, v in (config.model_args or {}).items() if k != "num_classes"},
                                 **(model_args or {})} or None
            model = TimmWrapperModel.from_pretrained(source, config=config, revision=revision, use_safetensors=True)
            processor = TimmWrapperImageProcessor.from_pretrained(source, revision=revision)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise BackboneError(f"cannot load timm backbone {source!r}: {first_line(exc)}") from None
    backbone = timm_backbone(model, processor, name=name or source, revision=revision, pretrained=pretrained)
    if model_args:
        # the same weights computing other features (a dilated stage) are another base: its adapters do not move
        import hashlib
        import json
        from dataclasses import replace

        salted = hashlib.sha256(f"{backbone.ref.fingerprint}|{json.dumps(model_args, sort_keys=True)}".encode())
        backbone.ref = replace(backbone.ref, fingerprint="sha256:" + salted.hexdigest())
    return backbone

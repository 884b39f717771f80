"""Backbone: a shared, frozen vision encoder that maps pixels to tokens.

A backbone plugin registers :class:`Backbone` objects. Loading one gives a
:class:`LoadedBackbone`: the transformers model, its image processor, a fingerprint of the
base weights, and the mapping from semantic LoRA targets (``attn.q`` ... ``mlp.out``) to the
architecture's real module names. That mapping is derived from the model itself, so it holds
across architectures and across transformers versions (``query`` became ``q_proj``).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .errors import BackboneError
from .spec import SEMANTIC_TARGETS, BackboneRef

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from PIL import Image
    from torch import nn


@dataclass(frozen=True)
class EncoderOutput:
    """What every head receives: a global token, the patch grid and, where the base has them, finer maps."""

    cls: torch.Tensor
    """(B, D): the CLS token, or the mean patch token for encoders without one."""
    patches: torch.Tensor
    """(B, h, w, D): patch tokens (or a CNN's last feature map) laid out on the image grid."""
    levels: Mapping[int, torch.Tensor] = field(default_factory=dict)
    """Feature maps finer than ``patches``, by stride: ``{8: (B, H/8, W/8, C8), 16: ...}`` (a CNN's
    stage outputs, :attr:`LoadedBackbone.feature_levels`); empty on bases without a pyramid."""

    def select(self, rows: torch.Tensor) -> EncoderOutput:
        """The features of the batch rows at ``rows`` (a 1-D index tensor)."""
        return EncoderOutput(cls=self.cls.index_select(0, rows), patches=self.patches.index_select(0, rows),
                             levels={s: m.index_select(0, rows) for s, m in self.levels.items()})

    @classmethod
    def concat(cls, parts: Sequence[EncoderOutput]) -> EncoderOutput:
        """The features of several batches, one after the other."""
        import torch

        if len(parts) == 1:
            return parts[0]
        return cls(cls=torch.cat([p.cls for p in parts]), patches=torch.cat([p.patches for p in parts]),
                   levels={s: torch.cat([p.levels[s] for p in parts]) for s in parts[0].levels})


@runtime_checkable
class Backbone(Protocol):
    """A loadable base model, registered by a plugin through ``register_backbones``."""

    name: str
    """Registry name (a preset such as ``tiny-vit``, or a loader name such as ``hf``)."""
    description: str
    """One line for ``adapters tasks``."""

    def handles(self, source: str) -> bool:
        """Whether ``source`` (a name, Hub id or path) is something this backbone loads."""
        ...

    def load(self, source: str, *, revision: str | None = None) -> LoadedBackbone:
        """Load the base (weights frozen) from ``source`` at ``revision``."""
        ...


# Rules that classify a Linear inside one transformer block by its path relative to the block.
# Checked in order; names from transformers 5 (q_proj) and earlier releases (query) both match.
_TARGET_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("attn.q", re.compile(r"(^|\.)(q_proj|query|q)$")),
    ("attn.k", re.compile(r"(^|\.)(k_proj|key|k)$")),
    ("attn.v", re.compile(r"(^|\.)(v_proj|value|v)$")),
    ("attn.o", re.compile(r"(^|\.)(o_proj|out_proj|proj)$|attention\.output\.dense$")),
    ("mlp.in", re.compile(r"(^|\.)(fc1|up_proj|gate_proj)$|intermediate\.dense$")),
    ("mlp.out", re.compile(r"(^|\.)(fc2|down_proj)$|^output\.dense$|^mlp\.output\.dense$")),
)


def classify_block_module(relative_name: str) -> str | None:
    """The semantic target of a module path inside one block (``attention.q_proj`` → ``attn.q``)."""
    for target, pattern in _TARGET_RULES:
        if pattern.search(relative_name):
            return target
    return None


def find_blocks(model: nn.Module) -> tuple[str, int]:
    """The path of the transformer-block ModuleList in ``model`` and its length."""
    from torch import nn

    best: tuple[str, int, int] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            size = sum(p.numel() for p in module.parameters())
            if best is None or size > best[2]:
                best = (name, len(module), size)
    if best is None:
        raise BackboneError(f"{type(model).__name__} has no list of transformer blocks")
    return best[0], best[1]


def resolve_target_names(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Map each semantic target to the Linear paths, relative to a block, that implement it."""
    from torch import nn

    prefix, _ = find_blocks(model)
    block = model.get_submodule(f"{prefix}.0")
    found: dict[str, list[str]] = {t: [] for t in SEMANTIC_TARGETS}
    for rel, module in block.named_modules():
        if isinstance(module, nn.Linear):
            target = classify_block_module(rel)
            if target is not None:
                found[target].append(rel)
    return {t: tuple(v) for t, v in found.items() if v}


@dataclass
class LoadedBackbone:
    """A base model ready for LoRA: frozen weights, processor, fingerprint, target names."""

    ref: BackboneRef
    model: nn.Module
    processor: Any
    hidden_size: int
    patch_size: int
    image_size: int
    num_prefix_tokens: int
    """Tokens before the patch tokens (1 for CLS, 2 for DeiT's CLS + distillation, 0 for SigLIP)."""
    block_prefix: str = ""
    target_names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    interpolates: bool = False
    """Whether the model takes ``interpolate_pos_encoding`` (to run at other resolutions)."""
    kind: str = "encoder"
    """``encoder``: pixels → tokens that a task's head reads (ViT and kin). ``encoder-decoder``: pixels
    and a prompt → text (Florence-2); its tasks own their forward pass and generation."""
    target_patterns: dict[str, str] = field(default_factory=dict)
    """Semantic target → regex over full module paths, for models whose targets are not in one list
    of blocks (a vision tower and a language model); used instead of ``target_names`` when set."""
    pretrained: bool = False
    """Whether the weights were learned (a Hub checkpoint, the efficientnet-lite0 preset) rather than
    drawn from a seed; tasks pick other defaults for learned features (``Task.pretrained_defaults``)."""
    default_targets: tuple[str, ...] = ()
    """The LoRA targets measured best for this base; empty: the task's own default targets."""
    feature_levels: dict[int, int] = field(default_factory=dict)
    """Stride → channels of the maps finer than the grid that :meth:`encode` gives in
    :attr:`EncoderOutput.levels` (a CNN's stride-8 and stride-16 stages); empty: the grid only."""
    _transforms: dict[int, Callable] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        processor: Any,
        *,
        name: str,
        revision: str | None,
        image_size: int,
        num_prefix_tokens: int,
        pretrained: bool = False,
    ) -> LoadedBackbone:
        """Freeze ``model``, fingerprint it and resolve its LoRA targets."""
        config = model.config
        model.eval()
        model.requires_grad_(False)
        import inspect

        patch = config.patch_size
        patch = patch[0] if isinstance(patch, (tuple, list)) else patch
        prefix, _ = find_blocks(model)
        interpolates = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
        ref = BackboneRef(
            name=name, revision=revision, fingerprint=fingerprint(model), architecture=config.model_type
        )
        return cls(
            ref=ref,
            model=model,
            processor=processor,
            hidden_size=config.hidden_size,
            patch_size=int(patch),
            image_size=int(image_size),
            num_prefix_tokens=num_prefix_tokens,
            block_prefix=prefix,
            target_names=resolve_target_names(model),
            interpolates=interpolates,
            pretrained=pretrained,
        )

    @property
    def is_convolutional(self) -> bool:
        """Whether the base is a CNN (on CUDA it then runs channels-last)."""
        return False

    @functools.cached_property
    def module_names(self) -> frozenset[str]:
        """Paths of every module of the base (computed once)."""
        return frozenset(name for name, _ in self.model.named_modules())

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid (rows, cols) at the backbone's image size."""
        return self.grid_at(self.image_size)

    def grid_at(self, image_size: int) -> tuple[int, int]:
        """Patch grid (rows, cols) at ``image_size`` pixels."""
        side = image_size // self.patch_size
        return side, side

    def check_image_size(self, image_size: int) -> None:
        """Refuse resolutions this backbone cannot run at."""
        if image_size % self.patch_size:
            raise BackboneError(f"image size {image_size} is not a multiple of the patch size {self.patch_size}")
        if image_size != self.image_size and not self.interpolates and self.ref.architecture != "dinov2":
            raise BackboneError(f"backbone {self.ref.name!r} runs at {self.image_size}px only, not {image_size}px")

    @property
    def image_processor(self) -> Any:
        """The image part of ``processor`` (a vision-language processor also holds a tokenizer)."""
        return getattr(self.processor, "image_processor", self.processor)

    def target_modules(self, targets: Iterable[str]) -> str:
        """A PEFT ``target_modules`` regex for semantic ``targets`` on this architecture."""
        if self.target_patterns:
            missing = [t for t in targets if t not in self.target_patterns]
            if missing:
                have = ", ".join(self.target_patterns) or "none"
                raise BackboneError(f"backbone {self.ref.name!r} ({self.ref.architecture}) has no {missing[0]!r} "
                                    f"module; it has {have}")
            return "^(?:" + "|".join(self.target_patterns[t] for t in targets) + ")$"
        rels: list[str] = []
        for target in targets:
            names = self.target_names.get(target)
            if not names:
                have = ", ".join(self.target_names) or "none"
                raise BackboneError(
                    f"backbone {self.ref.name!r} ({self.ref.architecture}) has no {target!r} module; it has {have}"
                )
            rels.extend(names)
        alternatives = "|".join(re.escape(r) for r in rels)
        return rf"^{re.escape(self.block_prefix)}\.\d+\.({alternatives})$"

    def token_indices(self, tokens: Iterable[str]) -> tuple[int, ...]:
        """The ids of the tokens ``tokens`` names: exact tokens, ``fnmatch`` globs like ``<loc_*>``, or
        ids as ``id:N`` / ``id:A-B`` (what an imported PEFT adapter records).

        For ``LoraSettings.tokens``: the embedding rows PEFT trains beside the LoRA. Only a base
        that reads text (one whose processor has a tokenizer) has any.
        """
        import fnmatch

        from .token_deltas import ID_PATTERN

        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
            raise BackboneError(f"backbone {self.ref.name!r} ({self.ref.architecture}) reads no text, so it has no "
                                "token embeddings to train; --tokens is for bases like Florence-2")
        vocab = tokenizer.get_vocab()
        found: set[int] = set()
        size = max(len(tokenizer), max(vocab.values(), default=-1) + 1)
        for pattern in tokens:
            if match := ID_PATTERN.fullmatch(pattern):
                first, last = int(match[1]), int(match[2] or match[1])
                if not first <= last < size:
                    raise BackboneError(f"--tokens: {pattern!r} is outside the {size} token ids of backbone "
                                        f"{self.ref.name!r}")
                found.update(range(first, last + 1))
                continue
            ids = [vocab[pattern]] if pattern in vocab else [
                i for token, i in vocab.items() if fnmatch.fnmatchcase(token, pattern)]
            if not ids:
                from .errors import suggest

                raise BackboneError(f"--tokens: {pattern!r} names no token of backbone {self.ref.name!r}."
                                    f"{suggest(pattern, vocab)} Give tokens or globs such as '<loc_*>'")
            found.update(ids)
        return tuple(sorted(found))

    def translate_module_name(self, name: str) -> str:
        """Rename a module path saved for another naming scheme to this model's names.

        ``encoder.layer.3.attention.attention.query`` (transformers 4 ViT) becomes
        ``layers.3.attention.q_proj`` on a transformers-5 ViT. Unknown paths are returned unchanged.
        """
        match = re.match(r"^(?:base_model\.model\.)?(.*?)\.(\d+)\.(.+)$", name)
        if not match:
            return name
        _, index, rel = match.groups()
        target = classify_block_module(rel)
        names = self.target_names.get(target or "", ())
        if len(names) != 1:
            return name
        return f"{self.block_prefix}.{index}.{names[0]}"

    def translate_adapter_key(self, key: str) -> str:
        """Rename one LoRA weight key (``...query.lora_A.weight``) to this model's module names."""
        match = re.match(r"^(.*?)(\.lora_(?:A|B|embedding_A|embedding_B|magnitude_vector)(?:\..*)?)$", key)
        if not match:
            return key
        module, rest = match.groups()
        prefix = "base_model.model." if module.startswith("base_model.model.") else ""
        return prefix + self.translate_module_name(module) + rest

    def export_encoding(self) -> dict[str, Any]:
        """How a standalone loader turns this base's output into the heads' features (``export --merged``).

        ``pooled``: where the pooled vector comes from (``first_token``, ``patch_mean`` or timm's
        ``pooler_output``); ``interpolate_kwarg``: whether the model takes ``interpolate_pos_encoding``.
        """
        return {"pooled": "first_token" if self.num_prefix_tokens else "patch_mean",
                "interpolate_kwarg": self.interpolates}

    def save_image_processor(self, folder: Path) -> None:
        """Write ``preprocessor_config.json`` into ``folder``: what ``AutoImageProcessor`` needs to
        give the pixels this base reads (used by ``export --merged``)."""
        self.processor.save_pretrained(folder)

    def transform(self, image: Image.Image) -> torch.Tensor:
        """One PIL image → normalised (3, H, W) tensor at the backbone's resolution."""
        return self.transform_at(None)(image)

    def transform_at(self, image_size: int | None) -> Callable[[Image.Image], torch.Tensor]:
        """The image transform for ``image_size`` pixels (the backbone's own when None).

        A :class:`~loradex.core.data.transforms.FastTransform` (see :meth:`fast_transform`) where
        there is one; else the processor itself, on one image at a time. Built once per size.
        """
        size = self.image_size if image_size is None else image_size
        if size not in self._transforms:
            if size != self.image_size:
                self.check_image_size(size)
            fast = self.fast_transform(size)
            self._transforms[size] = fast if fast is not None else (
                self._processed if size == self.image_size else functools.partial(self._resized, size=size))
        return self._transforms[size]

    def fast_transform(self, size: int) -> Any:
        """The processor's resize and normalisation as a FastTransform, or None if it does more (crops, pads)."""
        from .data.transforms import fast_transform_for

        return fast_transform_for(self.image_processor, size)

    def _processed(self, image: Image.Image) -> torch.Tensor:
        pixel_values = self.image_processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        return pixel_values[0]

    def _resized(self, image: Image.Image, *, size: int) -> torch.Tensor:
        from PIL import Image as PILImage

        image = image.convert("RGB").resize((size, size), PILImage.BILINEAR)
        options = {"do_resize": False}
        if getattr(self.image_processor, "do_center_crop", None) is not None:
            options["do_center_crop"] = False
        return self.image_processor(images=image, return_tensors="pt", **options)["pixel_values"][0]

    def encode(self, model: nn.Module, pixel_values: torch.Tensor, **kwargs: Any) -> EncoderOutput:
        """Run ``model`` (this base, possibly wrapped by PEFT) and split its tokens."""
        if self.interpolates and pixel_values.shape[-1] != self.image_size:
            kwargs.setdefault("interpolate_pos_encoding", True)
        out = model(pixel_values=pixel_values, **kwargs)
        tokens = out.last_hidden_state
        batch, _, dim = tokens.shape
        rows = pixel_values.shape[-2] // self.patch_size
        cols = pixel_values.shape[-1] // self.patch_size
        patches = tokens[:, self.num_prefix_tokens : self.num_prefix_tokens + rows * cols]
        cls = tokens[:, 0] if self.num_prefix_tokens else patches.mean(dim=1)
        return EncoderOutput(cls=cls, patches=patches.reshape(batch, rows, cols, dim))


def fingerprint(model: nn.Module) -> str:
    """sha256 over the model's weights: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(-1).view(dtype=_byte_dtype()).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def _byte_dtype():
    import torch

    return torch.uint8

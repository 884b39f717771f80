"""Florence-2 bases: transformers' ``Florence2ForConditionalGeneration``, by Hub id, folder or offline preset.

A Florence-2 model reads an image and a task prompt (``<OD>``, ``<CAPTION_TO_PHRASE_GROUNDING>a
red circle``) and writes its answer as text, boxes as ``<loc_N>`` tokens (N in 0..999 of the
image side). LoRA targets: ``attn.q/k/v/o`` and ``mlp.in/out`` of its language model (BART
encoder and decoder), ``vision.attn`` and ``vision.mlp`` of its vision tower (DaViT).

The ``tiny-florence2`` preset is built from a config and a fixed seed, with a tokenizer built
here: the 256 byte symbols of byte-level BPE (no merges, so nothing depends on a trained
vocabulary), the special tokens, Florence-2's task tokens and the 1,000 ``<loc_N>`` tokens —
the same on every machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from loradex.core.backbone import LoadedBackbone, classify_block_module, fingerprint
from loradex.core.errors import BackboneError, first_line

TASK_TOKENS = ("<OD>", "<DENSE_REGION_CAPTION>", "<CAPTION_TO_PHRASE_GROUNDING>", "<CAPTION>", "<DETAILED_CAPTION>",
               "<MORE_DETAILED_CAPTION>", "<REGION_PROPOSAL>", "<OPEN_VOCABULARY_DETECTION>")
LOCATION_BINS = 1000
SPECIAL = ("<s>", "<pad>", "</s>", "<unk>", "<image>")


def florence_tokenizer():
    """The preset's tokenizer: byte-level symbols, specials, task tokens and ``<loc_0>`` … ``<loc_999>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIAL)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(symbol, len(vocab))
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(SPECIAL))
    core.add_tokens([*TASK_TOKENS, *(f"<loc_{i}>" for i in range(LOCATION_BINS))])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})


def target_patterns(model: Any) -> dict[str, str]:
    """Semantic LoRA target → regex of the Linear layers that implement it in a Florence-2 model."""
    from torch import nn

    found: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if ".vision_tower." in f".{name}.":
            leaf = name.rsplit(".", 1)[-1]
            target = "vision.attn" if leaf in ("qkv", "proj") else "vision.mlp" if leaf in ("fc1", "fc2") else None
        elif ".language_model." in f".{name}.":
            target = classify_block_module(".".join(name.split(".")[-2:]))
        else:
            target = None
        if target:
            found.setdefault(target, []).append(name)
    return {t: "|".join(re.escape(n) for n in names) for t, names in found.items()}


def florence_backbone(model: Any, processor: Any, *, name: str, revision: str | None,
                      pretrained: bool = True) -> LoadedBackbone:
    """Freeze a Florence-2 model, fingerprint it and describe it as an encoder-decoder base
    (``pretrained``: learned weights, as a Hub id or folder has; the preset's are drawn from a seed)."""
    from loradex.core.spec import BackboneRef

    config = model.config
    if getattr(config, "model_type", "") != "florence2":
        raise BackboneError(f"backbone {name!r}: not a Florence-2 model (model_type {config.model_type!r})")
    model.eval()
    model.requires_grad_(False)
    model.name_or_path = name
    config._name_or_path = name
    size = processor.image_processor.size
    image_size = int(size.get("height") or size.get("shortest_edge"))
    stride = 1
    for step in config.vision_config.patch_stride:
        stride *= int(step)
    return LoadedBackbone(
        ref=BackboneRef(name=name, revision=revision, fingerprint=fingerprint(model), architecture="florence2"),
        model=model, processor=processor, hidden_size=config.text_config.d_model, patch_size=stride,
        image_size=image_size, num_prefix_tokens=0, kind="encoder-decoder", target_patterns=target_patterns(model),
        pretrained=pretrained,
    )


def load_florence(source: str, *, revision: str | None) -> LoadedBackbone:
    """A Florence-2 model and its processor from a Hub id or a folder (safetensors weights only)."""
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    try:
        model = Florence2ForConditionalGeneration.from_pretrained(source, revision=revision, use_safetensors=True)
        processor = AutoProcessor.from_pretrained(source, revision=revision)
    except (OSError, ValueError, KeyError) as exc:
        raise BackboneError(f"cannot load Florence-2 backbone {source!r}: {first_line(exc)}") from None
    return florence_backbone(model, processor, name=source, revision=revision)


@dataclass(frozen=True)
class FlorencePreset:
    """A small Florence-2 built from a config with a fixed seed, and its processor, all offline."""

    name: str
    description: str
    image_size: int = 128
    seed: int = 0
    default_for: tuple[str, ...] = ()
    """Kinds of task (``encoder-decoder``) that train on this preset when no base is named."""

    def handles(self, source: str) -> bool:
        """Presets answer to their own name only."""
        return source == self.name

    def build(self) -> tuple[Any, Any]:
        """(model, processor), identical on every machine."""
        import torch
        from transformers import BartConfig, Florence2Config, Florence2ForConditionalGeneration, Florence2Processor
        from transformers.models.florence2.configuration_florence2 import Florence2VisionConfig

        tokenizer = florence_tokenizer()
        vision = Florence2VisionConfig(
            depths=(1, 1, 1, 1), embed_dim=(32, 64, 96, 128), num_heads=(1, 2, 3, 4), num_groups=(1, 2, 3, 4),
            patch_size=(7, 3, 3, 3), patch_stride=(4, 2, 2, 1), patch_padding=(3, 1, 1, 1), window_size=4,
            projection_dim=128, drop_path_rate=0.0, max_position_embeddings=50,
        )
        text = BartConfig(
            vocab_size=len(tokenizer), d_model=128, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256, max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id,
            forced_eos_token_id=tokenizer.eos_token_id, dropout=0.0,
        )
        config = Florence2Config(vision_config=vision, text_config=text, image_token_id=tokenizer.image_token_id)
        state = torch.random.get_rng_state()
        try:
            torch.manual_seed(self.seed)
            model = Florence2ForConditionalGeneration(config)
        finally:
            torch.random.set_rng_state(state)
        model.generation_config.max_new_tokens = 256
        grid = self.image_size // 16
        processor = Florence2Processor(image_processor=_image_processor(self.image_size, grid * grid + 1),
                                       tokenizer=tokenizer)
        return model, processor

    def load(self, source: str | None = None, *, revision: str | None = None) -> LoadedBackbone:
        """Build the preset; ``revision`` must be None."""
        if revision is not None:
            raise BackboneError(f"backbone {self.name!r} is a built-in preset and has no revisions")
        model, processor = self.build()
        return florence_backbone(model, processor, name=self.name, revision=None, pretrained=False)


def _image_processor(size: int, tokens: int):
    import transformers

    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    processor = cls(size={"height": size, "width": size}, do_center_crop=False, image_mean=[0.5] * 3,
                    image_std=[0.5] * 3, do_convert_rgb=True)
    processor.image_seq_length = tokens
    return processor


FLORENCE_PRESETS = (
    FlorencePreset(name="tiny-florence2", default_for=("encoder-decoder",),
                   description="Florence-2 (DaViT + BART, 1.9M params) at 128px, random init: generative tasks on a CPU"),
)

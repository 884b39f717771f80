"""Model inputs of Florence-2 from task prompts, and training labels from answer texts.

``<image>`` × (the number of image tokens), then ``<s>``, the prompt as Florence-2's processor
spells it out (``<OD>`` → "Locate the objects with category name in the image."), ``</s>``:
exactly what ``Florence2Processor`` builds, from pixels that are already tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loradex.core.errors import DataError


def max_positions(model: Any) -> int | None:
    """How many tokens the language model's encoder and decoder take (None if its config does not say)."""
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", config)
    return getattr(text, "max_position_embeddings", None)


def prompt_inputs(processor: Any, prefixes: Sequence[str], device: Any, *, limit: int | None = None
                  ) -> dict[str, Any]:
    """``input_ids`` and ``attention_mask`` for ``prefixes`` (padded), on ``device``.

    ``limit``: the encoder's positions; a prompt that does not fit with the image tokens is a
    DataError naming it (the model would fail with an IndexError deep inside BART).
    """
    tokenizer = processor.tokenizer
    image = processor.image_token * processor.num_image_tokens
    texts = [image + tokenizer.bos_token + p + tokenizer.eos_token for p in processor._construct_prompts(list(prefixes))]
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    if limit is not None and encoded["input_ids"].shape[1] > limit:
        lengths = encoded["attention_mask"].sum(1).tolist()
        worst = max(range(len(lengths)), key=lengths.__getitem__)
        raise DataError(f"prompt {prefixes[worst][:60]!r}{'…' if len(prefixes[worst]) > 60 else ''} is "
                        f"{lengths[worst] - processor.num_image_tokens} tokens; with the image's "
                        f"{processor.num_image_tokens} the model takes {limit}: shorten the text")
    return {k: v.to(device) for k, v in encoded.items()}


def label_ids(processor: Any, suffixes: Sequence[str], device: Any, *, limit: int | None = None):
    """Token ids of the answers followed by ``</s>``, padding set to -100 (ignored by the loss).

    ``limit``: the decoder's positions; a longer answer is a DataError naming it.
    """
    tokenizer = processor.tokenizer
    encoded = tokenizer([s + tokenizer.eos_token for s in suffixes], return_tensors="pt", padding=True,
                        add_special_tokens=False)
    if limit is not None and encoded["input_ids"].shape[1] > limit:
        lengths = encoded["attention_mask"].sum(1).tolist()
        worst = max(range(len(lengths)), key=lengths.__getitem__)
        raise DataError(f"answer {suffixes[worst][:60]!r}… is {lengths[worst]} tokens, more than the {limit} the "
                        "model's decoder takes: split the image's objects over fewer per record")
    labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
    return labels.to(device)

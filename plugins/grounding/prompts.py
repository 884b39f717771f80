"""Model inputs of Florence-2 from task prompts, and training labels from answer texts.

``<image>`` × (the number of image tokens), then ``<s>``, the prompt as Florence-2's processor
spells it out (``<OD>`` → "Locate the objects with category name in the image."), ``</s>``:
exactly what ``Florence2Processor`` builds, from pixels that are already tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def prompt_inputs(processor: Any, prefixes: Sequence[str], device: Any) -> dict[str, Any]:
    """``input_ids`` and ``attention_mask`` for ``prefixes`` (padded), on ``device``."""
    tokenizer = processor.tokenizer
    image = processor.image_token * processor.num_image_tokens
    texts = [image + tokenizer.bos_token + p + tokenizer.eos_token for p in processor._construct_prompts(list(prefixes))]
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return {k: v.to(device) for k, v in encoded.items()}


def label_ids(processor: Any, suffixes: Sequence[str], device: Any):
    """Token ids of the answers followed by ``</s>``, padding set to -100 (ignored by the loss)."""
    tokenizer = processor.tokenizer
    encoded = tokenizer([s + tokenizer.eos_token for s in suffixes], return_tensors="pt", padding=True,
                        add_special_tokens=False)
    labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
    return labels.to(device)

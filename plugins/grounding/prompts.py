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
        raise DataError(prompt_too_long(processor, prefixes[worst], lengths[worst], limit))
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
        raise DataError(answer_too_long(suffixes[worst], lengths[worst], limit))
    labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
    return labels.to(device)


def prompt_too_long(processor: Any, prefix: str, tokens: int, limit: int) -> str:
    """The error line for a prompt of ``tokens`` (image tokens included) over the encoder's ``limit``."""
    return (f"prompt {prefix[:60]!r}{'…' if len(prefix) > 60 else ''} is {tokens - processor.num_image_tokens} "
            f"tokens; with the image's {processor.num_image_tokens} the model takes {limit}: shorten the text")


def answer_too_long(suffix: str, tokens: int, limit: int) -> str:
    """The error line for an answer of ``tokens`` over the decoder's ``limit``."""
    return (f"answer {suffix[:60]!r}{'…' if len(suffix) > 60 else ''} is {tokens} tokens, more than the {limit} the "
            "model's decoder takes: split the image's objects over fewer per record")


def prompt_lengths(processor: Any, prefixes: Sequence[str]) -> list[int]:
    """Encoder tokens of each prompt as :func:`prompt_inputs` builds it: image tokens, ``<s>``, prompt, ``</s>``."""
    ids = processor.tokenizer(processor._construct_prompts(list(prefixes)), add_special_tokens=False)["input_ids"]
    return [len(i) + 2 + processor.num_image_tokens for i in ids]


def check_record_lengths(processor: Any, records: Sequence[Any], limit: int | None) -> None:
    """Every record's prompt (with the image tokens) and answer within the model's ``limit`` positions.

    Run when the data is read, so that a long record is refused before training starts, naming
    its file and line, rather than in the middle of an epoch.
    """
    if limit is None or not records:
        return
    prompts = prompt_lengths(processor, [r.prefix for r in records])
    answers = [len(i) + 1 for i in processor.tokenizer([r.suffix for r in records], add_special_tokens=False)["input_ids"]]
    for record, prompt, answer in zip(records, prompts, answers, strict=True):
        if prompt > limit:
            raise DataError(f"{record.where}: " + prompt_too_long(processor, record.prefix, prompt, limit))
        if answer > limit:  # the answer and </s>
            raise DataError(f"{record.where}: " + answer_too_long(record.suffix, answer, limit))

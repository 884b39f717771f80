"""Trained token embeddings (PEFT's ``trainable_token_indices``) as data: read, summed, written back.

A LoRA that also trains some token embeddings (Florence-2's ``<loc_*>`` tokens) keeps them in
PEFT's format: ``adapter_config.json`` lists the token ids, and ``adapter_model.safetensors``
holds ``<embedding module>.token_adapter.trainable_tokens_delta`` of shape (ids, dim), row i
being added to embedding row ``ids[i]`` (and, where the output projection is tied to the
embedding, to that row of the output too). Merging and compressing handle these rows beside
the LoRA factors: this module splits them off, sums them and writes them back.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ArtifactError

if TYPE_CHECKING:  # torch is imported where tensors are made: the CLI's help must not load it
    import torch

CONFIG_KEY = "trainable_token_indices"
"""The ``adapter_config.json`` key that lists the trained token ids."""
ID_PATTERN = re.compile(r"id:(\d+)(?:-(\d+))?")
"""A token named by its id (``id:261``) or a range of ids (``id:261-1260``), in ``LoraSettings.tokens``."""
TOKEN_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.token_adapter\.trainable_tokens_delta$")
"""A trained-token delta's key in the safetensors file."""


@dataclass(frozen=True)
class TokenDelta:
    """The trained rows of one embedding: ``delta[i]`` is added to row ``indices[i]``."""

    indices: tuple[int, ...]
    delta: torch.Tensor

    def rows(self) -> dict[int, torch.Tensor]:
        """Token id → the change of its embedding row."""
        return {index: self.delta[i] for i, index in enumerate(self.indices)}


def has_tokens(config: Mapping[str, Any]) -> bool:
    """Whether an ``adapter_config.json`` trains token embeddings."""
    return bool(config.get(CONFIG_KEY))


def split_tokens(config: Mapping[str, Any], state: Mapping[str, torch.Tensor], *, where: str = "adapter",
                 ) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, TokenDelta]]:
    """(config without token ids, the LoRA tensors, embedding module → :class:`TokenDelta`).

    Raises ArtifactError, naming ``where``, for delta rows that do not match the listed ids.
    """
    listed = config.get(CONFIG_KEY)
    lora_state = {k: v for k, v in state.items() if not TOKEN_KEY.match(k)}
    found = {m["module"]: value for key, value in state.items() if (m := TOKEN_KEY.match(key))}
    if found and not listed:
        raise ArtifactError(f"{where}: holds trained token rows ({next(iter(found))}) but adapter_config.json "
                            f"lists no {CONFIG_KEY}")
    if listed and not found:
        raise ArtifactError(f"{where}: adapter_config.json lists {CONFIG_KEY} but the weights hold no token rows")
    tokens: dict[str, TokenDelta] = {}
    for module, delta in found.items():
        indices = listed_indices(listed, module, where)
        if delta.ndim != 2 or delta.shape[0] != len(indices):
            raise ArtifactError(f"{where}: the token rows of {module!r} have shape {tuple(delta.shape)}, "
                                f"but {CONFIG_KEY} lists {len(indices)} tokens")
        tokens[module] = TokenDelta(indices=tuple(indices), delta=delta)
    return {k: v for k, v in config.items() if k != CONFIG_KEY}, lora_state, tokens


def listed_indices(listed: Any, module: str, where: str) -> list[int]:
    """The token ids that ``adapter_config.json``'s ``trainable_token_indices`` (``listed``) gives ``module``."""
    if isinstance(listed, (list, tuple)):
        values = listed
    elif isinstance(listed, Mapping):
        name = next((k for k in listed if module == k or module.endswith("." + str(k))), None)
        if name is None:
            raise ArtifactError(f"{where}: {CONFIG_KEY} names no ids for the token rows of {module!r}")
        values = listed[name]
    else:
        raise ArtifactError(f"{where}: {CONFIG_KEY} must be a list of token ids or a mapping of them, got {listed!r}")
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in values):
        raise ArtifactError(f"{where}: {CONFIG_KEY} must hold token ids (non-negative integers)")
    return list(values)


def sum_tokens(parts: Sequence[Mapping[str, TokenDelta]], weights: Sequence[float]) -> dict[str, TokenDelta]:
    """Σ wᵢ·δᵢ row by row over the union of the trained ids (an id one part does not train adds 0).

    A token delta is added to the embedding, so this is exact for every merge method.
    """
    import torch

    out: dict[str, TokenDelta] = {}
    for module in sorted({m for part in parts for m in part}):
        rows: dict[int, torch.Tensor] = {}
        for part, weight in zip(parts, weights):
            if module in part:
                for index, row in part[module].rows().items():
                    change = row.float() * weight
                    rows[index] = rows[index] + change if index in rows else change
        indices = tuple(sorted(rows))
        out[module] = TokenDelta(indices=indices, delta=torch.stack([rows[i] for i in indices]))
    return out


def tokens_to_peft(tokens: Mapping[str, TokenDelta]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(``adapter_config.json`` entries, safetensors tensors) for ``tokens``, as PEFT writes them.

    One embedding (the usual case, tied or not) is written as a plain id list, which PEFT
    applies to the model's input embedding; several as a mapping of module path to ids.
    """
    if not tokens:
        return {}, {}
    state = {f"base_model.model.{m}.token_adapter.trainable_tokens_delta": t.delta.contiguous()
             for m, t in tokens.items()}
    if len(tokens) == 1:
        (only,) = tokens.values()
        return {CONFIG_KEY: list(only.indices)}, state
    return {CONFIG_KEY: {m: list(t.indices) for m, t in tokens.items()}}, state


def id_ranges(ids: Sequence[int]) -> tuple[str, ...]:
    """Token ids as ``LoraSettings.tokens`` entries, runs of consecutive ids joined: ``("id:261-1260", "id:5")``."""
    out: list[str] = []
    ordered = sorted(set(ids))
    start = previous = None
    for index in [*ordered, None]:
        if start is not None and (index is None or index != previous + 1):
            out.append(f"id:{start}" if start == previous else f"id:{start}-{previous}")
            start = None
        if index is not None and start is None:
            start = index
        previous = index
    return tuple(out)

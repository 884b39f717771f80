"""Compress an adapter: truncated SVD of every update (Eckart–Young), half-precision storage.

``rank=k`` keeps the best rank-k approximation of each layer's ΔW = s·B·A; ``energy=e`` keeps,
per layer, the fewest singular values whose squares add up to ``e`` of ‖ΔW‖_F² (so ranks differ
between layers, written as PEFT's ``rank_pattern``); ``dtype`` stores the factors in bf16 or
fp16. Every layer reports its relative error and its cosine similarity to the original update:
the comparison of an SVD baseline with the learned low-rank factors that one reference system
ran by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from loradex.core.artifact import ADAPTER_WEIGHTS, head_file, head_files, write_adapter
from loradex.core.errors import ConfigError, RegistryError
from loradex.core.lora_runtime import LoraFactors
from loradex.core.token_deltas import TokenDelta

from loradex.registry.derive import lora_algebra as algebra
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class Compressed:
    """A compressed adapter folder and what compressing cost, layer by layer."""

    folder: Path
    layers: list[algebra.LayerError]
    size_before: int
    size_after: int
    rank: int | None
    energy: float | None
    dtype: str | None

    def args(self) -> dict[str, Any]:
        """How it was made, for the version's lineage."""
        worst = max((e.relative_error for e in self.layers), default=0.0)
        return {"rank": self.rank, "energy": self.energy, "dtype": self.dtype,
                "size_before": self.size_before, "size_after": self.size_after,
                "max_relative_error": round(worst, 6),
                "min_cosine": round(min((e.cosine for e in self.layers), default=1.0), 6),
                "ranks": sorted({e.rank_after for e in self.layers})}


def check_request(*, rank: int | None, energy: float | None, dtype: str | None, adapter_rank: int) -> None:
    """Refuse options that cannot be honoured, naming the option."""
    if rank is None and energy is None and dtype is None:
        raise ConfigError("compress needs --rank K, --energy E or --dtype bf16|fp16")
    if rank is not None and energy is not None:
        raise ConfigError("give --rank or --energy, not both")
    if rank is not None:
        if rank < 1:
            raise ConfigError(f"--rank must be a positive integer, got {rank}")
        if rank > adapter_rank:
            raise ConfigError(f"--rank {rank} is above the adapter's rank {adapter_rank}; compressing can only lower it")
    if energy is not None and not 0 < energy <= 1:
        raise ConfigError(f"--energy must be in (0, 1], got {energy}")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def compress_layers(layers: Mapping[str, LoraFactors], *, rank: int | None, energy: float | None,
                    ) -> tuple[dict[str, LoraFactors], list[algebra.LayerError]]:
    """Truncate every layer to ``rank`` (or to the rank that keeps ``energy``), with each layer's error."""
    out, errors = {}, []
    for module, f in layers.items():
        k = rank if rank is not None else algebra.rank_for_energy(f, energy) if energy is not None else f.rank
        out[module], error = algebra.truncate(f, k)
        errors.append(algebra._named(error, module))
    return out, errors


def build(source: Path, config: Mapping[str, Any], layers: Mapping[str, LoraFactors], spec: Any, folder: Path, *,
          rank: int | None, energy: float | None, dtype: str | None, name: str | None = None,
          kernels: Mapping[str, tuple[int, ...]] | None = None, tokens: Mapping[str, TokenDelta] | None = None,
          ) -> Compressed:
    """Write the compressed adapter of the folder ``source`` (its LoRA ``layers``) into ``folder``.

    ``kernels``: the conv layers' kernel shapes (``MergeInput.kernels``), to write their factors back as convs.
    ``tokens``: its trained token rows, kept as they are (no rank to cut), stored in ``dtype`` if given.
    """
    check_request(rank=rank, energy=energy, dtype=dtype, adapter_rank=max(f.rank for f in layers.values()))
    if rank is None and energy is None:
        new_layers = {m: LoraFactors(a=f.a, b=f.b * f.scale, scale=1.0) for m, f in layers.items()}
        errors = [algebra.LayerError(module=m, rank_before=f.rank, rank_after=f.rank, relative_error=0.0, cosine=1.0,
                                     energy=1.0) for m, f in layers.items()]
    else:
        new_layers, errors = compress_layers(layers, rank=rank, energy=energy)
    if dtype is not None:
        new_layers = algebra.cast(new_layers, DTYPES[dtype])
        errors = _with_storage_error(layers, new_layers, errors)
    if dtype is not None and tokens:
        tokens = {m: replace(t, delta=t.delta.to(DTYPES[dtype])) for m, t in tokens.items()}
    new_config, state = algebra.to_peft(new_layers, base_config=config, per_layer_rank=energy is not None,
                                           kernels=kernels, tokens=tokens)
    new_rank = int(new_config["r"])
    new_spec = spec.replace(lora=replace(spec.lora, rank=new_rank, alpha=new_rank))
    write_adapter(folder, new_spec, lora_config=new_config, lora_state=state, name=name,
                  heads={head.name: source / head_file(spec, head) for head in spec.head_specs()})  # heads unchanged
    size = lambda f: sum((f / n).stat().st_size for n in (ADAPTER_WEIGHTS, *head_files(spec)))  # noqa: E731
    return Compressed(folder=folder, layers=errors, size_before=size(source), size_after=size(folder), rank=rank,
                      energy=energy, dtype=dtype)


def _with_storage_error(original: Mapping[str, LoraFactors], stored: Mapping[str, LoraFactors],
                        errors: list[algebra.LayerError]) -> list[algebra.LayerError]:
    """Errors measured on what is actually stored (after rounding to half precision)."""
    out = []
    for error in errors:
        reference = original[error.module].delta()
        got = stored[error.module].delta()
        norm = float(reference.norm())
        rel = float((got - reference).norm()) / norm if norm else 0.0
        cos = float((got * reference).sum()) / (float(got.norm()) * norm) if norm and float(got.norm()) else 1.0
        out.append(replace(error, relative_error=rel, cosine=cos))
    return out


def check_layers(layers: Mapping[str, LoraFactors], ref: str) -> None:
    """Refuse an adapter without any LoRA layer."""
    if not layers:
        raise RegistryError(f"{ref} has no LoRA layers to compress")

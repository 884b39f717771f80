"""Many LoRA adapters on one frozen base, each applied to its own slice of a batch.

A batch is sorted so that every adapter's rows are contiguous; a :class:`Segment` names the
adapter of rows ``start:stop``. Each targeted ``nn.Linear`` of the base keeps its weights and
gets a patched forward. Consecutive small segments share ONE base matmul, then each adds its
low-rank update ``scale * (x[s:e] @ A.T) @ B.T`` to its slice of the output in place; a large
segment instead runs on the merged weight ``W + scale * B @ A``, built for the call and thrown
away, which costs less than the low-rank product on many rows and keeps no copy of W. Rows of
a slice are contiguous, so nothing is gathered or scattered (PEFT's ``adapter_names`` path
indexes every sub-batch with a list of row numbers); see bench/multitask.py.

Adapters are read from PEFT's own files (``adapter_config.json`` and
``adapter_model.safetensors``), so the on-disk format is PEFT's. What this fast path does not
cover (DoRA, LoRA biases, ``modules_to_save``, non-Linear targets, ...) is named by
:func:`unsupported_reason`; callers fall back to PEFT for those.

Attaching is a dictionary update per layer: it does not walk the model and does not slow
down as adapters accumulate. Removing an adapter drops its tensors (and a layer's hook once
no adapter uses it), so its memory is freed and the base is left exactly as it was.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import ArtifactError


@dataclass(frozen=True)
class Segment:
    """Rows ``start:stop`` of a batch run through adapter ``adapter`` (None: the bare base)."""

    adapter: str | None
    start: int
    stop: int


_PLAN: ContextVar[tuple[Segment, ...]] = ContextVar("loradex_lora_plan", default=())


@dataclass(frozen=True)
class LoraFactors:
    """One adapter's update of one layer: ``scale * B @ A`` with A (r, in) and B (out, r)."""

    a: torch.Tensor
    b: torch.Tensor
    scale: float

    @property
    def rank(self) -> int:
        """The rank r of this update."""
        return self.a.shape[0]

    def delta(self) -> torch.Tensor:
        """The full (out, in) weight update this adapter adds to the layer."""
        return (self.b.float() @ self.a.float()) * self.scale


class _PatchedLinear:
    """The adapters of one Linear layer, and the forward that applies them segment by segment.

    Installed as the layer's instance ``forward`` (as accelerate installs its hooks), so the
    module tree and state dict of the base stay unchanged; ``remove`` restores the original.
    """

    def __init__(self, module: nn.Linear) -> None:
        self.module = module
        self.adapters: dict[str, LoraFactors] = {}
        out_features, in_features = module.weight.shape
        # A segment of more rows than this runs on a merged weight W + s*B@A built for this
        # call: cheaper than the low-rank product on every row once rows*(in+out) > in*out.
        self.merge_rows = max(1, (in_features * out_features) // (in_features + out_features))
        module.forward = self.forward  # shadows nn.Linear.forward on this instance only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = _PLAN.get()
        module = self.module
        weight, bias = module.weight, module.bias
        if not plan:
            return nn.functional.linear(x, weight, bias)
        width_in, width_out = weight.shape[1], weight.shape[0]
        if len(plan) == 1:  # the whole pass through one adapter: rows need not be counted (windows, beams)
            factors = self.adapters.get(plan[0].adapter)  # type: ignore[arg-type]
            if factors is None:
                return nn.functional.linear(x, weight, bias)
            if x.numel() // width_in > self.merge_rows:
                return nn.functional.linear(x, torch.addmm(weight, factors.b, factors.a, alpha=factors.scale), bias)
            out = nn.functional.linear(x, weight, bias)
            out.view(-1, width_out).addmm_(x.reshape(-1, width_in) @ factors.a.t(), factors.b.t(), alpha=factors.scale)
            return out
        if not any(seg.adapter in self.adapters for seg in plan):
            return nn.functional.linear(x, weight, bias)
        if plan[0].start != 0 or plan[-1].stop != x.shape[0]:
            raise RuntimeError(f"segments cover rows {plan[0].start}:{plan[-1].stop} of a batch of {x.shape[0]}: "
                               "a layer that regroups the batch (windows, beams) can run one adapter at a time only")
        out = x.new_empty((*x.shape[:-1], width_out))
        rows_per_item = x.numel() // (width_in * x.shape[0]) if x.shape[0] else 1
        pending: list[tuple[int, int, LoraFactors | None]] = []  # a run of segments sharing one base matmul

        def flush() -> None:
            if not pending:
                return
            start, stop = pending[0][0], pending[-1][1]
            _affine(x[start:stop].reshape(-1, width_in), weight.t(), bias, out[start:stop].view(-1, width_out))
            if _grouped(x, out, pending):
                pending.clear()
                return
            for s, e, factors in pending:
                if factors is not None:  # the output slice is a view of contiguous rows: no scatter
                    low = x[s:e].reshape(-1, width_in) @ factors.a.t()
                    out[s:e].view(-1, width_out).addmm_(low, factors.b.t(), alpha=factors.scale)
            pending.clear()

        for segment in plan:
            factors = self.adapters.get(segment.adapter) if segment.adapter is not None else None
            if factors is not None and (segment.stop - segment.start) * rows_per_item > self.merge_rows:
                flush()
                merged = torch.addmm(weight, factors.b, factors.a, alpha=factors.scale)
                _affine(x[segment.start : segment.stop].reshape(-1, width_in), merged.t(), bias,
                        out[segment.start : segment.stop].view(-1, width_out))
            else:
                pending.append((segment.start, segment.stop, factors))
        flush()
        return out

    def remove(self) -> None:
        """Give the layer its own forward back and drop every adapter's factors."""
        self.module.__dict__.pop("forward", None)
        self.adapters.clear()


GROUPED_MIN_SEGMENTS = 4
"""From this many equal segments on, their low-rank updates run as two batched matmuls."""


def _grouped(x: torch.Tensor, out: torch.Tensor, pending: Sequence[tuple[int, int, LoraFactors | None]]) -> bool:
    """Add the low-rank updates of many equal-sized segments of one rank with two ``bmm`` calls.

    A server's batches hold one image per adapter: one small matmul pair per segment costs
    more in call overhead than in arithmetic. When every pending segment has an adapter, the
    same number of rows and the same rank, the factors are stacked and applied at once (the
    BGMV idea of S-LoRA and LoRAX). Returns False, doing nothing, when the segments do not fit.
    """
    if len(pending) < GROUPED_MIN_SEGMENTS:
        return False
    first_start, first_stop, first = pending[0]
    length = first_stop - first_start
    if first is None:
        return False
    rank = first.rank
    for start, stop, factors in pending:
        if factors is None or stop - start != length or factors.rank != rank:
            return False
    count = len(pending)
    start, stop = pending[0][0], pending[-1][1]
    width_in, width_out = x.shape[-1], out.shape[-1]
    rows = x[start:stop].reshape(count, -1, width_in)
    a = torch.stack([f.a for _, _, f in pending])  # (S, r, in)
    b = torch.stack([f.b for _, _, f in pending])  # (S, out, r)
    low = torch.bmm(rows, a.transpose(1, 2))
    scales = [f.scale for _, _, f in pending]  # type: ignore[union-attr]
    if any(scale != scales[0] for scale in scales):
        low.mul_(torch.tensor(scales, dtype=low.dtype, device=low.device).view(count, 1, 1))
        alpha = 1.0
    else:
        alpha = scales[0]
    out[start:stop].view(count, -1, width_out).baddbmm_(low, b.transpose(1, 2), alpha=alpha)
    return True


def _affine(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> None:
    """``out = x @ weight_t + bias``, written into ``out``."""
    if bias is None:
        torch.mm(x, weight_t, out=out)
    else:
        torch.addmm(bias, x, weight_t, out=out)


class LoraBank:
    """The LoRA adapters attached to one base model, applied per batch segment.

    ``bank.add(name, factors)`` attaches (``factors`` maps module paths of the base to
    :class:`LoraFactors`); ``with bank.segments(plan): model(...)`` runs a batch whose rows are
    split between adapters as ``plan`` says; ``bank.remove(name)`` detaches and frees.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
        self._patched: dict[str, _PatchedLinear] = {}
        self._layers_of: dict[str, tuple[str, ...]] = {}

    @property
    def names(self) -> list[str]:
        """Names of the attached adapters, in attachment order."""
        return list(self._layers_of)

    def __contains__(self, name: object) -> bool:
        return name in self._layers_of

    def linear(self, module_name: str) -> nn.Linear | None:
        """The base's Linear layer at ``module_name`` (None if there is none)."""
        return self._linears.get(module_name)

    def add(self, name: str, factors: Mapping[str, LoraFactors]) -> None:
        """Attach adapter ``name``; ``factors`` must name Linear layers of the base with fitting shapes."""
        if name in self._layers_of:
            raise ArtifactError(f"an adapter named {name!r} is already attached")
        checked: dict[str, LoraFactors] = {}
        for module_name, f in factors.items():
            layer = self._linears.get(module_name)
            if layer is None:
                raise ArtifactError(f"adapter {name!r}: the base has no Linear layer {module_name!r}")
            out_features, in_features = layer.weight.shape
            if f.a.ndim != 2 or f.b.ndim != 2 or f.a.shape[1] != in_features or f.b.shape[0] != out_features \
                    or f.a.shape[0] != f.b.shape[1]:
                raise ArtifactError(
                    f"adapter {name!r}: LoRA factors of {module_name!r} have shapes A {tuple(f.a.shape)}, "
                    f"B {tuple(f.b.shape)}; the layer is {in_features} -> {out_features}"
                )
            weight = layer.weight
            checked[module_name] = LoraFactors(
                a=f.a.detach().to(device=weight.device, dtype=weight.dtype).contiguous(),
                b=f.b.detach().to(device=weight.device, dtype=weight.dtype).contiguous(),
                scale=float(f.scale),
            )
        for module_name, f in checked.items():
            patch = self._patched.get(module_name)
            if patch is None:
                patch = self._patched[module_name] = _PatchedLinear(self._linears[module_name])
            patch.adapters[name] = f
        self._layers_of[name] = tuple(checked)

    def remove(self, name: str) -> None:
        """Detach adapter ``name``: its tensors are dropped, unused layers restored."""
        for module_name in self._layers_of.pop(name):
            patch = self._patched[module_name]
            patch.adapters.pop(name, None)
            if not patch.adapters:
                patch.remove()
                del self._patched[module_name]

    def clear(self) -> None:
        """Detach every adapter; the base is as it was before the first ``add``."""
        for name in list(self._layers_of):
            self.remove(name)

    def factors(self, name: str) -> dict[str, LoraFactors]:
        """The layers adapter ``name`` changes and its factors there."""
        return {m: self._patched[m].adapters[name] for m in self._layers_of[name]}

    def nbytes(self, name: str | None = None) -> int:
        """Bytes of LoRA factors held (of one adapter, or of all)."""
        chosen = [name] if name is not None else self.names
        return sum(f.a.nbytes + f.b.nbytes for n in chosen for f in self.factors(n).values())

    def to(self, device: torch.device | str) -> None:
        """Move every adapter's factors to ``device`` (after the base was moved there)."""
        for patch in self._patched.values():
            for name, f in list(patch.adapters.items()):
                patch.adapters[name] = LoraFactors(a=f.a.to(device), b=f.b.to(device), scale=f.scale)

    @staticmethod
    @contextlib.contextmanager
    def segments(plan: Sequence[Segment]) -> Iterator[None]:
        """Within this block, forward passes apply adapters to the rows ``plan`` gives them."""
        token = _PLAN.set(tuple(plan))
        try:
            yield
        finally:
            _PLAN.reset(token)


def contiguous_plan(names: Sequence[str | None]) -> tuple[list[int], list[Segment]]:
    """Order rows so each adapter's are contiguous: (row order, segments of the reordered batch).

    ``names[i]`` is the adapter of row i. Rows keep their relative order within an adapter;
    adapters appear in order of first use.
    """
    groups: dict[str | None, list[int]] = {}
    for index, name in enumerate(names):
        groups.setdefault(name, []).append(index)
    order: list[int] = []
    plan: list[Segment] = []
    for name, rows in groups.items():
        plan.append(Segment(name, len(order), len(order) + len(rows)))
        order.extend(rows)
    return order, plan


# --------------------------------------------------------------------------- PEFT files -> factors

_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>A|B)(?:\.[^.]+)?\.weight$")


def unsupported_reason(config: Mapping[str, Any]) -> str | None:
    """Why the fast path cannot run this PEFT ``adapter_config.json`` (None: it can)."""
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        return f"its PEFT type is {config.get('peft_type')}, not LORA"
    if config.get("use_dora"):
        return "it uses DoRA"
    if config.get("lora_bias"):
        return "it has LoRA bias terms"
    if config.get("bias", "none") not in (None, "none"):
        return f"it trains biases (bias={config.get('bias')!r})"
    if config.get("modules_to_save"):
        return "it saves whole modules (modules_to_save)"
    if config.get("fan_in_fan_out"):
        return "its layers are fan_in_fan_out (Conv1D)"
    if config.get("alora_invocation_tokens") or config.get("use_qalora"):
        return "it is an aLoRA / QA-LoRA variant"
    if config.get("layer_replication"):
        return "it uses layer replication"
    if config.get("trainable_token_indices"):
        return "it trains token embeddings"
    return None


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: the first key that matches the module path's end."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def factors_from_peft(config: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> dict[str, LoraFactors]:
    """Per module path, the LoRA factors in a PEFT adapter state dict, scaled as PEFT scales them.

    A conv layer's factors come back flattened to matrices (see :func:`conv_kernels`). Raises
    ArtifactError for a key that is not a LoRA A/B weight (embeddings, biases, magnitudes), or
    a layer with only one of its two factors.
    """
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = _KEY.match(key)
        if not match:
            raise ArtifactError(f"weight {key!r} is not a LoRA A/B matrix of a Linear layer")
        parts.setdefault(match["module"], {})[match["part"]] = tensor
    rank, alpha = int(config.get("r", 8)), float(config.get("lora_alpha", 8))
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora"))
    out: dict[str, LoraFactors] = {}
    for module, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise ArtifactError(f"layer {module!r} has lora_{next(iter(ab))} but not its partner")
        a, b = ab["A"], ab["B"]
        if a.ndim == 4 and b.ndim == 4 and tuple(b.shape[2:]) == (1, 1):  # a conv: B is 1x1, A holds the kernel
            a, b = a.flatten(1), b.flatten(1)
        if a.ndim != 2 or b.ndim != 2:
            raise ArtifactError(f"layer {module!r}: LoRA factors of shapes {tuple(a.shape)} and {tuple(b.shape)} are "
                                "neither a Linear's matrices nor a convolution's kernel and 1x1 pair")
        r = int(_pattern_value(rank_pattern, module, rank))
        layer_alpha = float(_pattern_value(alpha_pattern, module, alpha))
        if a.shape[0] != r:
            raise ArtifactError(
                f"layer {module!r}: lora_A has rank {a.shape[0]} but adapter_config.json says r={r}"
            )
        scale = layer_alpha / math.sqrt(r) if rslora else layer_alpha / r
        out[module] = LoraFactors(a=a, b=b, scale=scale)
    return out


def conv_kernels(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Per conv layer of a PEFT state dict, lora_A's shape after its rank: ``(in, kh, kw)``.

    :func:`factors_from_peft` flattens a conv's factors into matrices (``A`` to ``(r, in*kh*kw)``,
    ``B`` to ``(out, r)``), so merges and compression treat them like any layer; writing them
    back (``to_peft(kernels=...)``) restores the kernel shape.
    """
    out: dict[str, tuple[int, ...]] = {}
    for key, tensor in state.items():
        match = _KEY.match(key)
        if match and match["part"] == "A" and tensor.ndim == 4:
            out[match["module"]] = tuple(tensor.shape[1:])
    return out


def split_plan(plan: Sequence[Segment], max_rows: int) -> list[tuple[int, int, list[Segment]]]:
    """Cut a plan into chunks of at most ``max_rows`` rows: ``(start, stop, segments)`` per chunk.

    Each chunk's segments count rows from the chunk's start. Large batches run faster on a CPU
    in chunks (bench/multitask.py: 256 tiny-vit rows at once ran at 0.7x of 8 chunks of 32).
    """
    if max_rows < 1:
        raise ValueError("max_rows must be at least 1")
    total = plan[-1].stop if plan else 0
    chunks = []
    for start in range(0, total, max_rows):
        stop = min(start + max_rows, total)
        inside = [Segment(s.adapter, max(s.start, start) - start, min(s.stop, stop) - start)
                  for s in plan if s.start < stop and s.stop > start]
        chunks.append((start, stop, inside))
    return chunks

"""LoRA updates as matrices: exact sums, truncated SVDs, aligned merges, and PEFT's factor-wise merges.

A LoRA layer adds ``ΔW = s·B·A`` (A: r×in, B: out×r, s = alpha/r). Every function here
takes and returns ``{module path: LoraFactors}``; :func:`to_peft` writes them back in PEFT's
format (one rank for every layer, zero-padded where layers differ, alpha = rank so s = 1),
so plain PEFT loads the result.

- :func:`merge_cat` is exact: A's stacked, B's side by side, ``ΔW = Σ wᵢ·ΔWᵢ`` with rank Σ rᵢ.
- :func:`truncate` is the best rank-k approximation of ΔW (Eckart–Young), computed from the
  factors (two thin QRs and an r×r SVD) without ever forming ΔW.
- :func:`merge_svd` truncates the exact sum to a rank and reports what that costs.
- :func:`merge_knots` aligns the updates first (KnOTS, Stoica et al. 2025): the SVD of the
  concatenation ``[ΔW₁ … ΔW_K] = U·Σ·[V₁ᵀ … V_Kᵀ]`` gives every task the same basis UΣ, and the
  task-specific Vᵢ are merged with TIES there.
- :func:`merge_factorwise` is PEFT's ``add_weighted_adapter`` for linear / ties / dare_* /
  magnitude_prune: it combines the A's and the B's separately, so the merged update carries
  cross terms (A₁+A₂)(B₁+B₂) — an approximation, offered under those names because PEFT users
  know them.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from loradex.core.lora_runtime import LoraFactors
from loradex.core.token_deltas import CONFIG_KEY as TOKENS_CONFIG_KEY
from loradex.core.token_deltas import TokenDelta, tokens_to_peft

Layers = dict[str, LoraFactors]


def delta(f: LoraFactors) -> torch.Tensor:
    """The (out, in) update of one layer, in float32."""
    return f.delta()


def all_modules(inputs: Sequence[Mapping[str, LoraFactors]]) -> list[str]:
    """Every module any input changes, in first-seen order."""
    return list(dict.fromkeys(m for layers in inputs for m in layers))


def shape_of(inputs: Sequence[Mapping[str, LoraFactors]], module: str) -> tuple[int, int]:
    """(out, in) of ``module`` from whichever input changes it."""
    f = next(layers[module] for layers in inputs if module in layers)
    return f.b.shape[0], f.a.shape[1]


def exact_sum(inputs: Sequence[Mapping[str, LoraFactors]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """``Σ wᵢ·ΔWᵢ`` per module, as full matrices (the reference every merge is measured against)."""
    out = {}
    for module in all_modules(inputs):
        rows, cols = shape_of(inputs, module)
        total = torch.zeros(rows, cols)
        for layers, w in zip(inputs, weights):
            if module in layers:
                total += w * delta(layers[module])
        out[module] = total
    return out


def merge_cat(inputs: Sequence[Mapping[str, LoraFactors]], weights: Sequence[float]) -> Layers:
    """Exact: per module, A's stacked and wᵢ·sᵢ·Bᵢ side by side (rank Σ rᵢ, scale 1)."""
    out: Layers = {}
    for module in all_modules(inputs):
        parts = [(w, layers[module]) for layers, w in zip(inputs, weights) if module in layers]
        a = torch.cat([f.a.float() for _, f in parts], dim=0)
        b = torch.cat([f.b.float() * (w * f.scale) for w, f in parts], dim=1)
        out[module] = LoraFactors(a=a, b=b, scale=1.0)
    return out


@dataclass(frozen=True)
class LayerError:
    """What truncating one layer's update cost."""

    module: str
    rank_before: int
    rank_after: int
    relative_error: float
    """‖ΔW − ΔWₖ‖_F / ‖ΔW‖_F."""
    cosine: float
    """cos(ΔW, ΔWₖ) = ‖ΔWₖ‖_F / ‖ΔW‖_F for an orthogonal projection."""
    energy: float
    """Share of ‖ΔW‖_F² kept: Σ_{i≤k} σᵢ² / Σ σᵢ²."""
    singular_values: tuple[float, ...] = ()


def spectrum(f: LoraFactors) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``U, S, Vh`` of ``ΔW = s·B·A`` from the factors: thin QRs of B and Aᵀ, then an r×r SVD."""
    qb, rb = torch.linalg.qr(f.b.double())
    qa, ra = torch.linalg.qr(f.a.double().t())
    u, s, vh = torch.linalg.svd((rb @ ra.t()) * f.scale)
    return qb @ u, s, vh @ qa.t()


def truncate(f: LoraFactors, rank: int) -> tuple[LoraFactors, LayerError]:
    """The best rank-``rank`` approximation of one layer's update (Eckart–Young), and its error."""
    u, s, vh = spectrum(f)
    k = max(1, min(rank, s.numel()))
    total = float((s ** 2).sum())
    kept = float((s[:k] ** 2).sum())
    dropped = max(total - kept, 0.0)
    b = (u[:, :k] * s[:k]).float()
    a = vh[:k].float()
    error = LayerError(
        module="", rank_before=f.rank, rank_after=k,
        relative_error=math.sqrt(dropped / total) if total else 0.0,
        cosine=math.sqrt(kept / total) if total else 1.0,
        energy=kept / total if total else 1.0,
        singular_values=tuple(float(v) for v in s),
    )
    return LoraFactors(a=a, b=b, scale=1.0), error


def rank_for_energy(f: LoraFactors, energy: float) -> int:
    """The smallest rank whose singular values keep ``energy`` of ‖ΔW‖_F²."""
    _, s, _ = spectrum(f)
    shares = torch.cumsum(s ** 2, 0) / (s ** 2).sum().clamp_min(1e-30)
    return int((shares < energy - 1e-12).sum()) + 1


def merge_svd(inputs: Sequence[Mapping[str, LoraFactors]], weights: Sequence[float], rank: int) -> tuple[Layers, list[LayerError]]:
    """The exact sum truncated to ``rank`` per layer (what PEFT's ``svd`` does), with each layer's error."""
    exact = merge_cat(inputs, weights)
    out: Layers = {}
    errors = []
    for module, f in exact.items():
        out[module], error = truncate(f, rank)
        errors.append(_named(error, module))
    return out, errors


def merge_knots(inputs: Sequence[Mapping[str, LoraFactors]], weights: Sequence[float], *, density: float,
                majority_sign_method: str = "total") -> Layers:
    """KnOTS-TIES: align the updates in the basis of their joint SVD, merge the task parts with TIES there.

    With ``density == 1`` and one input per layer this is exact; in general TIES keeps the top
    ``density`` of each task's coordinates, elects a sign per coordinate and averages those
    that agree (``peft.utils.merge_utils.ties``).
    """
    from peft.utils.merge_utils import ties

    out: Layers = {}
    for module in all_modules(inputs):
        parts = [(w, layers[module]) for layers, w in zip(inputs, weights) if module in layers]
        if len(parts) == 1:
            w, f = parts[0]
            out[module] = LoraFactors(a=f.a.float(), b=f.b.float() * (w * f.scale), scale=1.0)
            continue
        u, s, task_parts = joint_svd([f for _, f in parts])
        with warnings.catch_warnings():  # PEFT warns that density 1 prunes nothing: that is what was asked
            warnings.simplefilter("ignore", UserWarning)
            merged_v = ties(task_parts, torch.tensor([w for w, _ in parts], dtype=torch.float32), density,
                            majority_sign_method)
        out[module] = LoraFactors(a=merged_v, b=(u * s).float(), scale=1.0)
    return out


def joint_svd(parts: Sequence[LoraFactors]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """``U, S, [V₁ᵀ … V_Kᵀ]`` of ``[ΔW₁ … ΔW_K]`` (out × K·in), from the factors alone.

    ``[ΔW₁ … ΔW_K] = [B₁ … B_K] · blockdiag(s₁A₁ … s_KA_K)``: a thin QR of the stacked B's, one
    of each (sᵢAᵢ)ᵀ (the QR of a block-diagonal matrix is block-diagonal), and an SVD of the
    small R×R core (R = Σ rᵢ) — instead of the SVD of an out × K·in matrix. Directions with a
    singular value below 1e-7 of the largest are dropped.
    """
    qb, rb = torch.linalg.qr(torch.cat([f.b.double() for f in parts], dim=1))
    blocks = [torch.linalg.qr((f.a.double() * f.scale).t()) for f in parts]  # (Qᵢ: in × rᵢ, Rᵢ: rᵢ × rᵢ)
    core = rb @ torch.block_diag(*[r for _, r in blocks]).t()
    u_small, s, vh_small = torch.linalg.svd(core, full_matrices=False)  # a layer may have fewer outputs than Σ rᵢ
    keep = s > s[0] * 1e-7
    u = (qb @ u_small[:, keep]).float()
    vh_small = vh_small[keep]
    task_parts, start = [], 0
    for q, r in blocks:
        width = r.shape[0]
        task_parts.append((vh_small[:, start:start + width] @ q.t()).float())
        start += width
    return u, s[keep].float(), task_parts


FACTORWISE = ("linear", "ties", "dare_ties", "dare_linear", "magnitude_prune")
"""PEFT's factor-wise combination types (approximate: A's and B's merged separately)."""


def merge_factorwise(method: str, inputs: Sequence[Mapping[str, LoraFactors]], weights: Sequence[float], *,
                     density: float, majority_sign_method: str = "total") -> Layers:
    """PEFT's ``add_weighted_adapter(combination_type=method)`` on factors: A's and B's merged separately.

    As in PEFT, each input's weight times its scale is split as a square root over A (carrying
    the sign) and B, and the A's and B's are combined with ``peft.utils.merge_utils``. Every
    input of a layer must have the same rank.
    """
    from peft.utils import merge_utils

    combine = {
        "linear": lambda t, w: merge_utils.task_arithmetic(t, w),
        "ties": lambda t, w: merge_utils.ties(t, w, density, majority_sign_method),
        "dare_linear": lambda t, w: merge_utils.dare_linear(t, w, density),
        "dare_ties": lambda t, w: merge_utils.dare_ties(t, w, density, majority_sign_method),
        "magnitude_prune": lambda t, w: merge_utils.magnitude_prune(t, w, density),
    }[method]
    out: Layers = {}
    for module in all_modules(inputs):
        parts = [(w, layers[module]) for layers, w in zip(inputs, weights) if module in layers]
        scaled = [w * f.scale for w, f in parts]
        weights_a = torch.tensor([math.copysign(math.sqrt(abs(v)), v) for v in scaled])
        weights_b = torch.tensor([math.sqrt(abs(v)) for v in scaled])
        a = combine([f.a.float() for _, f in parts], weights_a)
        b = combine([f.b.float() for _, f in parts], weights_b)
        out[module] = LoraFactors(a=a, b=b, scale=1.0)
    return out


def cast(layers: Mapping[str, LoraFactors], dtype: torch.dtype) -> Layers:
    """The same factors stored as ``dtype`` (bf16 / fp16 halve the file)."""
    return {m: LoraFactors(a=f.a.to(dtype), b=f.b.to(dtype), scale=f.scale) for m, f in layers.items()}


def to_peft(layers: Mapping[str, LoraFactors], *, base_config: Mapping[str, object], per_layer_rank: bool = False,
            kernels: Mapping[str, tuple[int, ...]] | None = None, tokens: Mapping[str, TokenDelta] | None = None,
            ) -> tuple[dict[str, object], dict[str, torch.Tensor]]:
    """``(adapter_config, state dict)`` in PEFT's format for ``layers``.

    Scales are folded into B (alpha = r, so PEFT's scale is 1). One rank serves every layer,
    layers of lower rank zero-padded, unless ``per_layer_rank`` writes PEFT's ``rank_pattern``
    and ``alpha_pattern`` (used where per-layer ranks are the point, as in ``compress --energy``).
    ``kernels``: conv layers' ``(in, kh, kw)`` (``conv_kernels`` of an input), whose flattened
    factors are written back as PEFT's conv pair: A ``(r, in, kh, kw)``, B ``(out, r, 1, 1)``.
    ``tokens``: trained token rows written beside the factors (none: the config lists no token ids).
    """
    kernels = kernels or {}
    folded = {m: (f.a, f.b * f.scale if f.scale != 1.0 else f.b) for m, f in layers.items()}
    rank = max(a.shape[0] for a, _ in folded.values())
    state: dict[str, torch.Tensor] = {}
    rank_pattern: dict[str, int] = {}
    for module, (a, b) in folded.items():
        r = a.shape[0]
        if r < rank and not per_layer_rank:
            a = torch.cat([a, a.new_zeros(rank - r, a.shape[1])])
            b = torch.cat([b, b.new_zeros(b.shape[0], rank - r)], dim=1)
        elif r != rank:
            rank_pattern[re.escape(module)] = r
        if module in kernels:
            a, b = a.reshape(a.shape[0], *kernels[module]), b.reshape(*b.shape, 1, 1)
        state[f"base_model.model.{module}.lora_A.weight"] = a.contiguous()
        state[f"base_model.model.{module}.lora_B.weight"] = b.contiguous()
    config = {key: value for key, value in base_config.items()
              if key not in ("r", "lora_alpha", "rank_pattern", "alpha_pattern", "target_modules", "use_rslora",
                             TOKENS_CONFIG_KEY)}
    config.update(
        r=rank, lora_alpha=rank, use_rslora=False,
        target_modules="^(" + "|".join(re.escape(m) for m in folded) + ")$",
        rank_pattern=rank_pattern, alpha_pattern=dict(rank_pattern),
    )
    token_config, token_state = tokens_to_peft(tokens or {})
    config.update(token_config)
    state.update(token_state)
    return config, state


def _named(error: LayerError, module: str) -> LayerError:
    from dataclasses import replace

    return replace(error, module=module)

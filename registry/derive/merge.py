"""Merge adapters WITH their heads into one adapter, and say what each method does to the update.

Inputs of one task (the same head schema) become one adapter whose head is the weighted
average of theirs (``Task.merge_heads``: exact in output space where the head allows); inputs of different tasks become ONE multi-task adapter: a single merged
LoRA for the backbone and every input's head beside it, so one pass through the base serves
all of its tasks. The LoRA part is written in PEFT's format (plain PEFT loads it).

Methods (``METHODS``): ``cat`` — the default — is exact (Σ wᵢ·ΔWᵢ, rank Σ rᵢ); ``svd`` is that
sum truncated to a rank, with the error it costs; ``knots`` aligns the updates before a TIES
merge; ``linear``, ``ties``, ``dare_ties``, ``dare_linear`` and ``magnitude_prune`` are PEFT's
factor-wise combinations, which merge the A's and B's separately (cross terms: approximate).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from loradex.core.artifact import head_file, load_weights, read_lora, write_adapter
from loradex.core import plugins
from loradex.core.errors import ArtifactError, ConfigError, RegistryError, suggest
from loradex.core.lora_runtime import LoraFactors, conv_kernels, factors_from_peft, unsupported_reason
from loradex.core.multitask import check_same_base
from loradex.core.spec import MULTITASK, AdapterSpec, HeadSpec, LoraSettings, parse_targets
from loradex.core.token_deltas import TokenDelta, split_tokens, sum_tokens

from loradex.registry.derive import lora_algebra as algebra
@dataclass(frozen=True)
class MergeArgs:
    """What a method merges with: one weight per input, the density (its default filled in) and the rank."""

    weights: Sequence[float]
    density: float | None
    rank: int


Layers = dict[str, LoraFactors]


def _no_check(method: Method, inputs: Sequence[MergeInput]) -> None:
    return None


@dataclass(frozen=True)
class Method:
    """A merge method as ONE object: its maths (``merge``), its validity checks (``check``) and its
    help text. A new method is one :func:`register_method` call (tests/test_merge.py adds one)."""

    name: str
    exact: bool
    """Whether the result is the exact weighted sum Σ wᵢ·ΔWᵢ."""
    help: str
    merge: Callable[[Sequence[Mapping[str, LoraFactors]], MergeArgs], Layers]
    """The merged factors of the inputs' layers (task vectors with ``--base``)."""
    check: Callable[[Method, Sequence[MergeInput]], None] = _no_check
    """Refuse inputs the method cannot merge (RegistryError naming why)."""
    density: bool = False
    """Whether it takes ``--density``."""
    rank: bool = False
    """Whether it takes ``--rank``."""
    default_density: float | None = None
    """The density used when none is given (methods that take one)."""


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Make ``method`` available to ``adapters merge --method`` and ``--search``."""
    if method.name in METHODS:
        raise ConfigError(f"merge method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def _svd(layers: Sequence[Mapping[str, LoraFactors]], args: MergeArgs) -> Layers:
    total = sum(max((f.rank for f in tv.values()), default=0) for tv in layers)
    if args.rank > total:
        raise ConfigError(f"--rank {args.rank} is above the rank of the exact sum ({total})")
    return algebra.merge_svd(layers, args.weights, args.rank)[0]


def _factorwise_check(method: Method, inputs: Sequence[MergeInput]) -> None:
    """A's and B's merged separately need one rank per layer, and PEFT gets rsLoRA wrong."""
    for module in algebra.all_modules([i.layers for i in inputs]):
        ranks = {i.ref: i.layers[module].rank for i in inputs if module in i.layers}
        if len(set(ranks.values())) > 1:
            listing = ", ".join(f"{r} r={k}" for r, k in ranks.items())
            raise RegistryError(f"method {method.name!r} merges A and B factors separately and needs one rank per "
                                f"layer, but {module} has {listing}; use cat, svd or knots")
    if any(i.config.get("use_rslora") for i in inputs):
        raise RegistryError(f"method {method.name!r} merges rsLoRA adapters wrongly (PEFT issue #3761); "
                            "use cat, svd or knots")


def _factorwise(name: str, help_text: str, *, density: bool) -> Method:
    def merge(layers: Sequence[Mapping[str, LoraFactors]], args: MergeArgs) -> Layers:
        return algebra.merge_factorwise(name, layers, args.weights, density=args.density or 1.0)

    return Method(name, False, help_text, merge, _factorwise_check, density=density,
                  default_density=DEFAULT_DENSITY if density else None)


DEFAULT_DENSITY = 0.5
for _method in (
    Method("cat", True, "exact: A's stacked, B's side by side; the update is Σ wᵢ·ΔWᵢ, rank Σ rᵢ",
           lambda layers, args: algebra.merge_cat(layers, args.weights)),
    Method("svd", False, "the exact sum truncated to --rank by SVD; the error is reported", _svd, rank=True),
    Method("knots", False, "KnOTS: align the updates in the basis of their joint SVD, then TIES-merge there "
           "(--density)", lambda layers, args: algebra.merge_knots(layers, args.weights, density=args.density),
           density=True, default_density=1.0),
    _factorwise("linear", "PEFT's factor-wise linear: A's and B's averaged separately", density=False),
    _factorwise("ties", "PEFT's factor-wise TIES (trim to --density, elect signs)", density=True),
    _factorwise("dare_ties", "PEFT's factor-wise DARE + TIES (random drop, --density)", density=True),
    _factorwise("dare_linear", "PEFT's factor-wise DARE (random drop, --density)", density=True),
    _factorwise("magnitude_prune", "PEFT's factor-wise magnitude pruning (--density)", density=True),
):
    register_method(_method)
DEFAULT_METHOD = "cat"
SEED = 0
"""Seed of the random drops of dare_* (merges are reproducible)."""


@dataclass
class MergeInput:
    """One adapter going into a merge: its registry record, files and LoRA factors on the base."""

    record: Any
    folder: Path
    config: dict[str, Any]
    layers: dict[str, LoraFactors]
    kernels: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Conv layers' kernel shapes (their factors are flattened in ``layers``)."""
    tokens: dict[str, TokenDelta] = field(default_factory=dict)
    """Trained token embedding rows (``trainable_token_indices``), by embedding module."""

    @property
    def ref(self) -> str:
        """``name@vN``."""
        return self.record.ref

    @property
    def spec(self) -> AdapterSpec:
        """The input's spec."""
        return self.record.spec


@dataclass
class MergedAdapter:
    """A merge written to a folder, with what it is and what it cost."""

    folder: Path
    spec: AdapterSpec
    method: str
    weights: list[float]
    density: float | None
    rank: int
    exact: bool
    update_error: float
    """‖merged − Σ wᵢ·ΔWᵢ‖_F / ‖Σ wᵢ·ΔWᵢ‖_F over all layers (0 for an exact merge)."""
    head_of: dict[tuple[str, str], str] = field(default_factory=dict)
    """(input ref, input head) → the head of the merged adapter that serves it."""
    base: str | None = None
    """The adapter whose update the task vectors were taken against (``--base``)."""

    def args(self) -> dict[str, Any]:
        """How it was made, for the version's lineage."""
        return {"method": self.method, "weights": self.weights, "density": self.density, "rank": self.rank,
                "exact": self.exact, "update_error": round(self.update_error, 6), "base_adapter": self.base}


def load_input(record: Any, folder: Path, backbone: Any) -> MergeInput:
    """An input's LoRA factors with module names native to ``backbone``; refuses what cannot be merged."""
    config, state = read_lora(folder, backbone)
    try:
        config, state, tokens = split_tokens(config, state, where=record.ref)
    except ArtifactError as exc:
        raise RegistryError(f"cannot merge {exc}") from None
    reason = unsupported_reason(config)
    if reason is not None:
        raise RegistryError(f"cannot merge {record.ref}: {reason}; only plain LoRA updates can be summed exactly")
    try:
        layers = factors_from_peft(config, state)
    except Exception as exc:  # noqa: BLE001 - ArtifactError and shape errors alike
        raise RegistryError(f"cannot merge {record.ref}: {exc}") from None
    return MergeInput(record=record, folder=folder, config=config, layers=layers, kernels=conv_kernels(state),
                      tokens=tokens)


def check_request(count: int, *, method: str, weights: Sequence[float] | None, density: float | None,
                  rank: int | None) -> Method:
    """Refuse, with the reason, what no merge can do; return the method."""
    if count < 2:
        raise ConfigError(f"merge needs at least two adapters, got {count}")
    if method not in METHODS:
        raise ConfigError(f"unknown merge method {method!r}.{suggest(method, METHODS)} Methods: {', '.join(METHODS)}")
    chosen = METHODS[method]
    if weights is not None:
        if len(weights) != count:
            raise ConfigError(f"--weights has {len(weights)} value{'s' if len(weights) != 1 else ''} "
                              f"for {count} adapters; give one weight per adapter")
        if not all(math.isfinite(w) for w in weights):
            raise ConfigError("--weights must be finite numbers")
    if density is not None:
        if not (isinstance(density, (int, float)) and 0 < density <= 1):
            raise ConfigError(f"--density must be in (0, 1], got {density}")
        if not chosen.density:
            raise ConfigError(f"method {method!r} takes no density; {', '.join(m for m, x in METHODS.items() if x.density)} do")
    if rank is not None:
        if rank < 1:
            raise ConfigError(f"--rank must be a positive integer, got {rank}")
        if not chosen.rank:
            raise ConfigError(f"method {method!r} takes no rank; svd does (the others keep theirs)")
    return chosen


def default_weights(inputs: Sequence[MergeInput]) -> list[float]:
    """1/K each when all inputs share one task (an average), else 1 each (every task at full strength)."""
    if len({i.spec.tasks for i in inputs}) == 1:
        return [1.0 / len(inputs)] * len(inputs)
    return [1.0] * len(inputs)


def group_heads(records: Sequence[Any]) -> dict[str, list[tuple[int, HeadSpec]]]:
    """The merged adapter's heads: head name → (input index, head) it serves, from the inputs' records.

    Heads of one task with one schema (configuration and input size: two classifiers with the
    same labels) become one averaged head named after the task. A head of the same task with
    another schema (Fashion-MNIST's labels beside digits') keeps its own head, named
    ``TASK-INPUTNAME``.
    """
    groups: dict[str, list[tuple[int, HeadSpec]]] = {}
    for index, record in enumerate(records):
        for head in record.spec.head_specs():
            same = next((name for name, members in groups.items() if members[0][1].task == head.task
                         and members[0][1].config == head.config and members[0][1].image_size == head.image_size),
                        None)
            if same is None:
                taken = any(members[0][1].task == head.task for members in groups.values())
                same = head.task if not taken else _head_name(f"{head.task}-{record.name}", groups)
                groups[same] = []
            groups[same].append((index, head))
    return groups


def _head_name(wanted: str, taken: Mapping[str, Any]) -> str:
    name = re.sub(r"[^a-z0-9_-]+", "-", wanted.lower()).strip("-")[:60] or "head"
    candidate, number = name, 2
    while candidate in taken:
        candidate, number = f"{name}-{number}", number + 1
    return candidate


def effective_density(method: Method, density: float | None) -> float | None:
    """The density a method merges with: the one given, else its default; None if it takes none."""
    if not method.density:
        return None
    return density if density is not None else method.default_density


def merge_layers(method: Method, inputs: Sequence[MergeInput], weights: Sequence[float], *,
                 density: float | None, rank: int | None, base: MergeInput | None = None,
                 ) -> tuple[dict[str, LoraFactors], int]:
    """The merged LoRA factors and the rank they are stored at.

    With a ``base`` adapter (the one the inputs were fine-tuned from) the method merges the task
    vectors ``ΔWᵢ − ΔW_base`` and the base update is added back: task arithmetic.
    """
    layers = task_vectors(inputs, base) if base is not None else [i.layers for i in inputs]
    method.check(method, inputs)
    torch.manual_seed(SEED)
    most = max(f.rank for i in inputs for f in i.layers.values())
    merged = method.merge(layers, MergeArgs(weights=weights, density=effective_density(method, density),
                                            rank=rank or most))
    if base is not None:
        merged = algebra.merge_cat([merged, base.layers], [1.0, 1.0])
    return merged, max(f.rank for f in merged.values())


def task_vectors(inputs: Sequence[MergeInput], base: MergeInput) -> list[dict[str, LoraFactors]]:
    """Each input's update minus the base adapter's (τᵢ = ΔWᵢ − ΔW_base), exactly, as factors.

    The base itself may be an input (its heads join the merge): its task vector is zero.
    """
    return [{} if i.ref == base.ref else algebra.merge_cat([i.layers, base.layers], [1.0, -1.0]) for i in inputs]


def merge_tokens(inputs: Sequence[MergeInput], weights: Sequence[float], base: MergeInput | None = None,
                 ) -> dict[str, TokenDelta]:
    """The inputs' trained token rows, summed exactly whatever the method: Σ wᵢ·δᵢ, or with a
    ``base`` adapter δ_base + Σ wᵢ·(δᵢ − δ_base), as the LoRA updates are (see :func:`update_error`)."""
    parts, scales = [i.tokens for i in inputs], list(weights)
    if base is not None:
        parts, scales = [*parts, base.tokens], [*scales, 1.0 - sum(weights)]
    return sum_tokens(parts, scales)


def update_error(merged: Mapping[str, LoraFactors], inputs: Sequence[MergeInput], weights: Sequence[float],
                 base: MergeInput | None = None) -> float:
    """Relative Frobenius error of the merged updates against the exact weighted sum, over all layers.

    With a ``base`` adapter the reference is ``ΔW_base + Σ wᵢ·(ΔWᵢ − ΔW_base)``.
    """
    layers = [i.layers for i in inputs]
    if base is not None:
        layers, weights = [*layers, base.layers], [*weights, 1.0 - sum(weights)]
    exact = algebra.exact_sum(layers, weights)
    error = total = 0.0
    for module, reference in exact.items():
        got = merged[module].delta() if module in merged else torch.zeros_like(reference)
        error += float(((got - reference) ** 2).sum())
        total += float((reference ** 2).sum())
    return math.sqrt(error / total) if total else 0.0


def build(inputs: Sequence[MergeInput], folder: Path, *, method: str = DEFAULT_METHOD,
          weights: Sequence[float] | None = None, density: float | None = None, rank: int | None = None,
          name: str | None = None, base: MergeInput | None = None) -> MergedAdapter:
    """Merge ``inputs`` into the adapter folder ``folder``; nothing is stored in the registry.

    ``base``: the adapter the inputs were fine-tuned from (``--base``); see :func:`merge_layers`.
    """
    chosen = check_request(len(inputs), method=method, weights=weights, density=density, rank=rank)
    check_same_base([(i.ref, i.spec) for i in ([*inputs, base] if base is not None else inputs)])
    weights = list(weights) if weights is not None else default_weights(inputs)
    groups = group_heads([i.record for i in inputs])
    merged, stored_rank = merge_layers(chosen, inputs, weights, density=density, rank=rank, base=base)
    error = 0.0 if chosen.exact else update_error(merged, inputs, weights, base)
    kernels = {m: k for i in inputs for m, k in i.kernels.items()}
    tokens = merge_tokens(inputs, weights, base)
    config, state = algebra.to_peft(merged, base_config=inputs[0].config, kernels=kernels, tokens=tokens)
    first = inputs[0].spec
    targets = parse_targets([t for i in inputs for t in i.spec.lora.targets])
    sources = [i.spec for i in ([*inputs, base] if base is not None else inputs)]
    lora = LoraSettings(rank=stored_rank, alpha=stored_rank, dropout=0.0, targets=targets,
                        target_modules=str(config["target_modules"]),
                        tokens=tuple(t for s in sources for t in s.lora.tokens) if tokens else (),
                        token_indices=tuple(i for t in tokens.values() for i in t.indices))
    head_of: dict[tuple[str, str], str] = {}
    head_states: dict[str, dict[str, torch.Tensor]] = {}
    head_specs: list[HeadSpec] = []
    for head_name, members in groups.items():
        task = members[0][1].task
        states = []
        for index, head in members:
            spec = inputs[index].spec
            states.append(load_weights(inputs[index].folder / head_file(spec, head)))
            head_of[(inputs[index].ref, head.name)] = head_name
        if len(states) > 1:
            member_weights = [weights[index] for index, _ in members]
            total = sum(member_weights)
            if total == 0:
                raise ConfigError(f"the weights of the {task} inputs sum to 0; their heads cannot be averaged")
            task_obj = plugins.get_task(task)
            head_states[head_name] = task_obj.merge_heads(states, [w / total for w in member_weights],
                                                          members[0][1].config)
        else:
            head_states[head_name] = states[0]
        sample = members[0][1]
        head_specs.append(HeadSpec(name=head_name, task=task, config=sample.config, image_size=sample.image_size))
    made_by = {task: package for i in inputs for task, package in i.spec.plugins.items()}  # provenance carries over
    if len(head_specs) == 1:
        (only,) = head_specs
        spec = AdapterSpec(task=only.task, backbone=first.backbone, lora=lora, head=only.config, train=first.train,
                           image_size=only.image_size, plugins=made_by)
    else:
        spec = AdapterSpec(task=MULTITASK, backbone=first.backbone, lora=lora, train=first.train,
                           image_size=head_specs[0].image_size, heads=tuple(head_specs), plugins=made_by)
    config["base_model_name_or_path"] = first.backbone.name
    config["revision"] = first.backbone.revision
    write_adapter(folder, spec, lora_config=config, lora_state=state, heads=head_states, name=name)
    return MergedAdapter(folder=folder, spec=spec, method=chosen.name, weights=weights,
                         density=effective_density(chosen, density), rank=stored_rank, exact=chosen.exact,
                         update_error=error, head_of=head_of, base=base.ref if base is not None else None)

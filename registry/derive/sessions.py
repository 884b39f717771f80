"""New versions made from stored ones — merges and compressions — each measured, then stored.

The base is loaded once; the inputs are attached to it beside each candidate, every input head
is evaluated on its own validation data before and after (``measure``), and the result is
stored as a version whose lineage names its inputs and how it was made. Nothing is stored if
anything fails.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradex.core.errors import ConfigError
from loradex.core.multitask import MultiTaskModel, check_same_base
from loradex.core.scratch import scratch_folder
from loradex.core.spec import MULTITASK

from loradex.registry.derive import compress as compressing
from loradex.registry.derive import merge as merging
from loradex.registry.store import names
from loradex.registry.loading import load, parse_refs
from loradex.registry.derive.measure import Measurement, measure, plan_jobs, summarize
from loradex.registry.store.registry import Registry, VersionRecord

SEARCH_DENSITIES = (0.5, 0.8)


@dataclass
class Candidate:
    """One merge tried: how it was made and what it kept."""

    merged: merging.MergedAdapter
    measurements: list[Measurement]

    @property
    def retained(self) -> list[float]:
        """Retained % of every measured input."""
        return [m.retained for m in self.measurements if m.retained is not None]

    @property
    def mean_retained(self) -> float | None:
        """Mean retained % (None if nothing could be measured)."""
        values = self.retained
        return sum(values) / len(values) if values else None

    def row(self) -> dict[str, Any]:
        """One line of the search table."""
        return {**self.merged.args(), "retained": {m.input: m.retained for m in self.measurements},
                "mean_retained": self.mean_retained}


@dataclass
class Derived:
    """A stored merge or compression, its measurements, and (for ``--search``) every candidate tried."""

    record: VersionRecord
    measurements: list[Measurement]
    details: dict[str, Any] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)


def _parse_eval_data(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"--eval-data {pair!r} is not NAME=PATH (NAME: an input adapter's name or ref)")
        out[key] = value
    return out


def _session(registry: Registry, records: Sequence[VersionRecord]) -> MultiTaskModel:
    """The inputs on their one base, attached from the records in hand (no second lookup)."""
    return load(list(records), registry=registry)


def _keys(model: MultiTaskModel, records: Sequence[VersionRecord]) -> dict[str, str]:
    """Each input head's label (``ref`` or ``ref#head``) → its head key in ``model``."""
    out = {}
    for record in records:
        for spec, entry in zip(record.spec.head_specs(), model.adapters[record.ref].heads):
            out[record.spec.head_key(record.ref, spec)] = entry.key
    return out


def merge_versions(
    registry: Registry,
    refs: Sequence[str],
    *,
    name: str,
    method: str = merging.DEFAULT_METHOD,
    weights: Sequence[float] | None = None,
    density: float | None = None,
    rank: int | None = None,
    eval_data: Sequence[str] = (),
    search: bool = False,
    base: str | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> Derived:
    """Merge ``refs`` into a new version of ``name``, measure it, store it; see :mod:`loradex.registry.derive.merge`.

    ``base``: the adapter the inputs were fine-tuned from; the merge then works on task vectors
    (ΔWᵢ − ΔW_base) and adds the base back.
    """
    names.validate_name(name)
    refs = parse_refs(list(refs)) if refs else []
    merging.check_request(len(refs), method=method, weights=weights, density=density, rank=rank)
    overrides = _parse_eval_data(eval_data)
    records, base_record = _merge_records(registry, refs, base, name=name)
    model = _session(registry, records)
    inputs = [merging.load_input(r, model.adapters[r.ref].folder, model.backbone) for r in records]
    base_input = (merging.load_input(base_record, registry.materialize(base_record), model.backbone)
                  if base_record else None)
    before = _keys(model, records)
    cache: dict[str, float] = {}
    with scratch_folder("merge") as scratch:
        def attempt(index: int, **options: Any) -> Candidate:
            merged = merging.build(inputs, Path(scratch) / f"c{index}", name=name, base=base_input, **options)
            probe = f"candidate@v{index + 1}"
            model.attach(probe, merged.folder, spec=merged.spec)
            try:
                jobs = plan_jobs(records, merged.head_of, overrides)
                found = measure(model, jobs, before=before, after=probe, cache=cache)
            finally:
                model.detach(probe)
            return Candidate(merged, found)

        if search:
            best, candidates = _best_of_search(attempt, search_space(inputs, weights), say)
        else:
            best = attempt(0, method=method, weights=weights, density=density, rank=rank)
            candidates = [best]
        merged = best.merged
        parents = [r.ref for r in records]
        if base_record is not None and base_record.ref not in parents:
            parents.append(base_record.ref)
        record = registry.put(merged.folder, name=name, kind="merged", parents=parents,
                              args=_merge_args(best, searched=len(candidates) if search else 0),
                              metrics=summarize(best.measurements))
    return Derived(record=record, measurements=best.measurements, details=merged.args(),
                   candidates=candidates if search else [])


def _merge_records(registry: Registry, refs: Sequence[str], base: str | None, *, name: str
                   ) -> tuple[list[VersionRecord], VersionRecord | None]:
    """The inputs' records and the ``--base`` one, each looked up once; everything that would refuse the
    merge (a ref named twice, other bases, a head name clash, ``name`` unusable) fails here, before any work."""
    records = [registry.resolve(ref) for ref in refs]
    if len({r.ref for r in records}) != len(records):
        raise ConfigError("an adapter is named twice; merge distinct versions")
    base_record = registry.resolve(base) if base else None
    check_same_base([(r.ref, r.spec) for r in (records + [base_record] if base_record else records)])
    heads = merging.group_heads(records)
    registry.check_can_store(name, next(iter(heads)) if len(heads) == 1 else MULTITASK)  # before the base loads
    return records, base_record


def _best_of_search(attempt: Callable[..., Candidate], space: Sequence[dict[str, Any]],
                    say: Callable[[str], None]) -> tuple[Candidate, list[Candidate]]:
    """(the candidate keeping most of its inputs' metrics, every candidate measured) over ``space``;
    a method that cannot merge these inputs is left out of the table."""
    from loradex.core.errors import RegistryError

    candidates = []
    for index, options in enumerate(space):
        try:
            candidate = attempt(index, **options)
        except (ConfigError, RegistryError):
            continue
        candidates.append(candidate)
        say(_search_line(candidate))
    measured = [c for c in candidates if c.mean_retained is not None]
    if not measured:
        raise ConfigError("--search needs validation data for the inputs; "
                          + "; ".join(m.note for m in candidates[0].measurements if m.note))
    return max(measured, key=lambda c: (c.mean_retained, c.merged.exact, -c.merged.rank)), candidates


def _merge_args(best: Candidate, *, searched: int) -> dict[str, Any]:
    """What the merged version records of its making (its lineage args)."""
    merged = best.merged
    return {**merged.args(), "primary_metric": "retained_mean",
            "kind_detail": "multitask" if merged.spec.is_multitask else "same-task",
            "measured": [m.to_dict() for m in best.measurements],
            "eval_sources": {m.head: m.source for m in best.measurements if m.source}, "searched": searched}


def search_space(inputs: Sequence[merging.MergeInput], weights: Sequence[float] | None) -> list[dict[str, Any]]:
    """Methods × a small grid of weights and densities for ``--search``."""
    k = len(inputs)
    grids = [list(weights)] if weights is not None else [merging.default_weights(inputs)]
    for option in ([1.0] * k, [1.0 / k] * k):
        if option not in grids:
            grids.append(option)
    space: list[dict[str, Any]] = []
    for method in merging.METHODS.values():
        densities: Sequence[float | None] = (None,)
        if method.density:
            densities = (1.0, *SEARCH_DENSITIES) if method.name == "knots" else SEARCH_DENSITIES
        for w in grids:
            for d in densities:
                space.append({"method": method.name, "weights": w, "density": d, "rank": None})
    return space


def _search_line(candidate: Candidate) -> str:
    args = candidate.merged.args()
    kept = ", ".join(f"{m.input} {m.retained:.1f}%" for m in candidate.measurements if m.retained is not None)
    mean = candidate.mean_retained
    weights = ",".join(f"{w:g}" for w in args["weights"])
    density = f" d={args['density']:g}" if args["density"] is not None else ""
    return (f"{args['method']:<15} w={weights}{density:<7} r={args['rank']:<3} err {args['update_error']:.3f}  "
            f"mean {mean:.1f}%  ({kept})" if mean is not None else f"{args['method']} not measured")


def compress_version(
    registry: Registry,
    ref: str,
    *,
    name: str | None = None,
    rank: int | None = None,
    energy: float | None = None,
    dtype: str | None = None,
    eval_data: Sequence[str] = (),
) -> Derived:
    """Compress ``ref`` into a new version (of its own name unless ``name``), measured and stored."""
    record = registry.resolve(ref)
    target = names.validate_name(name) if name else record.name
    layer_rank = record.spec.lora.rank
    compressing.check_request(rank=rank, energy=energy, dtype=dtype, adapter_rank=layer_rank)
    registry.check_can_store(target, record.spec.task)
    overrides = _parse_eval_data(eval_data)
    if overrides and not (set(overrides) <= {record.name, record.ref}):
        raise ConfigError(f"--eval-data names {', '.join(overrides)}; compress has one input: {record.name}")
    model = _session(registry, [record])
    item = merging.load_input(record, model.adapters[record.ref].folder, model.backbone)
    compressing.check_layers(item.layers, record.ref)
    with scratch_folder("compress") as scratch:
        built = compressing.build(item.folder, item.config, item.layers, record.spec, Path(scratch) / "out",
                                  kernels=item.kernels, tokens=item.tokens,
                                  rank=rank, energy=energy, dtype=dtype, name=target)
        probe = "compressed@v1"
        model.attach(probe, built.folder)
        head_of = {(record.ref, h.name): h.name for h in record.spec.head_specs()}
        found = measure(model, plan_jobs([record], head_of, overrides), before=_keys(model, [record]), after=probe)
        model.detach(probe)
        metrics = dict(summarize(found))
        for m in found:  # a compressed adapter keeps its own metric names, as its parent has them
            if m.after is not None:
                prefix = "" if not record.spec.is_multitask else f"{m.head}."
                metrics[f"{prefix}{m.metric}"] = m.after
        args = {**built.args(), "primary_metric": record.args.get("primary_metric") if not record.spec.is_multitask
                else "retained_mean", "measured": [m.to_dict() for m in found],
                "eval_sources": {m.head: m.source for m in found if m.source},
                "layers": [{"module": e.module, "rank": [e.rank_before, e.rank_after],
                            "relative_error": round(e.relative_error, 6), "cosine": round(e.cosine, 6)}
                           for e in built.layers]}
        if args["primary_metric"] is None:
            args["primary_metric"] = "retained_mean"
        stored = registry.put(built.folder, name=target, kind="compressed", parents=[record.ref], args=args,
                              metrics=metrics)
    return Derived(record=stored, measurements=found, details=built.args())


def measured_rows(measurements: Sequence[Measurement]) -> list[Mapping[str, Any]]:
    """JSON rows of measurements."""
    return [m.to_dict() for m in measurements]

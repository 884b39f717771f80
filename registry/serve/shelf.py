"""The server's side of the shelf: one base, adapters attached on demand, refs resolved per request.

Two kinds of callers touch it. Request handlers call :meth:`AdapterShelf.resolve` (any thread):
a ref is resolved against the registry on EVERY request, so ``adapters tag x@v2 prod`` in
another shell moves new requests to v2 at once, while requests already queued keep the
``x@v1`` they resolved to. The batcher calls :meth:`AdapterShelf.run` from its one model
thread: it attaches what a batch needs (evicting the least recently used unpinned adapters
beyond ``max_adapters``) and runs the batch through the shared
:class:`~loradex.core.predictor.Predictor` — the pipeline ``adapters predict`` runs.
"""

from __future__ import annotations

import json
import sys
import threading
import types
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loradex.core import plugins
from loradex.core.artifact import check_fingerprint
from loradex.core.errors import ConfigError, LoradexError, RefusedError
from loradex.core.predictor import Job, Predictor, task_results
from loradex.core.results import ImageResult

from loradex.registry.loading import parse_refs
from loradex.registry.store.registry import Registry, VersionRecord
from .settings import ServeSettings


@dataclass(frozen=True)
class Wanted:
    """A request's adapters, resolved: ``name@vN`` refs, their head keys, each head's parsed options."""

    refs: tuple[str, ...]
    keys: tuple[str, ...]
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def base_only(registry: Registry, record: VersionRecord, *, device: Any, say: Callable[[str], None]) -> Any:
    """A model holding the base ``record`` was trained on, and no adapter yet."""
    from loradex.core.multitask import MultiTaskModel

    from loradex.registry.loading import RegistrySource

    base = record.spec.backbone
    backbone = plugins.resolve_backbone(base.name).load(base.name, revision=base.revision)
    return MultiTaskModel(backbone, device=device, source=RegistrySource(registry), say=say)


OPTIONS_CACHE = 4096
"""Parsed options kept per (adapters, options) pair; most clients send the same few."""


class AdapterShelf:
    """The base and its attached adapters for one server process (or one Ray replica)."""

    def __init__(self, settings: ServeSettings, *, on_change: Callable[[str, int], None] | None = None,
                 say: Callable[[str], None] = _say) -> None:
        self.settings = settings
        self.say = say
        self.on_change = on_change or (lambda event, count: None)
        """Called with ("load" | "evict", adapters attached after it) for the metrics."""
        self.registry: Registry | None = None
        self.model: Any = None
        self.predictor: Predictor | None = None
        self.pinned: tuple[str, ...] = ()
        self._used: OrderedDict[str, None] = OrderedDict()  # attached refs, least recently used first
        self._used_lock = threading.Lock()  # the model thread changes _used; describing reads it elsewhere
        self._info: dict[str, dict[str, Any]] = {}  # attached ref -> tasks, bytes (read off the model thread)
        self.loads: Counter[str] = Counter()
        """How many times each ref was attached here (pinned ones at start included)."""
        self._records: dict[str, VersionRecord] = {}
        self._parsed: dict[tuple[tuple[str, ...], str], tuple[tuple[str, ...], dict[str, dict[str, Any]]]] = {}
        self._registry_lock = threading.Lock()

    # -- start -----------------------------------------------------------------------------

    def load(self) -> None:
        """Open the registry, load the base ONCE and attach the pinned adapters (slow: call off the loop)."""
        from loradex.registry.loading import load, resolve

        registry = Registry.open(self.settings.registry_home())
        refs = parse_refs(list(self.settings.refs)) if self.settings.refs else []
        for ref in refs:
            self._check_hub_allowed(ref)
        pinned = [resolve(registry, ref).ref for ref in refs]
        if not pinned:
            summaries = registry.list()
            if not summaries:
                raise ConfigError(f"the registry at {registry.root} holds no adapters; train or import one first")
            model = base_only(registry, registry.resolve(summaries[0].name), device=self.settings.device, say=self.say)
            self.say(f"serving adapters on {model.backbone.ref.name!r}, the base of {summaries[0].name} "
                     "(name adapters to pin them and choose the base)")
        else:
            model = load(pinned, device=self.settings.device, registry=registry, say=self.say)
        self.registry, self.model, self.predictor = registry, model, Predictor(model)
        self.pinned = tuple(dict.fromkeys(pinned))
        for ref in self.pinned:
            self._attached(ref)
        self.on_change("start", len(self._used))

    @property
    def capacity(self) -> int:
        """How many unpinned adapters may be attached at once."""
        return self.settings.max_adapters - len(self.pinned)

    # -- resolving (any thread) ------------------------------------------------------------

    def resolve(self, refs: Sequence[str], options: Mapping[str, Any]) -> Wanted:
        """The adapters ``refs`` name NOW (aliases followed), with ``options`` checked against their tasks."""
        if not refs:
            raise ConfigError("name at least one adapter: adapters=[\"name@ref\", ...]")
        records = [self.record(ref) for ref in parse_refs(list(refs))]
        canonical = tuple(dict.fromkeys(r.ref for r in records))
        unpinned = [r for r in canonical if r not in self.pinned]
        if len(unpinned) > self.capacity:
            raise ConfigError(f"a request may name at most {self.capacity} adapters that are not pinned here "
                              f"(--max-adapters {self.settings.max_adapters}); it named {len(unpinned)}")
        cache_key = (canonical, json.dumps(options, sort_keys=True, default=str))
        cached = self._parsed.get(cache_key)
        if cached is None:  # versions never change: their heads and these options parse the same every time
            heads = [types.SimpleNamespace(key=record.spec.head_key(record.ref, head), task=plugins.get_task(head.task, made_by=record.spec.plugins.get(head.task)))
                     for record in [self._records[ref] for ref in canonical] for head in record.spec.head_specs()]
            cached = (tuple(h.key for h in heads), Predictor.options_for(heads, options, backbone=self.model.backbone))
            if len(self._parsed) >= OPTIONS_CACHE:
                self._parsed.clear()
            self._parsed[cache_key] = cached
        return Wanted(refs=canonical, keys=cached[0], options=cached[1])

    def record(self, ref: str) -> VersionRecord:
        """The registry version ``ref`` names now; on another base, refused with both bases named."""
        from loradex.registry.loading import resolve

        from loradex.registry.hub.client import is_hub_ref

        self._check_hub_allowed(ref)
        assert self.registry is not None, "the shelf is not loaded"
        with self._registry_lock:
            if is_hub_ref(ref):
                record = resolve(self.registry, ref)
            else:  # versions never change: only which version a ref names is looked up each time
                canonical = self.registry.canonical(ref)
                record = self._records.get(canonical) or self.registry.resolve(canonical)
        base = self.model.backbone.ref
        check_fingerprint(record.spec, base.fingerprint, where=record.ref, allow_mismatch=False,
                          cure=f"this server runs {base.name!r}; serve it from a server of its own base")
        self._records.setdefault(record.ref, record)
        return record

    def _check_hub_allowed(self, ref: str) -> None:
        from loradex.registry.hub.client import is_hub_ref

        if is_hub_ref(ref) and not self.settings.allow_hub:
            raise RefusedError(f"{ref}: Hub refs are off on this server (start it with --allow-hub to allow them)")

    # -- running (the model thread only) -----------------------------------------------------

    def run(self, items: Sequence[tuple[Any, str, Wanted]]) -> list[dict[str, Any] | Exception]:
        """The ``adapters predict --json`` record of each (image, name, wanted), or the error that failed it.

        An adapter that cannot be attached fails only the items that asked for it.
        """
        failed = self._attach([ref for _, _, wanted in items for ref in wanted.refs])
        out: list[dict[str, Any] | Exception] = []
        jobs, slots = [], []
        entries = {h.key: h for h in self.model.head_entries()}
        for index, (image, _, wanted) in enumerate(items):
            fault = next((failed[ref] for ref in wanted.refs if ref in failed), None)
            out.append(fault)  # type: ignore[arg-type]
            if fault is None:
                jobs.append(Job(image=image, heads=tuple(entries[k] for k in wanted.keys), options=wanted.options))
                slots.append(index)
        if jobs:
            try:
                predictions = self.predictor.run(jobs, batch_size=self.settings.max_batch)  # type: ignore[union-attr]
            except LoradexError as exc:
                for index in slots:
                    out[index] = exc
                return out
            base = self.model.base_info
            for index, job, found in zip(slots, jobs, predictions):
                image, name, _ = items[index]
                result = ImageResult(source=name, width=image.width, height=image.height, base=base,
                                     results=task_results(found, entries))
                out[index] = result.to_dict()
        return out

    def _attach(self, refs: Sequence[str]) -> dict[str, Exception]:
        """Attach every ref a batch needs; returns {ref: error} for those that could not be attached."""
        needed = list(dict.fromkeys(refs))
        failed: dict[str, Exception] = {}
        for ref in needed:
            if ref in self._used:
                with self._used_lock:
                    self._used.move_to_end(ref)
                continue
            while len(self._used) >= self.settings.max_adapters:
                victim = next((r for r in self._used if r not in self.pinned and r not in needed), None)
                if victim is None:  # cannot happen: the batcher keeps a batch's adapters within the bound
                    break
                self.model.remove(victim)
                with self._used_lock:
                    del self._used[victim]
                    del self._info[victim]
                self.on_change("evict", len(self._used))
            try:
                record = self._records[ref]
                with self._registry_lock:
                    folder = self.registry.materialize(record)  # type: ignore[union-attr]
                self.model.attach(record.ref, folder, spec=record.spec)
            except LoradexError as exc:
                failed[ref] = exc
                continue
            self._attached(ref)
            self.on_change("load", len(self._used))
        return failed

    def _attached(self, ref: str) -> None:
        attached = self.model.adapters[ref]
        with self._used_lock:
            self._used[ref] = None
            self._info[ref] = {"tasks": list(attached.tasks), "bytes": attached.nbytes}
        self.loads[ref] += 1

    # -- describing ----------------------------------------------------------------------------

    def loaded(self) -> list[dict[str, Any]]:
        """The attached adapters, least recently used first: ref, tasks, bytes, pinned."""
        with self._used_lock:
            return [{"ref": ref, **self._info[ref], "pinned": ref in self.pinned} for ref in self._used]

    def available(self) -> list[dict[str, Any]]:
        """What the registry offers: name, task, latest version, aliases, base."""
        with self._registry_lock:
            summaries = self.registry.list() if self.registry is not None else []
        return [{"name": s.name, "task": s.task, "latest": f"{s.name}@v{s.latest}", "versions": s.versions,
                 "aliases": dict(s.aliases), "base": s.base} for s in summaries]

    def heads_of(self, ref: str) -> dict[str, Any]:
        """``ref``'s heads as a client needs them to draw: key, task and head configuration."""
        record = self.record(ref)
        heads = [{"key": record.spec.head_key(record.ref, h), "task": h.task,
                  "config": dict(h.config), "image_size": h.image_size} for h in record.spec.head_specs()]
        return {"ref": record.ref, "tasks": list(record.spec.tasks), "heads": heads,
                "base": record.spec.backbone.name}

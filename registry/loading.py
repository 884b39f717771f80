"""Load registry versions onto one shared base: the base loads once, each adapter attaches by ref."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loradex.core import plugins
from loradex.core.multitask import LocatedAdapter, MultiTaskModel, check_same_base
from loradex.core.predictor import Predictor

from loradex.registry.store.registry import Registry, VersionRecord


class RegistrySource:
    """Finds adapters in a registry for :class:`MultiTaskModel` (``add``, ``remove``, ``replace``)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def locate(self, ref: str) -> LocatedAdapter:
        """Resolve ``ref`` (pulling ``org/repo@rev`` from the Hub first) and materialise its files."""
        record = resolve(self.registry, ref)
        return LocatedAdapter(ref=record.ref, folder=self.registry.materialize(record), spec=record.spec)

    def canonical(self, ref: str) -> str:
        """``ref`` as ``name@vN``."""
        return resolve(self.registry, ref).ref

    def __repr__(self) -> str:
        return f"RegistrySource({self.registry.root})"


def resolve(registry: Registry, ref: str):
    """The registry version ``ref`` names; a Hub reference (``org/repo@v2``) is pulled first (once)."""
    from loradex.registry.hub.client import is_hub_ref, pull

    if is_hub_ref(ref):
        return pull(registry, ref)
    return registry.resolve(ref)


def parse_refs(refs: str | Sequence[str]) -> list[str]:
    """``"a,b@v2"`` or ``["a", "b@v2"]`` → ``["a", "b@v2"]``; empty items are an error."""
    from loradex.core.errors import InvalidNameError

    items = refs.split(",") if isinstance(refs, str) else [str(r) for r in refs]
    cleaned = [item.strip() for item in items]
    if not cleaned or any(not item for item in cleaned):
        raise InvalidNameError(f"adapter list {refs!r} has an empty entry; write REF[,REF...] with no blanks")
    return cleaned


def load(
    refs: str | Sequence[str | VersionRecord],
    *,
    device: Any = None,
    home: str | Path | None = None,
    registry: Registry | None = None,
    allow_base_mismatch: bool = False,
    say: Callable[[str], None] | None = None,
) -> MultiTaskModel:
    """Load the base the adapters ``refs`` share, ONCE, and attach every one of them.

    ``refs``: ``name``, ``name@vN`` or ``name@alias``, a list of them or a comma-separated
    string; or records already resolved (each ref is looked up once, here or by the caller).
    Adapters on different bases are refused with both bases named.
    """
    registry = registry or Registry.open(home)
    items = parse_refs(refs) if isinstance(refs, str) else list(refs)
    records = [item if isinstance(item, VersionRecord) else resolve(registry, parse_refs([item])[0])
               for item in items]
    check_same_base([(r.ref, r.spec) for r in records])
    first = records[0].spec.backbone
    backbone = plugins.resolve_backbone(first.name).load(first.name, revision=first.revision)
    options = {"say": say} if say is not None else {}
    model = MultiTaskModel(backbone, device=device, source=RegistrySource(registry), **options)
    for record in records:
        if record.ref not in model.adapters:  # attached from the record in hand: no second lookup
            model.attach(record.ref, registry.materialize(record), spec=record.spec,
                         allow_base_mismatch=allow_base_mismatch)
    return model


class Pipeline:
    """Adapters as a function of images: ``pipe = loradex.pipeline("pose@v2"); pipe("person.jpg")``.

    Called on one image (a file path, PIL image or numpy array) it returns one result; on a
    list, a folder or a glob, a list. With one adapter the result is that task's
    :class:`~loradex.core.results.TaskResult` (``pipe(img)["label"]``); with several, an
    :class:`~loradex.core.results.ImageResult` holding each task's.
    """

    def __init__(self, model: MultiTaskModel, **options: Any) -> None:
        self.model = model
        self.options = options
        Predictor.options_for(model.head_entries(), options, backbone=model.backbone)  # a bad option fails here, not on first call

    def __call__(self, images: Any, **options: Any) -> Any:
        from loradex.core.inputs import image_inputs

        single = not isinstance(images, (list, tuple)) and len(image_inputs(images)) == 1 \
            and not (isinstance(images, (str, Path)) and Path(images).is_dir())
        results = self.model.predict(images, **{**self.options, **options})
        if len(self.model.head_entries()) == 1:
            results = [next(iter(r.results.values())) for r in results]
        return results[0] if single else results

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(self.model.adapters)})"


def pipeline(
    refs: str | Sequence[str],
    *,
    device: Any = None,
    home: str | Path | None = None,
    allow_base_mismatch: bool = False,
    **options: Any,
) -> Pipeline:
    """A :class:`Pipeline` over adapter(s) ``refs`` from the registry at ``home``.

    ``options`` are prediction options applied on every call (``top_k=3``).
    """
    return Pipeline(load(refs, device=device, home=home, allow_base_mismatch=allow_base_mismatch), **options)

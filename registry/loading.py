"""Load registry versions onto one shared base: the base loads once, each adapter attaches by name."""

from __future__ import annotations

from collections.abc import Sequence
import re
from dataclasses import dataclass
from typing import Any

from loradex.core import plugins
from loradex.core.artifact import attach
from loradex.core.errors import FingerprintMismatchError


@dataclass
class LoadedAdapters:
    """A TaskModel holding several adapters; per ``name@vN``: its task, record and module key."""

    model: Any
    tasks: dict[str, Any]
    records: dict[str, Any]
    keys: dict[str, str]
    """``name@vN`` → the adapter name inside PEFT and TaskModel (no dots allowed there)."""


def module_key(ref: str) -> str:
    """A PEFT/ModuleDict-safe adapter name for ``name@vN``."""
    return re.sub(r"[^A-Za-z0-9_]", "_", ref)


def load_versions(registry: Any, refs: Sequence[str], *, allow_base_mismatch: bool = False) -> LoadedAdapters:
    """Resolve ``refs`` (``name[@ver]``), load their common base once and attach them all.

    Each adapter is attached under a key derived from ``name@vN``, so two versions of one
    adapter can coexist.
    All of them must name the same base (preset, Hub id or path, and revision).
    """
    records = [registry.resolve(ref) for ref in refs]
    first = records[0].spec.backbone
    for record in records[1:]:
        other = record.spec.backbone
        if (other.name, other.revision) != (first.name, first.revision):
            raise FingerprintMismatchError(
                f"{record.ref} is trained on {other.name!r} but {records[0].ref} on {first.name!r}; "
                "adapters loaded together must share one base"
            )
    backbone = plugins.resolve_backbone(first.name).load(first.name, revision=first.revision)
    model: Any = backbone
    tasks: dict[str, Any] = {}
    by_name: dict[str, Any] = {}
    keys: dict[str, str] = {}
    for record in records:
        if record.ref in by_name:
            continue
        task = plugins.get_task(record.spec.task)
        registry.check_base(record, backbone.ref.fingerprint, allow_mismatch=allow_base_mismatch)  # names name@vN
        key = module_key(record.ref)
        model = attach(model, task, registry.materialize(record), adapter_name=key,
                       allow_base_mismatch=allow_base_mismatch)
        tasks[record.ref], by_name[record.ref], keys[record.ref] = task, record, key
    return LoadedAdapters(model=model, tasks=tasks, records=by_name, keys=keys)

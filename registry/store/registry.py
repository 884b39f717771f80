"""The local adapter registry: immutable numbered versions, moving aliases, lineage, integrity.

Layout of a registry root (``$LORADEX_HOME``, by default ``~/.cache/loradex``)::

    index.db            SQLite (WAL): adapters, versions, files, parents, aliases
    blobs/ab/cdef...    every stored file once, named by its sha256, read-only
    manifests/NAME/     vN.json per version and aliases.json: the index's rows again, as
                        files; gc keeps what they name and `verify --repair` rebuilds from them
    versions/NAME/vN/   materialised versions (hard links to blobs), what PEFT reads
    tmp/                files being written (named with their writer's pid)
    lock                held shared by writers, exclusively by garbage collection

A version is written in two steps: its blobs are put in place (temporary file, fsync,
rename), then one transaction adds its rows. A writer killed at any point leaves at most
unreferenced blobs, which the next garbage collection removes; never half a version.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from loradex.core import plugins
from loradex.core.artifact import (
    CARD_FILE,
    METRICS_FILE,
    SPEC_FILE,
    artifact_files,
    check_complete,
    check_fingerprint,
    describing_files,
    spec_bytes,
    read_metrics,
)
from loradex.core.errors import (
    ArtifactError,
    IndexDamagedError,
    IntegrityError,
    LoradexError,
    NotFoundError,
    ReadOnlyRegistryError,
    RegistryError,
)
from loradex.core.home import loradex_home
from loradex.core.spec import AdapterSpec

from loradex.registry.store import fsck, names
from loradex.registry.store.blobs import BlobStore, sha256_file, tmp_prefix
from loradex.registry.store.import_checks import check_regular_files
from loradex.registry.store.importer import read_config
from loradex.registry.store.index import AdapterSummary, Index, NewVersion, VersionRow
from loradex.registry.store.locks import file_lock
from loradex.registry.store.manifests import Manifests
from loradex.registry.store.weights import check_finite, check_safetensors

KINDS = ("trained", "merged", "compressed", "imported", "pulled")
OPTIONAL_FILES = (METRICS_FILE, CARD_FILE)
"""Stored when present (generated otherwise); the rest of a version is ``artifact_files(spec)``."""


def default_home() -> Path:
    """The registry root used when none is given: ``$LORADEX_HOME``, else the user's cache folder.

    Like ``HF_HOME``: ``$XDG_CACHE_HOME/loradex`` or ``~/.cache/loradex``.
    """
    return loradex_home()


class FileEntry(NamedTuple):
    """One stored file of a version: its sha256 (hex) and size in bytes."""

    sha256: str
    size: int


@dataclass(frozen=True)
class VersionRecord:
    """One immutable version of an adapter, as the registry holds it."""

    name: str
    version: int
    task: str
    spec: AdapterSpec
    metrics: dict[str, float]
    files: dict[str, FileEntry]
    size: int
    created: str
    """ISO 8601, UTC."""
    kind: str
    """How it came to be: trained, merged, compressed, imported, pulled."""
    parents: tuple[str, ...] = ()
    """``name@vN`` of the versions it was made from."""
    args: dict[str, Any] = field(default_factory=dict)
    """The arguments of the step that made it (hyper-parameters, merge weights, source path…)."""
    aliases: tuple[str, ...] = ()
    """User aliases pointing at this version (``latest`` is implicit)."""
    headline_metric: str | None = None
    headline_value: float | None = None

    @property
    def ref(self) -> str:
        """``name@vN``."""
        return names.version_ref(self.name, self.version)

    @property
    def base(self) -> str:
        """Name of the base model the adapter belongs to."""
        return self.spec.backbone.name

    @property
    def fingerprint(self) -> str:
        """Fingerprint of that base's weights ("" if unknown)."""
        return self.spec.backbone.fingerprint

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (the spec as its dict, files as ``{name: {sha256, size}}``)."""
        return {
            "ref": self.ref,
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "kind": self.kind,
            "created": self.created,
            "size": self.size,
            "aliases": list(self.aliases),
            "parents": list(self.parents),
            "args": self.args,
            "metrics": self.metrics,
            "headline": {"metric": self.headline_metric, "value": self.headline_value},
            "spec": self.spec.to_dict(),
            "files": {k: {"sha256": v.sha256, "size": v.size} for k, v in self.files.items()},
        }


@dataclass(frozen=True)
class LineageNode:
    """A version and the versions it was made from (``record`` is None if that parent is gone)."""

    ref: str
    record: VersionRecord | None
    parents: tuple[LineageNode, ...] = ()

    @property
    def kind(self) -> str:
        """How the version was made (``trained``, ``merged``, ...), or ``removed``."""
        return self.record.kind if self.record is not None else "removed"

    def ancestors(self, depth: int = 1) -> Iterator[tuple[LineageNode, int]]:
        """Every version this one was made from, depth first, with its depth (parents are 1)."""
        for parent in self.parents:
            yield parent, depth
            yield from parent.ancestors(depth + 1)

    def lines(self, *, bullet: str, include_self: bool = False, indent: int = 0) -> list[str]:
        """The lineage as text lines, ``{bullet}{ref} ({kind})`` each, indented two spaces a generation
        (the Hub card, the demo's panel); ``include_self`` starts with this version itself."""
        nodes = [(self, 0)] if include_self else []
        nodes += [(node, depth if include_self else depth - 1) for node, depth in self.ancestors()]
        return [f"{'  ' * (indent + level)}{bullet}{node.ref} ({node.kind})" for node, level in nodes]

    def to_dict(self) -> dict[str, Any]:
        """The lineage as JSON values (``adapters show --json``)."""
        record = self.record
        return {"ref": self.ref, "kind": record.kind if record else None, "args": record.args if record else None,
                "removed": record is None, "parents": [p.to_dict() for p in self.parents]}


def utc_now() -> str:
    """The current time as ISO 8601 UTC, e.g. ``2025-01-31T12:00:00Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def headline(metrics: Mapping[str, float], args: Mapping[str, Any], tasks: Sequence[str] = ()
             ) -> tuple[str | None, float | None]:
    """The metric ``adapters list`` shows: ``args['primary_metric']``, else the first of ``tasks``'
    primary metrics (:attr:`Task.primary_metric`) that is present."""
    primary = args.get("primary_metric")
    if isinstance(primary, str) and primary:
        return primary, metrics.get(primary)
    for task in tasks:
        try:
            name = plugins.get_task(task).primary_metric
        except LoradexError:  # a task whose plugin is not installed here
            continue
        if name in metrics:
            return name, metrics[name]
    return None, None


def numeric_metrics(metrics: Mapping[str, Any], *, source: str, strict: bool) -> dict[str, float]:
    """Keep the finite numbers of ``metrics`` as floats (NaN and infinities are dropped).

    With ``strict``, a value that is not a number at all is refused.
    """
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                out[str(key)] = float(value)
        elif strict:
            raise RegistryError(f"{source}: metric {key!r} is {value!r}, not a number")
    return out


class Registry:
    """A registry root on disk. Open one with :meth:`Registry.open`."""

    def __init__(self, root: Path, *, allow_damaged: bool = False) -> None:
        """Use (and create) the registry at ``root``; prefer :meth:`open`.

        A registry in a read-only folder opens read-only: list, show, predict and export work,
        changes raise :class:`ReadOnlyRegistryError`. A damaged index raises
        :class:`IndexDamagedError` unless ``allow_damaged`` (for ``verify --repair``), in which
        case ``index`` is None and ``index_fault`` says what is wrong.
        """
        self.root = Path(root)
        if not self.root.exists():
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RegistryError(f"cannot create the registry folder {self.root}: {exc.strerror or exc}") from None
        if not self.root.is_dir():
            raise RegistryError(f"{self.root}: the registry home is a file, not a folder")
        db = self.root / "index.db"
        self.read_only = not os.access(self.root, os.W_OK) or (db.exists() and not os.access(db, os.W_OK))
        self.blobs = BlobStore(self.root, create=not self.read_only)
        self.manifests = Manifests(self.root)
        self.cache = self.root / "versions"
        if not self.read_only:
            self.cache.mkdir(exist_ok=True)
        self._lock_path = self.root / "lock"
        self.index_fault: str | None = None
        self.index: Index | None
        if self.read_only and not db.exists():
            raise ReadOnlyRegistryError(f"{self.root}: read-only and holds no registry index")
        try:
            self.index = Index(db, read_only=self.read_only)
        except IndexDamagedError as exc:
            if not allow_damaged:
                raise
            self.index, self.index_fault = None, str(exc)

    @classmethod
    def open(cls, root: str | Path | None = None, *, allow_damaged: bool = False) -> Registry:
        """Open the registry at ``root``; None means ``$LORADEX_HOME`` or :func:`default_home`."""
        return cls(Path(root).expanduser() if root is not None else default_home(), allow_damaged=allow_damaged)

    def close(self) -> None:
        """Close the index connection."""
        if self.index is not None:
            self.index.close()

    def _writable(self, doing: str) -> None:
        if self.read_only:
            raise ReadOnlyRegistryError(f"the registry at {self.root} is read-only: cannot {doing} "
                                        "(listing, showing, predicting and exporting work)")
        if self.index is None:
            raise IndexDamagedError(self.index_fault or f"{self.root}/index.db is damaged")

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # -- writing versions ------------------------------------------------------------------

    def put(
        self,
        folder: Path,
        *,
        name: str,
        kind: str = "trained",
        parents: Sequence[str] = (),
        args: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> VersionRecord:
        """Store the complete loradex adapter folder ``folder`` as the next version of ``name``.

        ``metrics`` defaults to the folder's ``metrics.json``; ``parents`` are references to
        the versions it was made from; ``args`` record how it was made. Returns the new record.
        """
        names.validate_name(name)
        folder = Path(folder)
        spec = check_complete(folder)
        read_config(folder)  # a JSON object, or a clear error naming the file
        sources: dict[str, Path | bytes] = {}
        for fname in (*artifact_files(spec), *OPTIONAL_FILES):
            if (folder / fname).is_file():
                sources[fname] = folder / fname
        check_regular_files(folder, sources)  # type: ignore[arg-type]
        for fname, path in sources.items():
            if fname.endswith(".safetensors"):
                check_safetensors(path)  # type: ignore[arg-type]
                check_finite(path)  # type: ignore[arg-type]
        folder_metrics = read_metrics(folder)
        new = self._prepare(
            name=name, spec=spec, sources=sources, kind=kind, parents=parents, args=args,
            metrics=metrics, folder_metrics=folder_metrics, where=str(folder),
        )
        return self._commit(new, sources)

    def import_folder(
        self,
        path: Path,
        *,
        task: str,
        name: str | None = None,
        base: str | None = None,
        kind: str = "imported",
        parents: Sequence[str] = (),
        args: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> VersionRecord:
        """Import a plain PEFT adapter folder (``adapter_config.json`` + safetensors weights).

        ``name`` defaults to the folder's name made valid; ``base`` names the base model when
        the config's ``base_model_name_or_path`` is empty or wrong. Pickled weights are refused.
        """
        from loradex.registry.store.importer import plan_import

        path = Path(path)
        if name is None:
            name = names.slugify(path.resolve().name)
        names.validate_name(name)
        if not task:
            raise RegistryError("import needs a task (--task)")
        plan = plan_import(path, task=task, base=base)
        sources: dict[str, Path | bytes] = dict(plan.files)
        if SPEC_FILE not in sources:  # a plain PEFT folder: the spec worked out from its config
            sources[SPEC_FILE] = spec_bytes(plan.spec)
        source = {"imported_from": str(path.resolve())} if kind == "imported" else {}  # a pull records its origin
        record_args = {**source, **({"import_note": plan.note} if plan.note else {}),
                       **dict(args or {})}
        new = self._prepare(
            name=name, spec=plan.spec, sources=sources, kind=kind, parents=parents, args=record_args,
            metrics=metrics, folder_metrics=plan.metrics, where=str(path),
        )
        return self._commit(new, sources)

    def check_can_store(self, name: str, task: str) -> None:
        """Refuse, before any work, a version of ``task`` under ``name`` that could not be stored.

        Training, merging and compressing call this first: a read-only registry, an index that
        lost versions, or a name that holds another task's versions fail in seconds, not after
        the run (and leave no blobs behind).
        """
        names.validate_name(name)
        self._writable(f"store {name}")
        held = self.index.adapter_task(name)  # type: ignore[union-attr]
        if held is not None and held != task:
            raise RegistryError(f"adapter {name!r} holds {held!r} versions, not {task!r}; choose another --name")
        lost = self.lost_versions()
        if lost:  # numbering would collide with versions the index forgot
            raise IndexDamagedError(
                f"the index lost {len(lost)} version{'s' if len(lost) != 1 else ''} its manifests record "
                f"({', '.join(lost[:5])}); nothing can be stored: run `adapters verify --repair` first")

    def _commit(self, new: NewVersion, sources: Mapping[str, Path | bytes]) -> VersionRecord:
        """Store the blobs, then the version row, then its manifest; all under the writers' shared lock."""
        self._writable(f"store {new.name}")  # before the lock file, which a read-only folder cannot create
        with file_lock(self._lock_path, exclusive=False):
            self.check_can_store(new.name, new.task)  # again under the lock, before any blob is written
            self.blobs.clear_stale_tmp()  # leftovers of writers that were killed
            self._ensure_manifests()
            new = _with_files(new, self._store_blobs(sources))
            try:
                number = self.index.insert_version(new)
            except ValueError as exc:
                raise RegistryError(str(exc)) from None
            record = self.resolve(names.version_ref(new.name, number))
            self.manifests.write(record.to_dict())
        return record

    def _ensure_manifests(self) -> None:
        """Write the manifests an older loradex did not (once: afterwards every version has one)."""
        have = {(name, version) for name, version, _ in self.manifests.entries()}
        for row in self._all_rows():
            if (row.name, row.version) not in have:
                self.manifests.write(_record(row).to_dict())

    def _prepare(
        self,
        *,
        name: str,
        spec: AdapterSpec,
        sources: dict[str, Path | bytes],
        kind: str,
        parents: Sequence[str],
        args: Mapping[str, Any] | None,
        metrics: Mapping[str, float] | None,
        folder_metrics: Mapping[str, Any],
        where: str,
    ) -> NewVersion:
        """Validate everything about a new version except its blobs (no writes).

        Adds the generated ``metrics.json`` / ``README.md`` to ``sources`` when needed.
        """
        if kind not in KINDS:
            raise RegistryError(f"unknown version kind {kind!r}; use one of {', '.join(KINDS)}")
        args = dict(args or {})
        try:
            json.dumps(args, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise RegistryError(f"version args must be JSON values: {exc}") from None
        if metrics is None:
            final = numeric_metrics(folder_metrics, source=f"{where}/{METRICS_FILE}", strict=False)
        else:
            final = numeric_metrics(metrics, source="metrics", strict=True)
        described = describing_files(spec, metrics=final, name=name)
        if metrics is not None or METRICS_FILE not in sources:
            sources[METRICS_FILE] = described[METRICS_FILE]
        sources.setdefault(CARD_FILE, described[CARD_FILE])
        parent_refs = tuple(self.resolve(p).ref for p in parents)
        head_name, head_value = headline(final, args, spec.tasks)
        return NewVersion(
            name=name, task=spec.task, spec_json=spec.to_json(), metrics=final, base=spec.backbone.name,
            fingerprint=spec.backbone.fingerprint, files=(), created=utc_now(), kind=kind, args=args,
            parents=parent_refs, headline_name=head_name, headline_value=head_value,
        )

    def _store_blobs(self, sources: Mapping[str, Path | bytes]) -> list[tuple[str, str, int]]:
        files = []
        for fname, src in sorted(sources.items()):
            try:
                sha, size = self.blobs.add_bytes(src) if isinstance(src, bytes) else self.blobs.add_file(src)
            except OSError as exc:
                raise ArtifactError(f"{src}: could not be stored ({exc.strerror or exc})") from None
            files.append((fname, sha, size))
        return files

    # -- aliases ---------------------------------------------------------------------------

    def tag(self, ref: str, alias: str) -> VersionRecord:
        """Point ``NAME@alias`` at the version ``ref`` resolves to (moving it if it existed)."""
        names.validate_alias(alias)
        record = self.resolve(ref)
        self._writable(f"tag {record.ref}")
        if not self.index.set_alias(record.name, alias, record.version):
            raise NotFoundError(f"{record.ref} was removed while it was being tagged")
        self._save_aliases(record.name)
        return self.resolve(record.ref)

    def _save_aliases(self, name: str) -> None:
        summary = {s.name: s for s in self.list()}.get(name)
        self.manifests.write_aliases(name, summary.aliases if summary else {})

    def untag(self, name: str, alias: str) -> None:
        """Remove the alias ``name@alias`` (the version stays)."""
        names.validate_name(name)
        if alias == names.LATEST:
            raise RegistryError("'latest' is automatic and cannot be removed")
        names.validate_name(alias, kind="alias")
        self._writable(f"untag {name}@{alias}")
        if not self.index.drop_alias(name, alias):
            self._require_adapter(name)
            known = self.index.alias_names(name)
            raise NotFoundError(
                f"{name} has no alias {alias!r}.{_suggest(alias, known)} Aliases: {', '.join(known) or 'none'}."
            )
        self._save_aliases(name)

    # -- reading ---------------------------------------------------------------------------

    def resolve(self, ref: str | VersionRecord) -> VersionRecord:
        """The version ``ref`` names: ``name`` / ``name@latest`` (newest), ``name@v3``, ``name@prod``."""
        if isinstance(ref, VersionRecord):
            ref = ref.ref
        parsed = names.parse_ref(ref)
        version = self._version_number(parsed)
        rows = self.index.versions(name=parsed.name, version=version) if version is not None else []
        if not rows:
            self._not_found(parsed)
        return _record(rows[0])

    def canonical(self, ref: str) -> str:
        """``ref`` as ``name@vN`` now (an alias followed), without reading the version's record."""
        parsed = names.parse_ref(ref)
        version = self._version_number(parsed)
        if version is None or (parsed.version is not None and not self.index.versions(name=parsed.name,
                                                                                        version=version)):
            self._not_found(parsed)
        return names.version_ref(parsed.name, version)  # type: ignore[arg-type]

    def _version_number(self, parsed: names.Ref) -> int | None:
        if parsed.version is not None:
            return parsed.version
        if parsed.alias is None or parsed.alias == names.LATEST:
            return self.index.latest(parsed.name)
        return self.index.alias_target(parsed.name, parsed.alias)

    get = resolve

    def aliases_of(self, name: str) -> dict[str, int]:
        """``name``'s aliases and the version number each points at (one index query)."""
        return self.index.aliases_of(name)

    def pulled(self, *, endpoint: str, repo: str, commit: str) -> list[VersionRecord]:
        """The versions pulled from ``repo`` at ``commit`` on the Hub at ``endpoint`` (one index query)."""
        return [self.resolve(names.version_ref(name, version))
                for name, version in self.index.pulled(endpoint=endpoint, repo=repo, commit=commit)]

    def versions(self, name: str) -> list[VersionRecord]:
        """Every version of ``name``, oldest first."""
        names.validate_name(name)
        self._require_adapter(name)
        return [_record(row) for row in self.index.versions(name=name)]

    def list(self, *, task: str | None = None) -> list[AdapterSummary]:
        """One summary per adapter (optionally only those of ``task``), by name.

        An index holding no version while version manifests exist (an emptied or deleted
        index.db) is an IndexDamagedError naming the cure, never an empty shelf.
        """
        summaries = self._summaries(task=task)
        if not summaries and task is None and self.index is not None and not self.index.adapter_names():
            recorded = sum(1 for _ in self.manifests.entries())
            if recorded:
                raise IndexDamagedError(
                    f"{self.root}/index.db holds no versions, but {recorded} version manifest"
                    f"{'s' if recorded != 1 else ''} exist: the index was emptied or deleted; run "
                    "`adapters verify --repair` to rebuild it from them")
        return summaries

    def _summaries(self, *, task: str | None) -> list[AdapterSummary]:
        return self.index.summaries(task=task)

    def lineage(self, ref: str | VersionRecord) -> LineageNode:
        """The tree of versions ``ref`` was made from (parents that were removed have no record)."""
        record = self.resolve(ref)
        return self._lineage(record, depth=0)

    def _lineage(self, record: VersionRecord, *, depth: int) -> LineageNode:
        nodes = []
        for parent in record.parents:
            try:
                found = self.resolve(parent)
            except (NotFoundError, RegistryError):
                nodes.append(LineageNode(parent, None))
                continue
            nodes.append(self._lineage(found, depth=depth + 1) if depth < 32 else LineageNode(parent, found))
        return LineageNode(record.ref, record, tuple(nodes))

    def _require_adapter(self, name: str) -> None:
        if self.index.latest(name) is None:
            known = self.index.adapter_names()
            raise NotFoundError(f"no adapter named {name!r} in the registry at {self.root}.{_suggest(name, known)}")

    def _not_found(self, parsed: names.Ref) -> None:
        self._require_adapter(parsed.name)
        numbers = self.index.version_numbers(parsed.name)
        have = _ranges(numbers)
        if parsed.version is not None:
            raise NotFoundError(f"{parsed.name} has no version v{parsed.version}; it has {have}")
        aliases = self.index.alias_names(parsed.name)
        raise NotFoundError(
            f"{parsed.name} has no alias {parsed.alias!r}.{_suggest(parsed.alias or '', aliases)} "
            f"Aliases: {', '.join(aliases) or 'none'}; versions: {have}"
        )

    # -- files -----------------------------------------------------------------------------

    def materialize(self, ref: str | VersionRecord) -> Path:
        """A folder holding the version's files, each hash checked; PEFT and ``attach`` read it.

        Raises IntegrityError naming the version and the file if a stored file is corrupt. A
        read-only registry materialises into a temporary folder outside it.
        """
        record = ref if isinstance(ref, VersionRecord) else self.resolve(ref)  # a record is not looked up again
        cache = self.cache if not self.read_only else Path(tempfile.gettempdir()) / "loradex-read-only" / _slug(self.root)
        target = cache / record.name / f"v{record.version}"
        if target.is_dir() and _folder_matches(target, record):
            return target
        scratch = self.blobs.tmp if not self.read_only else cache
        scratch.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            if not self.read_only:
                stack.enter_context(file_lock(self._lock_path, exclusive=False))
            building = Path(tempfile.mkdtemp(prefix=tmp_prefix("materialize"), dir=scratch))
            try:
                for fname, entry in record.files.items():
                    dest = building / fname
                    if self.blobs.path(entry.sha256).is_file():
                        self.blobs.link_or_copy(entry.sha256, dest)
                        fault = _check_file(dest, entry)
                    else:
                        fault = "blob is missing"
                    if fault:
                        raise IntegrityError(
                            f"{record.ref}: {fname} is corrupt in the registry ({fault}); "
                            "run `adapters verify` and re-import or remove this version"
                        )
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists():
                    shutil.rmtree(target, ignore_errors=True)
                try:
                    os.rename(building, target)
                except OSError:  # another process put an identical folder there first
                    if not (target.is_dir() and _folder_matches(target, record)):
                        raise
            finally:
                if building.exists():
                    shutil.rmtree(building, ignore_errors=True)
        return target

    def export(self, ref: str | VersionRecord, dest: Path) -> Path:
        """Write the version as a self-contained PEFT-format folder at ``dest`` (new or empty)."""
        record = self.resolve(ref)
        dest = Path(dest)
        with staged_folder(dest) as staging:
            source = self.materialize(record)
            for fname in record.files:
                shutil.copyfile(source / fname, staging / fname)
        return dest

    def check_base(self, ref: str | VersionRecord, fingerprint: str, *, allow_mismatch: bool = False) -> None:
        """Refuse (FingerprintMismatchError) a version trained on another base than ``fingerprint``."""
        record = self.resolve(ref)
        check_fingerprint(record.spec, fingerprint, where=record.ref, allow_mismatch=allow_mismatch)

    # -- removal and integrity -------------------------------------------------------------

    def remove(self, ref: str, *, force: bool = False) -> list[VersionRecord]:
        """Remove one version (``name@vN``, ``name@alias``) or a whole adapter (bare ``name``).

        Refused while an alias points at a version being removed unless ``force``. Blobs no
        version references any more are deleted. Returns the removed records.

        The manifests go first, then the rows (one transaction): killed in between, the index
        still holds the versions and ``verify --repair`` writes their manifests again — a
        removed version never comes back. Garbage collection runs last and never fails the
        removal: what it cannot delete it leaves for ``verify`` to report.
        """
        parsed = names.parse_ref(ref)
        if parsed.is_bare:
            records = self.versions(parsed.name)
        else:
            records = [self.resolve(ref)]
        self._writable(f"remove {ref}")
        blocking = [f"{r.name}@{a} → v{r.version}" for r in records for a in r.aliases]
        if blocking and not force:
            raise RegistryError(f"{ref} is in use by alias {', '.join(sorted(blocking))}; untag it first or pass --force")
        # exclusive: no writer may re-create these manifests between their removal and the rows'
        with file_lock(self._lock_path, exclusive=True):
            for record in records:
                self.manifests.remove(record.name, record.version)
            blocking = self.index.delete_versions(parsed.name, [r.version for r in records], force=force)
            if blocking:  # an alias was set meanwhile: put the manifests back and refuse
                for record in records:
                    self.manifests.write(record.to_dict())
                raise RegistryError(f"{ref} is in use by alias {', '.join(blocking)}; untag it first or pass --force")
        self._save_aliases(parsed.name)
        for record in records:
            shutil.rmtree(self.cache / record.name / f"v{record.version}", ignore_errors=True)
        try:
            self.gc()
        except RegistryError as exc:
            print(f"Warning: removed {ref}, but its files were kept: {exc}", file=sys.stderr)
        return records

    def lost_versions(self) -> list[str]:
        """``name@vN`` of versions a manifest records but the index does not hold (:func:`.fsck.lost_versions`)."""
        return fsck.lost_versions(self)

    def gc(self) -> tuple[int, int]:
        """Delete unreferenced blobs and leftovers; (blobs removed, bytes freed) (:func:`.fsck.gc`)."""
        return fsck.gc(self)

    def _all_rows(self) -> list[VersionRow]:
        return fsck.all_rows(self)

    def verify(self, ref: str | None = None) -> list[str]:
        """One line per problem found, empty if intact (:func:`.fsck.verify`)."""
        return fsck.verify(self, ref)

    def leftovers(self) -> list[str]:
        """Notes on scratch folders of dead loradex processes (:func:`.fsck.leftovers`)."""
        return fsck.leftovers(self)

    def repair(self) -> list[str]:
        """Rebuild what can be rebuilt; one line per repair made (:func:`.fsck.repair`)."""
        return fsck.repair(self)


def check_destination(dest: Path) -> None:
    """Refuse an export destination that exists and is not an empty folder, or lies under a file."""
    for parent in [dest, *dest.parents]:
        if parent.exists():
            if parent != dest and not parent.is_dir():
                raise RegistryError(f"{dest}: cannot be created: {parent} is a file")
            break
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise RegistryError(f"{dest}: exists and is not an empty folder; export needs a new or empty folder")


@contextlib.contextmanager
def staged_folder(dest: Path) -> Iterator[Path]:
    """A scratch folder beside ``dest`` that becomes ``dest`` (new or empty) only if the block succeeds.

    Nothing is half-written: on any error the scratch folder is removed and ``dest`` is untouched.
    """
    check_destination(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    except OSError as exc:
        raise RegistryError(f"{dest}: cannot be written ({exc.strerror or exc}); choose a folder you can write to") \
            from None
    try:
        try:
            yield staging
            if dest.exists():
                dest.rmdir()
            os.rename(staging, dest)
        except OSError as exc:
            if exc.filename is None or not str(exc.filename).startswith((str(dest.parent), str(dest))):
                raise
            raise RegistryError(f"{dest}: cannot be written ({exc.strerror or exc}); nothing was exported") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _slug(path: Path) -> str:
    import hashlib

    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]


def _from_manifest(data: Mapping[str, Any]) -> NewVersion:
    spec = AdapterSpec.from_dict(data["spec"], source=f"manifest of {data['name']}@v{data['version']}")
    headline_data = data.get("headline") or {}
    return NewVersion(
        name=data["name"], task=data["task"], spec_json=spec.to_json(), metrics=data.get("metrics", {}),
        base=spec.backbone.name, fingerprint=spec.backbone.fingerprint,
        files=tuple((f, e["sha256"], int(e["size"])) for f, e in data["files"].items()),
        created=data["created"], kind=data["kind"], args=data.get("args", {}), parents=tuple(data.get("parents", ())),
        headline_name=headline_data.get("metric"), headline_value=headline_data.get("value"),
    )


def _with_files(new: NewVersion, files: list[tuple[str, str, int]]) -> NewVersion:
    from dataclasses import replace

    return replace(new, files=tuple(files))


def _record(row: VersionRow) -> VersionRecord:
    return VersionRecord(
        name=row.name,
        version=row.version,
        task=row.task,
        spec=AdapterSpec.from_json(row.spec, source=f"{names.version_ref(row.name, row.version)} spec"),
        metrics=json.loads(row.metrics),
        files={path: FileEntry(sha, size) for path, sha, size in row.files},
        size=row.size,
        created=row.created,
        kind=row.kind,
        parents=row.parents,
        args=json.loads(row.args),
        aliases=row.aliases,
        headline_metric=row.headline_name,
        headline_value=row.headline_value,
    )


def _check_file(path: Path, entry: FileEntry) -> str | None:
    sha, size = sha256_file(path)
    if size != entry.size:
        return f"size is {size} bytes, expected {entry.size}"
    if sha != entry.sha256:
        return f"content hash is {sha[:12]}…, expected {entry.sha256[:12]}…"
    return None


def _folder_matches(folder: Path, record: VersionRecord) -> bool:
    try:
        present = {p.name for p in folder.iterdir()}
    except OSError:
        return False
    if present != set(record.files):
        return False
    return all(_check_file(folder / fname, entry) is None for fname, entry in record.files.items())


def _suggest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _ranges(numbers: Sequence[int]) -> str:
    if not numbers:
        return "no versions"
    parts: list[str] = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(f"v{start}" if start == prev else f"v{start}–v{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(parts)

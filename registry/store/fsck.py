"""The registry's consistency checks and repairs, git-fsck style: ``adapters verify [--repair]`` and ``gc``.

Everything here reads the registry's parts (index, manifests, blobs) and rebuilds what can be
rebuilt; nothing here is needed to store or read a version.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from loradex.core.errors import IndexDamagedError, LoradexError, ReadOnlyRegistryError
from loradex.core.scratch import dead_scratch

from loradex.registry.store import names
from loradex.registry.store import registry as stored  # the record helpers; imported both ways round, used only at call time
from loradex.registry.store.index import Index
from loradex.registry.store.locks import file_lock

if TYPE_CHECKING:
    from loradex.registry.store.registry import Registry, VersionRecord


def all_rows(registry: Registry):
    """Every version row of the index (none while the index is unreadable)."""
    return registry.index.versions() if registry.index is not None else []


def lost_versions(registry: Registry) -> list[str]:
    """``name@vN`` of versions a manifest records but the index does not hold.

    Manifests are listed BEFORE the index is read: a writer commits its row before it writes
    the manifest, so a version being stored meanwhile is never taken for a lost one.
    """
    recorded = [(n, v) for n, v, _ in registry.manifests.entries()]
    indexed = {(r.name, r.version) for r in all_rows(registry)}
    return [names.version_ref(n, v) for n, v in recorded if (n, v) not in indexed]


def gc(registry: Registry) -> tuple[int, int]:
    """Delete blobs no version references and leftovers of interrupted writes.

    A blob is kept while the index OR a version manifest names it, and nothing is deleted
    while the index has lost versions its manifests record (``verify --repair`` first).
    Files under ``blobs/`` that are not blobs are left alone. Returns (blobs removed,
    bytes freed). Waits for writers in progress to finish.
    """
    registry._writable("collect garbage")
    removed = freed = 0
    with file_lock(registry._lock_path, exclusive=True):
        lost = lost_versions(registry)
        if lost:
            raise IndexDamagedError(
                f"the index lost {len(lost)} version{'s' if len(lost) != 1 else ''} its manifests record "
                f"({', '.join(lost[:5])}{', ...' if len(lost) > 5 else ''}); nothing was deleted: "
                "run `adapters verify --repair`")
        referenced = registry.index.referenced_blobs() | registry.manifests.referenced_blobs()
        for sha in list(registry.blobs.all()):
            if sha not in referenced:
                try:
                    freed += registry.blobs.remove(sha)
                    removed += 1
                except OSError:
                    continue
        registry.blobs.clear_tmp()
        live = {(r.name, r.version) for r in all_rows(registry)}
        for adapter_dir in list(registry.cache.iterdir()):
            for vdir in list(adapter_dir.iterdir()) if adapter_dir.is_dir() else []:
                number = names.parse_version(vdir.name)
                if number is None or (adapter_dir.name, number) not in live:
                    shutil.rmtree(vdir, ignore_errors=True)
            if adapter_dir.is_dir() and not any(adapter_dir.iterdir()):
                adapter_dir.rmdir()
    return removed, freed


def verify(registry: Registry, ref: str | None = None) -> list[str]:
    """Re-hash every blob of every version (or of ``ref``: a version, or all of a bare name).

    For the whole registry it also checks the index file itself, versions the index lost
    (their manifests remain), versions without a manifest, blobs no version references,
    files under ``blobs/`` that are not blobs, and temporaries of interrupted writes.
    Returns one line per problem found; an empty list means the registry is intact.
    """
    problems: list[str] = []
    if registry.index is None:
        return [registry.index_fault or "index: damaged", *manifest_problems(registry)]
    if ref is None:
        fault = untrusted_index(registry)
        if fault is not None:
            return [f"index: {fault}; run `adapters verify --repair`", *manifest_problems(registry, records=None,
                                                                                               trusted=False)]
        records = [stored._record(row) for row in all_rows(registry)]
        problems += manifest_problems(registry, records)
    else:
        parsed = names.parse_ref(ref)
        records = registry.versions(parsed.name) if parsed.is_bare else [registry.resolve(ref)]
    seen: dict[tuple[str, int], str | None] = {}
    for record in records:
        for fname, entry in record.files.items():
            key = (entry.sha256, entry.size)
            if key not in seen:
                seen[key] = registry.blobs.check(entry.sha256, entry.size)
            if seen[key]:
                problems.append(f"{record.ref}: {fname}: {seen[key]} (blob {entry.sha256[:12]}…)")
    if ref is None:
        problems += _damaged_caches(registry.root)
    return problems


def leftovers(registry: Registry) -> list[str]:
    """Notes on scratch folders of dead loradex processes in the system's temporary folder.

    They belong to no registry (any loradex process on this machine may have left them), so
    they are reported beside ``verify``'s problems without failing it; ``--repair`` removes them.
    """
    return [f"note: {path} was left by a loradex process that died; `adapters verify --repair` removes it"
            for path in dead_scratch()]


def untrusted_index(registry: Registry) -> str | None:
    """Why an index that opened cannot be trusted (SQLite's integrity check, a full read), or None."""
    if registry.index is None:
        return None
    try:
        problems = registry.index.integrity_check()
        all_rows(registry)
    except IndexDamagedError as exc:
        return str(exc)
    return f"index.db fails SQLite's integrity check ({'; '.join(problems[:3])})" if problems else None


def manifest_problems(registry: Registry, records: Sequence[VersionRecord] | None = None, *, trusted: bool = True) -> list[str]:
    problems = []
    lost = lost_versions(registry) if registry.index is not None and trusted else [
        names.version_ref(n, v) for n, v, _ in registry.manifests.entries()]
    if lost:
        problems.append(f"index: lost {len(lost)} version{'s' if len(lost) != 1 else ''} that manifests record "
                        f"({', '.join(lost[:5])}{', ...' if len(lost) > 5 else ''}); run `adapters verify --repair`")
    if records is not None:
        have = {(n, v) for n, v, _ in registry.manifests.entries()}
        missing = [r.ref for r in records if (r.name, r.version) not in have]
        if missing:
            problems.append(f"manifests: {len(missing)} version{'s' if len(missing) != 1 else ''} have none "
                            f"({', '.join(missing[:5])}); `adapters verify --repair` writes them")
    referenced = (registry.index.referenced_blobs() if registry.index is not None and trusted else set()) \
        | registry.manifests.referenced_blobs()
    orphans = [sha for sha in registry.blobs.all() if sha not in referenced] if registry.blobs.dir.is_dir() else []
    if orphans:
        size = sum(registry.blobs.path(sha).stat().st_size for sha in orphans)
        problems.append(f"blobs: {len(orphans)} blob{'s' if len(orphans) != 1 else ''} ({stored._mb(size)}) referenced by "
                        "no version; if versions are missing, do not remove anything and run "
                        "`adapters verify --repair`")
    foreign = registry.blobs.foreign() if registry.blobs.dir.is_dir() else []
    if foreign:
        problems.append(f"blobs: {len(foreign)} file{'s' if len(foreign) != 1 else ''} that are not blobs "
                        f"({', '.join(str(p.relative_to(registry.root)) for p in foreign[:3])}); they are ignored")
    stale = registry.blobs.stale_tmp()
    if stale:
        size = sum(p.stat().st_size for p in stale if p.is_file())
        problems.append(f"tmp: {len(stale)} leftover{'s' if len(stale) != 1 else ''} of interrupted writes "
                        f"({stored._mb(size)}); removed by the next write or by `adapters verify --repair`")
    return problems


def repair(registry: Registry) -> list[str]:
    """Rebuild what can be rebuilt, git-fsck style; returns one line per repair made.

    A damaged index file is moved aside and a new one built from the manifests; versions the
    index lost are restored from their manifests (with their aliases); versions without a
    manifest get one; leftovers of interrupted writes are removed.
    """
    if registry.read_only:
        raise ReadOnlyRegistryError(f"the registry at {registry.root} is read-only: cannot repair it")
    done: list[str] = []
    with file_lock(registry._lock_path, exclusive=True):
        done += _rebuild_index(registry)
        done += _restore_from_manifests(registry)
        before = {(n, v) for n, v, _ in registry.manifests.entries()}
        written = [r for r in all_rows(registry) if (r.name, r.version) not in before]
        for row in written:
            registry.manifests.write(stored._record(row).to_dict())
        if written:
            done.append(f"manifests: wrote {len(written)} missing manifest{'s' if len(written) != 1 else ''}")
        count, size = registry.blobs.clear_stale_tmp()
        if count:
            done.append(f"tmp: removed {count} leftover{'s' if count != 1 else ''} of interrupted writes "
                        f"({stored._mb(size)})")
        for line in _damaged_caches(registry.root):
            damaged = Path(line.split(": ", 1)[0])
            damaged.unlink(missing_ok=True)
            damaged.with_suffix(".json").unlink(missing_ok=True)
            done.append(f"cache: removed {damaged.name}, a damaged image cache (the next run builds it again)")
    for path in dead_scratch():
        shutil.rmtree(path, ignore_errors=True)
        done.append(f"tmp: removed {path}, left by a loradex process that died")
    if not lost_versions(registry):  # every version is indexed again: a blob nothing names is garbage
        removed, freed = gc(registry)
        if removed:
            done.append(f"blobs: removed {removed} blob{'s' if removed != 1 else ''} no version references "
                        f"({stored._mb(freed)})")
    return done


def _rebuild_index(registry: Registry) -> list[str]:
    """An index that cannot be trusted is moved aside and an empty one made (filled from the manifests next)."""
    fault = untrusted_index(registry)
    if fault is not None:  # opens, but pages are damaged: rebuilt like an unreadable one
        registry.index.close()  # type: ignore[union-attr]
        registry.index, registry.index_fault = None, fault
    if registry.index is not None:
        return []
    stamp = stored.utc_now().replace(":", "")
    for suffix in ("", "-wal", "-shm"):
        damaged = registry.root / f"index.db{suffix}"
        if damaged.exists():
            damaged.rename(registry.root / f"index.db{suffix}.damaged-{stamp}")
    registry.index = Index(registry.root / "index.db")
    registry.index_fault = None
    return [f"index: the damaged index.db was moved to index.db.damaged-{stamp}; rebuilt from manifests"]


def _restore_from_manifests(registry: Registry) -> list[str]:
    """Versions (and their aliases) the manifests record but the index lost, put back in the index."""
    done: list[str] = []
    indexed = {(r.name, r.version) for r in all_rows(registry)}
    restored = []
    for name, version, path in registry.manifests.entries():
        if (name, version) in indexed:
            continue
        try:
            registry.index.restore_version(stored._from_manifest(registry.manifests.read(path)), version)
        except (ValueError, KeyError, TypeError, LoradexError) as exc:
            done.append(f"manifests: {path.relative_to(registry.root)} could not be restored ({exc})")
            continue
        restored.append(names.version_ref(name, version))
    if restored:
        done.append(f"index: restored {len(restored)} version{'s' if len(restored) != 1 else ''} from "
                    f"manifests ({', '.join(restored[:5])}{', ...' if len(restored) > 5 else ''})")
        for name in sorted({ref.split("@", 1)[0] for ref in restored}):
            for alias, version in registry.manifests.aliases(name).items():
                if registry.index.set_alias(name, alias, version):
                    done.append(f"aliases: restored {name}@{alias} → v{version}")
    return done


def _damaged_caches(root: Path) -> list[str]:
    """The image caches training left under ``root/cache/images`` that fail their checks."""
    from loradex.core.data.loading import damaged_caches  # imports torch: only when verifying

    return damaged_caches(root / "cache" / "images")

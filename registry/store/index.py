"""The registry's SQLite index: adapters, versions, files, lineage and aliases.

The database runs in WAL mode (readers never block the writer) with a busy timeout, and
every change is one ``BEGIN IMMEDIATE`` transaction, so concurrent writers queue instead of
failing and a killed writer leaves nothing half-written. Only this module speaks SQL.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradex.core.errors import IndexDamagedError, ReadOnlyRegistryError, RegistryError

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS adapters (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    task TEXT NOT NULL,
    next_version INTEGER NOT NULL DEFAULT 1,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    id INTEGER PRIMARY KEY,
    adapter_id INTEGER NOT NULL REFERENCES adapters(id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    task TEXT NOT NULL,
    spec TEXT NOT NULL,
    metrics TEXT NOT NULL,
    base TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    size INTEGER NOT NULL,
    created TEXT NOT NULL,
    kind TEXT NOT NULL,
    args TEXT NOT NULL,
    headline_name TEXT,
    headline_value REAL,
    UNIQUE (adapter_id, version)
);
CREATE TABLE IF NOT EXISTS files (
    version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (version_id, path)
);
CREATE INDEX IF NOT EXISTS files_by_sha ON files(sha256);
CREATE TABLE IF NOT EXISTS parents (
    version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    ref TEXT NOT NULL,
    PRIMARY KEY (version_id, position)
);
CREATE TABLE IF NOT EXISTS aliases (
    adapter_id INTEGER NOT NULL REFERENCES adapters(id) ON DELETE CASCADE,
    alias TEXT NOT NULL,
    version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    PRIMARY KEY (adapter_id, alias)
);
CREATE INDEX IF NOT EXISTS aliases_by_version ON aliases(version_id);
"""

_VERSION_COLUMNS = (
    "v.id, a.name, v.version, v.task, v.spec, v.metrics, v.base, v.fingerprint, v.size, v.created, "
    "v.kind, v.args, v.headline_name, v.headline_value"
)


@dataclass(frozen=True)
class AdapterSummary:
    """One line of ``adapters list``: an adapter and its latest version."""

    name: str
    task: str
    versions: int
    latest: int
    aliases: dict[str, int]
    base: str
    size: int
    """Bytes of the latest version."""
    headline_metric: str | None
    headline_value: float | None
    updated: str
    """When the latest version was created (ISO 8601, UTC)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """All metrics of the latest version."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return {
            "name": self.name, "task": self.task, "versions": self.versions, "latest": self.latest,
            "aliases": self.aliases, "base": self.base, "size": self.size,
            "headline": {"metric": self.headline_metric, "value": self.headline_value}, "updated": self.updated,
            "metrics": self.metrics,
        }


@dataclass(frozen=True)
class VersionRow:
    """One version as stored, with its files, parents and aliases (JSON columns still text)."""

    id: int
    name: str
    version: int
    task: str
    spec: str
    metrics: str
    base: str
    fingerprint: str
    size: int
    created: str
    kind: str
    args: str
    headline_name: str | None
    headline_value: float | None
    files: tuple[tuple[str, str, int], ...]
    parents: tuple[str, ...]
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class NewVersion:
    """Everything :meth:`Index.insert_version` writes for one version (blobs already stored)."""

    name: str
    task: str
    spec_json: str
    metrics: Mapping[str, float]
    base: str
    fingerprint: str
    files: Sequence[tuple[str, str, int]]
    """(file name, sha256, size) for each file."""
    created: str
    kind: str
    args: Mapping[str, Any]
    parents: Sequence[str]
    headline_name: str | None
    headline_value: float | None


def connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    """Open (and if needed create) the index at ``path`` in WAL mode with a busy timeout.

    ``read_only`` opens an existing index without writing anything (a read-only folder or
    file system): no WAL switch, no schema creation.
    """
    if read_only:
        uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        if found != SCHEMA_VERSION:
            conn.close()
            raise sqlite3.DatabaseError(f"index schema {found} is not supported (this loradex reads {SCHEMA_VERSION})")
        return conn
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":  # pragma: no cover - e.g. a file system without shared memory
        raise sqlite3.OperationalError(f"could not switch {path} to WAL mode (got {mode})")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
        with transaction(conn):
            if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found != SCHEMA_VERSION:
        conn.close()
        raise sqlite3.DatabaseError(f"{path}: index schema {found} is not supported (this loradex reads {SCHEMA_VERSION})")
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def describe_fault(path: Path, exc: sqlite3.Error) -> RegistryError:
    """The one-line error for an SQLite fault: read-only, locked, or a damaged index (with the cure)."""
    text = str(exc)
    if "readonly" in text or "read-only" in text:
        return ReadOnlyRegistryError(f"the registry at {path.parent} is read-only ({text}); listing, showing, "
                                     "predicting and exporting work, changes do not")
    if "locked" in text or "busy" in text:
        return RegistryError(f"{path}: the registry index stayed locked by another process ({text}); try again")
    return IndexDamagedError(f"{path}: the registry index is damaged ({text}); run `adapters verify --repair` "
                             "to rebuild it from the version manifests (your blobs are kept)")


def _guarded(method):
    """Turn SQLite faults raised by an Index method into one-line registry errors."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise describe_fault(self.path, exc) from None

    return wrapper


class Index:
    """Typed queries over one SQLite connection; SQLite faults become :class:`RegistryError` lines
    (every public query is ``@_guarded``; tests/test_registry_faults.py checks none is left out)."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        """Open the index file at ``path`` (``read_only``: without writing anything)."""
        self.path = Path(path)
        self.read_only = read_only
        try:
            self.conn = connect(self.path, read_only=read_only)
        except sqlite3.Error as exc:
            raise describe_fault(self.path, exc) from None



    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    # -- writing ---------------------------------------------------------------------------

    @_guarded
    def insert_version(self, new: NewVersion) -> int:
        """Add ``new`` as the next version of its adapter in one transaction; returns the number.

        Raises ValueError if the adapter exists for another task.
        """
        with transaction(self.conn) as conn:
            return self._insert(conn, new)

    @_guarded
    def insert_many(self, batch: Sequence[NewVersion]) -> list[int]:
        """Insert several versions in one transaction (bulk loads); same rows as insert_version."""
        with transaction(self.conn) as conn:
            return [self._insert(conn, new) for new in batch]

    def _insert(self, conn: sqlite3.Connection, new: NewVersion) -> int:
        row = conn.execute("SELECT id, task, next_version FROM adapters WHERE name = ?", (new.name,)).fetchone()
        if row is None:
            adapter_id = conn.execute(
                "INSERT INTO adapters (name, task, next_version, created) VALUES (?, ?, 1, ?)",
                (new.name, new.task, new.created),
            ).lastrowid
            number = 1
        else:
            adapter_id, task, number = row
            if task != new.task:
                raise ValueError(f"adapter {new.name!r} holds {task!r} versions, not {new.task!r}")
        version_id = conn.execute(
            "INSERT INTO versions (adapter_id, version, task, spec, metrics, base, fingerprint, size, created, "
            "kind, args, headline_name, headline_value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                adapter_id, number, new.task, new.spec_json, json.dumps(dict(new.metrics), sort_keys=True),
                new.base, new.fingerprint, sum(size for _, _, size in new.files), new.created, new.kind,
                json.dumps(dict(new.args), sort_keys=True, default=str), new.headline_name, new.headline_value,
            ),
        ).lastrowid
        self._insert_files(conn, version_id, new.files)
        conn.executemany(
            "INSERT INTO parents (version_id, position, ref) VALUES (?, ?, ?)",
            [(version_id, i, ref) for i, ref in enumerate(new.parents)],
        )
        conn.execute("UPDATE adapters SET next_version = ? WHERE id = ?", (number + 1, adapter_id))
        return number

    @_guarded
    def restore_version(self, new: NewVersion, number: int) -> None:
        """Insert ``new`` as version ``number`` exactly (rebuilding the index from manifests)."""
        with transaction(self.conn) as conn:
            row = conn.execute("SELECT id, next_version FROM adapters WHERE name = ?", (new.name,)).fetchone()
            if row is None:
                adapter_id = conn.execute(
                    "INSERT INTO adapters (name, task, next_version, created) VALUES (?, ?, ?, ?)",
                    (new.name, new.task, number + 1, new.created),
                ).lastrowid
            else:
                adapter_id = row[0]
                conn.execute("UPDATE adapters SET next_version = ? WHERE id = ?", (max(row[1], number + 1), adapter_id))
            version_id = conn.execute(
                "INSERT INTO versions (adapter_id, version, task, spec, metrics, base, fingerprint, size, created, "
                "kind, args, headline_name, headline_value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (adapter_id, number, new.task, new.spec_json, json.dumps(dict(new.metrics), sort_keys=True), new.base,
                 new.fingerprint, sum(size for _, _, size in new.files), new.created, new.kind,
                 json.dumps(dict(new.args), sort_keys=True, default=str), new.headline_name, new.headline_value),
            ).lastrowid
            self._insert_files(conn, version_id, new.files)
            conn.executemany("INSERT INTO parents (version_id, position, ref) VALUES (?, ?, ?)",
                             [(version_id, i, ref) for i, ref in enumerate(new.parents)])

    def _insert_files(self, conn: sqlite3.Connection, version_id: int, files: Sequence[tuple[str, str, int]]) -> None:
        conn.executemany(
            "INSERT INTO files (version_id, path, sha256, size) VALUES (?, ?, ?, ?)",
            [(version_id, path, sha, size) for path, sha, size in files],
        )

    @_guarded
    def set_alias(self, name: str, alias: str, version: int) -> bool:
        """Point ``name@alias`` at ``version``; False if that version does not exist."""
        with transaction(self.conn) as conn:
            row = conn.execute(
                "SELECT v.adapter_id, v.id FROM versions v JOIN adapters a ON a.id = v.adapter_id "
                "WHERE a.name = ? AND v.version = ?",
                (name, version),
            ).fetchone()
            if row is None:
                return False
            conn.execute(
                "INSERT INTO aliases (adapter_id, alias, version_id) VALUES (?, ?, ?) "
                "ON CONFLICT (adapter_id, alias) DO UPDATE SET version_id = excluded.version_id",
                (row[0], alias, row[1]),
            )
            return True

    @_guarded
    def drop_alias(self, name: str, alias: str) -> bool:
        """Remove ``name@alias``; False if there was no such alias."""
        with transaction(self.conn) as conn:
            cur = conn.execute(
                "DELETE FROM aliases WHERE alias = ? AND adapter_id = (SELECT id FROM adapters WHERE name = ?)",
                (alias, name),
            )
            return cur.rowcount > 0

    @_guarded
    def delete_versions(self, name: str, versions: Sequence[int], *, force: bool) -> list[str] | None:
        """Delete versions of ``name`` in one transaction.

        Returns None on success, or (without deleting anything) the aliases that point at
        them when ``force`` is false. An adapter left without versions is deleted too.
        """
        with transaction(self.conn) as conn:
            adapter = conn.execute("SELECT id FROM adapters WHERE name = ?", (name,)).fetchone()
            if adapter is None:
                return None
            marks = ",".join("?" * len(versions))
            ids = [r[0] for r in conn.execute(
                f"SELECT id FROM versions WHERE adapter_id = ? AND version IN ({marks})", (adapter[0], *versions)
            )]
            if not ids:
                return None
            id_marks = ",".join("?" * len(ids))
            blocking = [
                f"{name}@{alias} → v{version}"
                for alias, version in conn.execute(
                    f"SELECT al.alias, v.version FROM aliases al JOIN versions v ON v.id = al.version_id "
                    f"WHERE al.version_id IN ({id_marks}) ORDER BY al.alias",
                    ids,
                )
            ]
            if blocking and not force:
                return blocking
            conn.execute(f"DELETE FROM versions WHERE id IN ({id_marks})", ids)
            left = conn.execute("SELECT COUNT(*) FROM versions WHERE adapter_id = ?", (adapter[0],)).fetchone()[0]
            if left == 0:
                conn.execute("DELETE FROM adapters WHERE id = ?", (adapter[0],))
            return None

    # -- reading ---------------------------------------------------------------------------

    @_guarded
    def adapter_task(self, name: str) -> str | None:
        """The task of adapter ``name`` (None if there is no such adapter)."""
        row = self.conn.execute("SELECT task FROM adapters WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    @_guarded
    def adapter_names(self) -> list[str]:
        """Every adapter name, sorted."""
        return [r[0] for r in self.conn.execute("SELECT name FROM adapters ORDER BY name")]

    @_guarded
    def version_numbers(self, name: str) -> list[int]:
        """The version numbers of ``name``, ascending (empty if it does not exist)."""
        return [r[0] for r in self.conn.execute(
            "SELECT v.version FROM versions v JOIN adapters a ON a.id = v.adapter_id WHERE a.name = ? "
            "ORDER BY v.version", (name,)
        )]

    @_guarded
    def alias_names(self, name: str) -> list[str]:
        """The aliases of ``name``, sorted."""
        return [r[0] for r in self.conn.execute(
            "SELECT al.alias FROM aliases al JOIN adapters a ON a.id = al.adapter_id WHERE a.name = ? ORDER BY alias",
            (name,),
        )]

    @_guarded
    def latest(self, name: str) -> int | None:
        """The highest version number of ``name``."""
        row = self.conn.execute(
            "SELECT MAX(v.version) FROM versions v JOIN adapters a ON a.id = v.adapter_id WHERE a.name = ?", (name,)
        ).fetchone()
        return row[0] if row else None

    @_guarded
    def aliases_of(self, name: str) -> dict[str, int]:
        """The aliases of ``name`` and the version number each points at, by alias."""
        return dict(self.conn.execute(
            "SELECT al.alias, v.version FROM aliases al JOIN adapters a ON a.id = al.adapter_id "
            "JOIN versions v ON v.id = al.version_id WHERE a.name = ? ORDER BY al.alias", (name,)))

    @_guarded
    def pulled(self, *, endpoint: str, repo: str, commit: str) -> list[tuple[str, int]]:
        """(name, version) of the versions pulled from ``repo`` at ``commit`` on the Hub at ``endpoint``."""
        return [tuple(row) for row in self.conn.execute(
            "SELECT a.name, v.version FROM versions v JOIN adapters a ON a.id = v.adapter_id "
            "WHERE v.kind = 'pulled' AND json_extract(v.args, '$.origin.commit') = ? "
            "AND json_extract(v.args, '$.origin.repo') = ? AND json_extract(v.args, '$.origin.endpoint') = ? "
            "ORDER BY a.name, v.version", (commit, repo, endpoint))]

    @_guarded
    def alias_target(self, name: str, alias: str) -> int | None:
        """The version ``name@alias`` points at."""
        row = self.conn.execute(
            "SELECT v.version FROM aliases al JOIN adapters a ON a.id = al.adapter_id "
            "JOIN versions v ON v.id = al.version_id WHERE a.name = ? AND al.alias = ?",
            (name, alias),
        ).fetchone()
        return row[0] if row else None

    @_guarded
    def versions(self, *, name: str | None = None, version: int | None = None) -> list[VersionRow]:
        """Full rows, optionally only those of ``name`` (and of ``version``), by name then number."""
        where, params = [], []
        if name is not None:
            where.append("a.name = ?")
            params.append(name)
        if version is not None:
            where.append("v.version = ?")
            params.append(version)
        sql = f"SELECT {_VERSION_COLUMNS} FROM versions v JOIN adapters a ON a.id = v.adapter_id"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY a.name, v.version"
        with self.read() as conn:
            rows = conn.execute(sql, params).fetchall()
            if not rows:
                return []
            ids = [r[0] for r in rows]
            files: dict[int, list[tuple[str, str, int]]] = {i: [] for i in ids}
            parents: dict[int, list[str]] = {i: [] for i in ids}
            aliases: dict[int, list[str]] = {i: [] for i in ids}
            scope = ("SELECT v.id FROM versions v JOIN adapters a ON a.id = v.adapter_id"
                     + (" WHERE " + " AND ".join(where) if where else ""))
            for vid, path, sha, size in conn.execute(
                f"SELECT version_id, path, sha256, size FROM files WHERE version_id IN ({scope}) ORDER BY path", params
            ):
                files[vid].append((path, sha, size))
            for vid, ref in conn.execute(
                f"SELECT version_id, ref FROM parents WHERE version_id IN ({scope}) ORDER BY position", params
            ):
                parents[vid].append(ref)
            for vid, alias in conn.execute(
                f"SELECT version_id, alias FROM aliases WHERE version_id IN ({scope}) ORDER BY alias", params
            ):
                aliases[vid].append(alias)
        return [
            VersionRow(*r, files=tuple(files[r[0]]), parents=tuple(parents[r[0]]), aliases=tuple(aliases[r[0]]))
            for r in rows
        ]

    @_guarded
    def summaries(self, *, task: str | None = None) -> list[AdapterSummary]:
        """One summary per adapter (its latest version's base, size, headline and metrics; its aliases), by name."""
        sql = (
            "WITH agg AS (SELECT adapter_id, COUNT(*) AS n, MAX(version) AS latest FROM versions GROUP BY adapter_id) "
            "SELECT a.id, a.name, a.task, agg.n, agg.latest, v.base, v.size, v.headline_name, v.headline_value, "
            "v.created, v.metrics FROM adapters a JOIN agg ON agg.adapter_id = a.id "
            "JOIN versions v ON v.adapter_id = a.id AND v.version = agg.latest"
        )
        params: tuple[Any, ...] = ()
        if task is not None:
            sql += " WHERE a.task = ?"
            params = (task,)
        sql += " ORDER BY a.name"
        with self.read() as conn:
            rows = conn.execute(sql, params).fetchall()
            aliases: dict[int, dict[str, int]] = {}
            for adapter_id, alias, version in conn.execute(
                "SELECT al.adapter_id, al.alias, v.version FROM aliases al JOIN versions v ON v.id = al.version_id "
                "ORDER BY al.alias"
            ):
                aliases.setdefault(adapter_id, {})[alias] = version
        return [AdapterSummary(name=name, task=kind, versions=count, latest=latest, aliases=aliases.get(adapter_id, {}),
                               base=base, size=size, headline_metric=hname, headline_value=hvalue, updated=updated,
                               metrics=json.loads(metrics))
                for adapter_id, name, kind, count, latest, base, size, hname, hvalue, updated, metrics in rows]

    @_guarded
    def referenced_blobs(self) -> set[str]:
        """The sha256 of every blob some version's file refers to."""
        return {r[0] for r in self.conn.execute("SELECT DISTINCT sha256 FROM files")}

    @_guarded
    def quick_check(self) -> list[str]:
        """SQLite's own consistency check of the index file (empty if fine)."""
        rows = [r[0] for r in self.conn.execute("PRAGMA quick_check")]
        return [] if rows == ["ok"] else rows

    @_guarded
    def integrity_check(self) -> list[str]:
        """SQLite's full integrity check (pages, indexes, constraints); empty if fine."""
        rows = [r[0] for r in self.conn.execute("PRAGMA integrity_check")]
        return [] if rows == ["ok"] else rows

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several SELECTs."""
        self.conn.execute("BEGIN")
        try:
            yield self.conn
        finally:
            self.conn.execute("COMMIT")

"""Version manifests: every version's row kept as a small JSON file beside the index, like git's objects.

``manifests/NAME/vN.json`` holds everything the index holds for a version (spec, metrics, files
with their hashes, lineage, kind, args, time); ``manifests/NAME/aliases.json`` the adapter's
aliases. They are written atomically after the index commits and removed before it deletes, so:

- garbage collection keeps every blob a manifest names, even if the index lost its rows;
- ``adapters verify`` compares both and reports versions the index lost;
- ``adapters verify --repair`` rebuilds the index from them (as ``git fsck`` would).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

MANIFEST_FORMAT = 1
ALIASES_FILE = "aliases.json"
_VERSION_FILE = re.compile(r"^v(\d+)\.json$")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` via a temporary file and a rename (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=1, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Manifests:
    """The ``manifests/`` folder of a registry root."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "manifests"

    def path(self, name: str, version: int) -> Path:
        """Where the manifest of ``name@v{version}`` lives."""
        return self.dir / name / f"v{version}.json"

    def write(self, record: Mapping[str, Any]) -> None:
        """Store one version's manifest (``record``: ``VersionRecord.to_dict()``)."""
        data = {"format": MANIFEST_FORMAT, **{k: v for k, v in record.items() if k not in ("aliases", "headline")},
                "headline": record.get("headline")}
        write_json_atomic(self.path(record["name"], record["version"]), data)

    def remove(self, name: str, version: int) -> None:
        """Delete one version's manifest (and the adapter's folder once it holds no version)."""
        self.path(name, version).unlink(missing_ok=True)
        folder = self.dir / name
        if folder.is_dir() and not any(_VERSION_FILE.match(p.name) for p in folder.iterdir()):
            (folder / ALIASES_FILE).unlink(missing_ok=True)
            try:
                folder.rmdir()
            except OSError:
                pass

    def write_aliases(self, name: str, aliases: Mapping[str, int]) -> None:
        """Store the user aliases of ``name`` (alias → version number)."""
        if (self.dir / name).is_dir() or aliases:
            write_json_atomic(self.dir / name / ALIASES_FILE, dict(sorted(aliases.items())))

    def aliases(self, name: str) -> dict[str, int]:
        """The aliases stored for ``name`` (empty if none or unreadable)."""
        try:
            data = json.loads((self.dir / name / ALIASES_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return {}
        return {str(k): int(v) for k, v in data.items() if isinstance(v, int)} if isinstance(data, dict) else {}

    def entries(self) -> Iterator[tuple[str, int, Path]]:
        """Every manifest file: (adapter name, version, path)."""
        if not self.dir.is_dir():
            return
        for folder in sorted(self.dir.iterdir()):
            if folder.is_dir():
                for path in sorted(folder.iterdir()):
                    match = _VERSION_FILE.match(path.name)
                    if match:
                        yield folder.name, int(match.group(1)), path

    def read(self, path: Path) -> dict[str, Any]:
        """One manifest's data; ValueError if it is not a readable manifest."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except RecursionError:
            raise ValueError(f"{path}: nested too deeply to be a manifest") from None
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or "files" not in data:
            raise ValueError(f"{path}: not a loradex version manifest")
        return data

    def referenced_blobs(self) -> set[str]:
        """sha256 of every blob some manifest names (unreadable manifests are skipped)."""
        out: set[str] = set()
        for _, _, path in self.entries():
            try:
                out.update(entry["sha256"] for entry in self.read(path)["files"].values())
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return out

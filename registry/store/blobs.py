"""Content-addressed blob store: each file kept once under its sha256.

``blobs/ab/cdef...`` holds the bytes whose sha256 is ``abcdef...``. A blob is written to a
temporary file in the same file system, flushed to disk, made read-only and then
``os.replace``-d into place, so a reader never sees half a blob and two processes writing
the same content at once are harmless: both rename identical bytes onto one name.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20
STALE_AFTER_S = 3600
"""A temporary file whose writer cannot be told is stale once it is this old."""
_HEX = re.compile(r"^[0-9a-f]+$")
_OWNER = re.compile(r"^[a-z]+-(\d+)-")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def tmp_prefix(kind: str) -> str:
    """Prefix of a temporary file or folder this process writes: its pid tells when it is stale."""
    return f"{kind}-{os.getpid()}-"


def sha256_file(path: Path) -> tuple[str, int]:
    """(hex sha256, size in bytes) of the file at ``path``."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _copy_hashing(src: BinaryIO, dst: BinaryIO) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := src.read(CHUNK):
        digest.update(chunk)
        dst.write(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


class BlobStore:
    """The ``blobs/`` and ``tmp/`` folders of a registry root."""

    def __init__(self, root: Path, *, create: bool = True) -> None:
        """Use ``root/blobs`` for content and ``root/tmp`` for files being written (created unless read-only)."""
        self.dir = Path(root) / "blobs"
        self.tmp = Path(root) / "tmp"
        if create:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        """Where the blob ``sha256`` lives (it may not exist)."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.dir / sha256[:2] / sha256[2:]

    def has(self, sha256: str, size: int) -> bool:
        """Whether a blob with this hash and size is present (not re-hashed)."""
        try:
            return self.path(sha256).stat().st_size == size
        except OSError:
            return False

    def add_file(self, src: Path) -> tuple[str, int]:
        """Store the file ``src``; returns (sha256, size). Re-adding known content is cheap."""
        sha, size = sha256_file(src)
        if self.has(sha, size):
            return sha, size
        with open(src, "rb") as fh:
            return self._write(fh, expect=sha)

    def add_bytes(self, data: bytes) -> tuple[str, int]:
        """Store ``data``; returns (sha256, size)."""
        sha = hashlib.sha256(data).hexdigest()
        if self.has(sha, len(data)):
            return sha, len(data)
        import io

        return self._write(io.BytesIO(data), expect=sha)

    def _write(self, src: BinaryIO, *, expect: str) -> tuple[str, int]:
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, prefix=tmp_prefix("blob"), suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                sha, size = _copy_hashing(src, out)
                out.flush()
                os.fsync(out.fileno())
            if sha != expect:  # the source changed while we read it
                raise OSError(f"file changed while it was being stored (sha256 {expect} became {sha})")
            os.chmod(tmp, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            target = self.path(sha)
            target.parent.mkdir(exist_ok=True)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return sha, size

    def check(self, sha256: str, size: int) -> str | None:
        """Re-hash one blob: None if intact, else a short description of the fault."""
        path = self.path(sha256)
        if not path.is_file():
            return "blob is missing"
        found, found_size = sha256_file(path)
        if found_size != size:
            return f"size is {found_size} bytes, expected {size}"
        if found != sha256:
            return f"content hash is {found[:12]}…, expected {sha256[:12]}…"
        return None

    def copy_verified(self, sha256: str, size: int, dest: Path) -> str | None:
        """Copy a blob to ``dest`` while hashing it; None if intact, else the fault (dest removed)."""
        path = self.path(sha256)
        try:
            with open(path, "rb") as src, open(dest, "wb") as out:
                found, found_size = _copy_hashing(src, out)
        except FileNotFoundError:
            dest.unlink(missing_ok=True)
            return "blob is missing"
        if found_size != size or found != sha256:
            dest.unlink(missing_ok=True)
            return f"content hash is {found[:12]}…, expected {sha256[:12]}…"
        return None

    def link_or_copy(self, sha256: str, dest: Path) -> None:
        """Hard-link a blob to ``dest`` (copy where links are impossible)."""
        src = self.path(sha256)
        try:
            os.link(src, dest)
        except OSError:
            shutil.copyfile(src, dest)

    def all(self) -> Iterator[str]:
        """The sha256 of every blob on disk (files that are not blobs are left out: see :meth:`foreign`)."""
        for sub in self.dir.iterdir():
            if sub.is_dir() and len(sub.name) == 2 and _HEX.match(sub.name):
                for blob in sub.iterdir():
                    if len(blob.name) == 62 and _HEX.match(blob.name) and blob.is_file():
                        yield sub.name + blob.name

    def foreign(self) -> list[Path]:
        """Files under ``blobs/`` that are not blobs (``.DS_Store``, editor backups, ...)."""
        out = []
        for path in sorted(self.dir.rglob("*")):
            relative = path.relative_to(self.dir).parts
            is_blob = (len(relative) == 2 and len(relative[0]) == 2 and _HEX.match(relative[0])
                       and len(relative[1]) == 62 and _HEX.match(relative[1]))
            is_folder = len(relative) == 1 and path.is_dir() and len(relative[0]) == 2 and _HEX.match(relative[0])
            if not (is_blob or is_folder):
                out.append(path)
        return out

    def remove(self, sha256: str) -> int:
        """Delete one blob; returns the bytes freed (0 if it was already gone)."""
        path = self.path(sha256)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def stale_tmp(self) -> list[Path]:
        """Leftovers of interrupted writes: their writing process is gone (or they are over an hour old)."""
        if not self.tmp.is_dir():
            return []
        stale = []
        for entry in self.tmp.iterdir():
            owner = _OWNER.match(entry.name)
            if owner:
                if not _alive(int(owner.group(1))):
                    stale.append(entry)
            else:
                try:
                    if time.time() - entry.stat().st_mtime > STALE_AFTER_S:
                        stale.append(entry)
                except OSError:
                    continue
        return sorted(stale)

    def clear_stale_tmp(self) -> tuple[int, int]:
        """Delete :meth:`stale_tmp` entries; returns (entries removed, bytes freed). Safe beside live writers."""
        removed = freed = 0
        for entry in self.stale_tmp():
            freed += _size(entry)
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        return removed, freed

    def clear_tmp(self) -> None:
        """Delete every leftover of interrupted writes (only safe while no write is in progress)."""
        for leftover in self.tmp.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def _size(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0

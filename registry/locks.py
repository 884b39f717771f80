"""An inter-process reader/writer lock on a file, released by the OS if its holder dies.

Writers of versions hold it shared (many at once) from the first blob they write until their
version row is committed; garbage collection holds it exclusive, so it never deletes a blob
that a version about to be committed needs. ``flock`` locks vanish with the process, so a
killed writer never leaves the registry locked.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cross-process lock, GC stays conservative
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def file_lock(path: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold the lock on ``path`` (created if needed) for the duration of the ``with`` block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def locking_supported() -> bool:
    """Whether :func:`file_lock` really excludes other processes on this platform."""
    return fcntl is not None

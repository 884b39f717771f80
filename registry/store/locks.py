"""An inter-process reader/writer lock on a file, released by the OS if its holder dies.

Writers of versions hold it shared (many at once) from the first blob they write until their
version row is committed; garbage collection holds it exclusive, so it never deletes a blob
that a version about to be committed needs. ``flock`` locks vanish with the process, so a
killed writer never leaves the registry locked.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from loradex.core.errors import ConfigError, RegistryError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cross-process lock, GC stays conservative
    fcntl = None  # type: ignore[assignment]


LOCK_TIMEOUT_ENV = "LORADEX_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT_S = 120.0
"""How long a registry command waits for a lock another process holds before it gives up."""


@contextlib.contextmanager
def file_lock(path: Path, *, exclusive: bool, timeout_s: float | None = None) -> Iterator[None]:
    """Hold the lock on ``path`` (created if needed) for the duration of the ``with`` block.

    If another process holds it, one line on stderr says which (pid and command) and the wait
    ends with a RegistryError after ``timeout_s`` (default: ``$LORADEX_LOCK_TIMEOUT`` or 120 s).
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            _acquire(fd, path, exclusive=exclusive, timeout_s=_timeout(timeout_s))
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _timeout(given: float | None) -> float:
    if given is not None:
        return given
    raw = os.environ.get(LOCK_TIMEOUT_ENV)
    if not raw:
        return DEFAULT_LOCK_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"${LOCK_TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if value < 0:
        raise ConfigError(f"${LOCK_TIMEOUT_ENV} must be >= 0, got {raw}")
    return value


def _acquire(fd: int, path: Path, *, exclusive: bool, timeout_s: float) -> None:
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    holders = lock_holders(fd)
    who = ", ".join(holders) or "another process"
    print(f"waiting for the registry lock {path} held by {who} (up to {timeout_s:g} s, ${LOCK_TIMEOUT_ENV})",
          file=sys.stderr, flush=True)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                who = ", ".join(lock_holders(fd)) or who
                raise RegistryError(f"the registry lock {path} is still held by {who} after {timeout_s:g} s; let it "
                                    f"finish or stop it (${LOCK_TIMEOUT_ENV} sets the wait)") from None
            time.sleep(0.05)


def lock_holders(fd: int) -> list[str]:
    """``pid N (command)`` of each other process holding a lock on ``fd``'s file, from /proc/locks."""
    inode = os.fstat(fd).st_ino
    holders = []
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or "->" in fields:
            continue
        pid, where = fields[4], fields[5]
        if where.rsplit(":", 1)[-1] == str(inode) and pid.isdigit() and int(pid) != os.getpid():
            try:
                command = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                command = "?"
            holders.append(f"pid {pid} ({command})")
    return sorted(set(holders))


def locking_supported() -> bool:
    """Whether :func:`file_lock` really excludes other processes on this platform."""
    return fcntl is not None

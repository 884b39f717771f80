"""Scratch folders in the system's temporary folder that name their process, so leftovers can be found.

``scratch_folder("merge")`` is a ``TemporaryDirectory`` called ``loradex-merge-<pid>-<random>``: removed
when the block ends, and — if the process was killed before it could — by the next loradex process
that makes one (:func:`remove_dead_scratch`), or reported by ``adapters verify``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

_NAME = re.compile(r"^loradex-[a-z]+-(\d+)-")


def scratch_folder(kind: str) -> tempfile.TemporaryDirectory:
    """A temporary folder for ``kind`` of work (``merge``, ``pull``, ...); dead processes' leftovers go first."""
    remove_dead_scratch()
    return tempfile.TemporaryDirectory(prefix=f"loradex-{kind}-{os.getpid()}-")


def make_scratch(kind: str) -> Path:
    """A scratch folder that outlives this call (the caller removes it); named as :func:`scratch_folder`'s."""
    remove_dead_scratch()
    return Path(tempfile.mkdtemp(prefix=f"loradex-{kind}-{os.getpid()}-"))


def dead_scratch() -> list[Path]:
    """Scratch folders whose process no longer runs."""
    found = []
    for path in Path(tempfile.gettempdir()).glob("loradex-*"):
        match = _NAME.match(path.name)
        if match and path.is_dir() and not _alive(int(match.group(1))):
            found.append(path)
    return sorted(found)


def remove_dead_scratch() -> int:
    """Remove :func:`dead_scratch` folders; how many were removed."""
    removed = 0
    for path in dead_scratch():
        shutil.rmtree(path, ignore_errors=True)
        removed += not path.exists()
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True

"""Where loradex keeps its files: ``$LORADEX_HOME``, else ``$XDG_CACHE_HOME/loradex`` or ``~/.cache/loradex``;
and the digest it checks the files it keeps by."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

HOME_ENV = "LORADEX_HOME"


def loradex_home() -> Path:
    """The loradex root (the registry, and converted bases under ``bases/``); like ``HF_HOME``."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(cache).expanduser() / "loradex"


def file_digest(path: Path, *, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes (``sha256``, ``blake2b``, ...), read in 1 MB blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()

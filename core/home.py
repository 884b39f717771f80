"""Where loradex keeps its files: ``$LORADEX_HOME``, else ``$XDG_CACHE_HOME/loradex`` or ``~/.cache/loradex``."""

from __future__ import annotations

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

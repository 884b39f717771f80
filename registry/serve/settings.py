"""What one server (or one Ray replica) is told: where the adapters are, how to batch, what to refuse."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from loradex.core.errors import ConfigError

TOKEN_ENV = "LORADEX_SERVE_TOKEN"
"""The environment variable ``adapters serve`` reads the bearer token from when ``--token`` is not given."""


@dataclass(frozen=True)
class ServeSettings:
    """Settings of one serving process; every limit has a default that suits a CPU."""

    refs: tuple[str, ...] = ()
    """Adapters attached at start and never evicted (pinned); others attach on their first request."""
    home: str | None = None
    """The registry folder (default: $LORADEX_HOME or ~/.cache/loradex)."""
    device: str | None = None
    """cpu, cuda, cuda:N (default: a GPU if there is one)."""
    max_batch: int = 32
    """Images in one pass through the base, from however many requests."""
    max_wait_ms: float = 5.0
    """How long the first image of a batch waits for others to join it."""
    max_queue: int = 256
    """Images waiting for a pass; a request that would exceed it gets 503 with Retry-After."""
    max_adapters: int = 64
    """Adapters attached at once (pinned ones included); the least recently used go first."""
    timeout_s: float = 30.0
    """A request not answered by then gets 504."""
    max_body_mb: float = 32.0
    """Largest request body; larger ones get 413 before they are read."""
    max_pixels: int = 40_000_000
    """Largest image (width x height) a request may send; larger ones (decompression bombs) get 400."""
    allow_hub: bool = False
    """Let requests name Hub refs (org/repo@rev), which the server then downloads."""
    token: str | None = dataclasses.field(default=None, repr=False)
    """Bearer token every route but /healthz requires (None: no token)."""

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_adapters", "max_pixels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("max_wait_ms", "timeout_s", "max_body_mb"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or (name != "max_wait_ms" and value == 0):
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if len(set(self.refs)) > self.max_adapters:
            raise ConfigError(f"{len(set(self.refs))} pinned adapters do not fit --max-adapters {self.max_adapters}; "
                              "raise it or pin fewer")
        if self.token is not None and not self.token.strip():
            raise ConfigError("the token is empty; give a non-empty --token or unset it")

    @property
    def max_body_bytes(self) -> int:
        """``max_body_mb`` in bytes."""
        return int(self.max_body_mb * 1024 * 1024)

    def registry_home(self) -> Path | None:
        """The registry folder as a path (None: the default)."""
        return Path(self.home) if self.home else None

"""Run the app under uvicorn on one machine: load first (errors are one line), then listen; SIGTERM drains."""

from __future__ import annotations

import sys
from typing import Any

from .app import ServerState, create_app
from .settings import ServeSettings

GRACEFUL_SHUTDOWN_S = 30
"""How long SIGTERM waits for requests in flight before closing their connections."""


def serve(settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Load the base and pinned adapters, then serve until SIGINT/SIGTERM (in-flight requests are answered)."""
    import uvicorn

    from loradex.core.threads import configure_threads

    configure_threads()  # `adapters --threads N serve` / $LORADEX_THREADS, else the usable cores
    state = ServerState(settings)
    state.load()  # a bad ref or a missing base fails here, before the port opens
    app = create_app(settings, state=state)
    model = state.shelf.model
    where = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    pinned = ", ".join(state.shelf.pinned) or "none (adapters attach on first request)"
    print(f"serving on {where} — base {model.backbone.ref.name!r}, pinned: {pinned}; "
          f"up to {settings.max_adapters} adapters, batches of {settings.max_batch} within {settings.max_wait_ms:g} ms"
          + ("; a bearer token is required" if settings.token else ""), file=sys.stderr, flush=True)
    config: dict[str, Any] = {"host": host, "port": port, "log_level": log_level,
                              "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S, "server_header": False}
    uvicorn.run(app, **config)

"""A real uvicorn server on 127.0.0.1 in a background thread, for the serving tests."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx


class ThreadServer:
    """``create_app(settings)`` under uvicorn on a free port of 127.0.0.1; ``stop()`` shuts it down gracefully."""

    def __init__(self, settings: Any, *, state: Any = None) -> None:
        import uvicorn

        from loradex.registry.serve.app import ServerState, create_app

        self.state = state or ServerState(settings)
        self.app = create_app(settings, state=self.state)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=30)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        wait_ready(self.url, headers=self.headers())
        return self

    def headers(self) -> dict[str, str]:
        token = self.state.settings.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def wait_ready(url: str, *, headers: dict[str, str] | None = None, timeout_s: float = 180) -> None:
    """Poll ``/readyz`` until 200 (the base is loaded); fail with its last answer after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(f"{url}/readyz", headers=headers, timeout=5)
            if last.status_code == 200:
                return
            if last.json().get("status") == "failed":
                break
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready: {getattr(last, 'text', last)}")

"""The FastAPI app of ``adapters serve``: the same object under uvicorn and as a Ray Serve ingress.

Routes: ``POST /v1/predict``, ``GET /v1/adapters``, ``GET /v1/adapters/{ref}``, ``GET /healthz``,
``GET /readyz``, ``GET /metrics`` (and FastAPI's ``/docs``). Every error is ``{"error": "one
line"}`` with a status that says whose fault it is; a fault fails only its own request.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import socket
import sys
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from loradex.core.errors import (
    ConfigError,
    DataError,
    FingerprintMismatchError,
    HubError,
    HubNotFoundError,
    InvalidNameError,
    LoradexError,
    NotFoundError,
    QueueFullError,
    RefusedError,
    RequestError,
    UnknownNameError,
    first_line,
)
from loradex.core.task import key_value_pairs

from .batcher import MicroBatcher
from .decoding import decode, decode_base64, open_checked
from .metrics import ServeMetrics
from .settings import ServeSettings
from .shelf import AdapterShelf

RETRY_AFTER_S = 1
OPEN_ROUTES = frozenset({"/healthz"})
"""Routes that answer without the token (a liveness probe carries no secret)."""
OPTION_EXAMPLE = "top_k=3 or detection.min_score=0.5"
"""How an ``option`` field or query parameter is written, shown when one is not KEY=VALUE."""


def status_of(exc: BaseException) -> int:
    """The HTTP status that answers ``exc``: 4xx for the caller's faults, 5xx for the server's."""
    if isinstance(exc, RequestError):
        return exc.status
    if isinstance(exc, (NotFoundError, UnknownNameError, HubNotFoundError)):
        return 404
    if isinstance(exc, HubError):
        return 502  # the Hub failed or sent files that fail their hashes: upstream's fault
    if isinstance(exc, RefusedError):
        return 403
    if isinstance(exc, FingerprintMismatchError):
        return 409
    if isinstance(exc, QueueFullError):
        return 503
    if isinstance(exc, (ConfigError, DataError, InvalidNameError)):
        return 400
    return 500  # an adapter whose files fail their hash, a bug: the server's fault, not the caller's


class ServerState:
    """What one app holds: settings, metrics, the shelf and the batcher; loaded as the app starts."""

    def __init__(self, settings: ServeSettings, *, shelf: AdapterShelf | None = None) -> None:
        self.settings = settings
        self.metrics = ServeMetrics()
        self.shelf = shelf or AdapterShelf(settings, on_change=self.metrics.adapter_change)
        self.batcher: MicroBatcher | None = None
        self.phase = "loading"
        """loading → ready → draining (or failed)."""
        self.error: str | None = None

    def load(self) -> None:
        """Load the base and pinned adapters now (the CLI does this before it listens, to fail early)."""
        if self.shelf.model is None:
            self.shelf.load()

    def __reduce__(self) -> tuple[Any, ...]:
        # Ray ships the app to each replica before anything is loaded: the settings are all it needs
        return (ServerState, (self.settings,))

    async def start(self) -> None:
        """Load (in a thread, so the event loop stays free) and start the batcher; a failure is raised."""
        try:
            await asyncio.to_thread(self.load)
        except LoradexError as exc:
            self.phase, self.error = "failed", str(exc)
            print(f"Error: {exc}", file=sys.stderr, flush=True)
            raise
        self.metrics.adapters_loaded.set(len(self.shelf.loaded()))
        settings = self.settings
        self.batcher = MicroBatcher(self.shelf.run, max_batch=settings.max_batch,
                                    max_wait_s=settings.max_wait_ms / 1000, max_queue=settings.max_queue,
                                    capacity=self.shelf.capacity, pinned=self.shelf.pinned, metrics=self.metrics)
        self.batcher.start()
        self.phase = "ready"

    async def stop(self) -> None:
        """Stop taking work; what is queued is answered first."""
        self.phase = "draining"
        if self.batcher is not None:
            await self.batcher.stop()


def create_app(settings: ServeSettings, *, state: ServerState | None = None) -> Any:
    """The ASGI app over ONE shared base; it loads its base when its lifespan starts."""
    import loradex

    state = state or ServerState(settings)

    @asynccontextmanager
    async def lifespan(app: Any):
        await state.start()  # uvicorn (and a Ray replica) take no request before the base is loaded
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(title="loradex", version=loradex.__version__, lifespan=lifespan,
                  description="Many LoRA adapters on one shared vision base, batched across requests.")
    app.state.loradex = state
    app.add_middleware(GuardMiddleware, state=state)

    @app.exception_handler(LoradexError)
    async def loradex_error(request: Request, exc: LoradexError) -> JSONResponse:
        headers = dict(getattr(exc, "headers", {}))
        if isinstance(exc, QueueFullError):
            headers["Retry-After"] = str(RETRY_AFTER_S)
        return JSONResponse({"error": str(exc).replace("\n", " ")}, status_code=status_of(exc), headers=headers)

    _add_probes(app, state)
    _add_api(app, state, settings)
    return app


def _add_probes(app: Any, state: ServerState) -> None:
    """``/healthz``, ``/readyz`` and ``/metrics``: what orchestrators and Prometheus read."""

    @app.get("/healthz", summary="Liveness: the process answers (no token needed).")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the base is loaded and the server takes requests.")
    async def readyz() -> JSONResponse:
        body: dict[str, Any] = {"status": state.phase}
        if state.error:
            body["error"] = state.error
        return JSONResponse(body, status_code=200 if state.phase == "ready" else 503)

    @app.get("/metrics", summary="Prometheus metrics.")
    async def metrics() -> Response:
        if state.batcher is not None:
            state.metrics.queue_depth.set(state.batcher.depth)
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)


def _add_api(app: Any, state: ServerState, settings: ServeSettings) -> None:
    """``/v1/adapters``, ``/v1/adapters/{ref}`` and ``/v1/predict``."""

    @app.get("/v1/adapters", summary="What is loaded, what the registry offers, and the base.")
    async def adapters() -> dict[str, Any]:
        require_ready(state)
        shelf = state.shelf
        available = await asyncio.to_thread(shelf.available)
        return {"base": shelf.model.base_info.to_dict(), "engine": shelf.model.engine, "loaded": shelf.loaded(),
                "available": available, "loads": dict(shelf.loads),
                "replica": {"pid": os.getpid(), "host": socket.gethostname()},
                "limits": {"max_adapters": settings.max_adapters, "max_batch": settings.max_batch,
                           "max_wait_ms": settings.max_wait_ms, "max_queue": settings.max_queue}}

    @app.get("/v1/adapters/{ref:path}", summary="One adapter's heads (key, task, configuration), as it resolves now.")
    async def adapter(ref: str) -> dict[str, Any]:
        require_ready(state)
        return await asyncio.to_thread(state.shelf.heads_of, ref)

    @app.post("/v1/predict", summary="Predict with one or more adapters on one or more images.",
              description="multipart/form-data: `images` files, `adapters` (repeated or comma-separated), "
                          "`option` KEY=VALUE (repeated) or `options` (a JSON object). application/json: "
                          '{"images": [base64 or {"name", "data"}], "adapters": [...], "options": {...}}. '
                          "Answers {\"results\": [record per image]}, each the record `adapters predict --json` "
                          "prints.")
    async def predict(request: Request) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            return {"results": await asyncio.wait_for(run_predict(state, request), settings.timeout_s)}
        except asyncio.TimeoutError:
            raise RequestError(504, f"no answer within {settings.timeout_s:g} s (--timeout); the server is "
                                    "busy or the request too large") from None
        finally:
            state.metrics.latency.observe(time.perf_counter() - started)


def require_ready(state: ServerState) -> None:
    """Refuse (503) while the base loads, after it failed, or while draining."""
    if state.phase != "ready" or state.batcher is None:
        detail = f": {state.error}" if state.error else ""
        raise RequestError(503, f"the server is {state.phase}{detail}", {"Retry-After": str(RETRY_AFTER_S)})


async def run_predict(state: ServerState, request: Any) -> list[dict[str, Any]]:
    """Parse, resolve, decode, queue, wait: the records of one predict request, in image order."""
    require_ready(state)
    settings = state.settings
    raw_images, refs, options = await read_request(request, max_images=settings.max_queue)
    # a local ref is one index lookup (~0.3 ms): a thread hop would cost more in GIL hand-offs with the
    # model thread than it frees; a Hub ref may download, so it goes to a thread
    if any("/" in ref for ref in refs):
        wanted = await asyncio.to_thread(state.shelf.resolve, refs, options)
    else:
        wanted = state.shelf.resolve(refs, options)
    images = await asyncio.gather(*[decode_off_loop(data, name=name, max_pixels=settings.max_pixels)
                                    for name, data in raw_images])
    assert state.batcher is not None
    futures = state.batcher.submit(list(zip(images, [name for name, _ in raw_images])), wanted)
    try:
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
    except asyncio.CancelledError:
        for future in futures:
            future.cancel()
        raise
    fault = next((o for o in outcomes if isinstance(o, BaseException)), None)
    if fault is not None:
        if not isinstance(fault, LoradexError):
            raise RequestError(500, f"prediction failed: {first_line(fault)}") from None
        raise fault
    return list(outcomes)


INLINE_DECODE_PIXELS = 512 * 512
"""Images up to this size decode on the event loop (well under a millisecond); larger ones in a thread."""


async def decode_off_loop(data: bytes, *, name: str, max_pixels: int) -> Any:
    """The RGB image of ``data``: its header read once here, its pixels decoded inline when that costs
    less than a thread hop (small images), else in a thread."""
    image = open_checked(data, name=name, max_pixels=max_pixels)
    if image.width * image.height <= INLINE_DECODE_PIXELS:
        return decode(image, name=name)
    return await asyncio.to_thread(decode, image, name=name)


async def read_request(request: Any, *, max_images: int) -> tuple[list[tuple[str, bytes]], list[str], dict[str, Any]]:
    """((name, bytes) per image, adapter refs, options) from a multipart or JSON body."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        images, refs, options = await _read_multipart(request, max_images=max_images)
    elif content_type.startswith("application/json"):
        images, refs, options = await _read_json(request)
    elif content_type.startswith(("image/", "application/octet-stream")):
        images, refs, options = await _read_raw(request)
    else:
        raise RequestError(415, "send multipart/form-data, application/json, or one image as image/* "
                                f"(adapters in the query), not {content_type or 'no type'!r}")
    if not images:
        raise DataError("the request has no images (multipart field 'images', or JSON key 'images')")
    if len(images) > max_images:
        raise RequestError(413, f"{len(images)} images in one request; this server takes at most {max_images}")
    return images, refs, options


def _split_refs(values: list[Any]) -> list[str]:
    refs: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise ConfigError(f"adapters must be strings like 'name@v2', got {type(value).__name__}")
        refs += [part.strip() for part in value.split(",")]
    return refs


async def _read_multipart(request: Any, *, max_images: int) -> tuple[list[tuple[str, bytes]], list[str], dict]:
    from starlette.datastructures import UploadFile

    try:
        form = await request.form(max_files=max_images + 1, max_fields=1000)
    except RequestError:
        raise
    except Exception as exc:  # python-multipart's and starlette's parse errors have no common base
        raise DataError(f"the multipart body cannot be read ({first_line(exc)})") from None
    images = []
    for index, item in enumerate([*form.getlist("images"), *form.getlist("image")]):
        if not isinstance(item, UploadFile):
            raise DataError(f"field 'images' item {index} is text, not a file")
        images.append((item.filename or f"<image {index}>", await item.read()))
    options = _options_object(form.get("options")) if form.get("options") else {}
    options.update(key_value_pairs(form.getlist("option"), what="option", example=OPTION_EXAMPLE))
    return images, _split_refs(form.getlist("adapters")), options


async def _read_raw(request: Any) -> tuple[list[tuple[str, bytes]], list[str], dict]:
    """One image as the whole body; ``adapters``, ``option``/``options`` and ``name`` in the query string.

    For a client sending one image per request: no multipart to encode (or parse).
    """
    query = request.query_params
    options = _options_object(query["options"]) if query.get("options") else {}
    options.update(key_value_pairs(query.getlist("option"), what="option", example=OPTION_EXAMPLE))
    name = query.get("name") or "<image 0>"
    return [(name, await request.body())], _split_refs(query.getlist("adapters")), options


def _options_object(text: Any) -> dict[str, Any]:
    try:
        options = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        raise ConfigError("field 'options' is not valid JSON") from None
    if not isinstance(options, dict):
        raise ConfigError(f"'options' must be an object of KEY: VALUE, got {type(options).__name__}")
    return options


async def _read_json(request: Any) -> tuple[list[tuple[str, bytes]], list[str], dict]:
    try:
        body = json.loads(await request.body())
    except (ValueError, RecursionError):
        raise DataError("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise DataError("the JSON body must be an object with 'images' and 'adapters'")
    unknown = set(body) - {"images", "adapters", "options"}
    if unknown:
        raise ConfigError(f"unknown key {sorted(unknown)[0]!r} in the body; keys: images, adapters, options")
    items = body.get("images") or []
    if not isinstance(items, list):
        raise DataError("'images' must be a list of base64 strings or {\"name\", \"data\"} objects")
    images = []
    for index, item in enumerate(items):
        name = f"<image {index}>"
        if isinstance(item, dict):
            name = str(item.get("name") or name)
            item = item.get("data")
        images.append((name, decode_base64(item, name=name)))
    adapters = body.get("adapters") or []
    return images, _split_refs(adapters if isinstance(adapters, list) else [adapters]), \
        _options_object(body.get("options") or {})


class GuardMiddleware:
    """Token check, body-size limit and per-route request counts, before any route code runs (pure ASGI)."""

    def __init__(self, app: Any, *, state: ServerState) -> None:
        self.app, self.state = app, state
        token = state.settings.token
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        route = _route_label(path)
        status_seen: list[int] = []

        async def counted_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status_seen.append(message["status"])
            await send(message)

        headers = dict(scope.get("headers") or [])
        try:
            if self.expected is not None and path not in OPEN_ROUTES:
                given = headers.get(b"authorization", b"")
                if not hmac.compare_digest(given, self.expected):
                    return await _plain_error(counted_send, 401, "missing or wrong token: send "
                                              "'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"})
            limit = self.state.settings.max_body_bytes
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                return await _plain_error(counted_send, 413, f"the body is {int(declared):,} bytes; this server "
                                          f"takes at most {limit:,} (--max-body-mb)")
            received = 0

            async def limited_receive() -> dict:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise RequestError(413, f"the body is over {limit:,} bytes (--max-body-mb)")
                return message

            try:
                await self.app(scope, limited_receive, counted_send)
            except RequestError as exc:  # raised while a route was still reading the body
                if status_seen:
                    raise
                await _plain_error(counted_send, exc.status, str(exc))
        finally:
            self.state.metrics.requests.labels(route=route, status=str(status_seen[0] if status_seen else 500)).inc()


def _route_label(path: str) -> str:
    if path.startswith("/v1/adapters/"):
        return "/v1/adapters/{ref}"
    known = {"/v1/predict", "/v1/adapters", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"}
    return path if path in known else "other"


async def _plain_error(send: Any, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})

"""``loradex.Client``: a server's predictions as the same :class:`ImageResult` objects a local model gives.

Needs httpx only (not FastAPI): a team's notebooks call the server without its extras.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

from loradex.core.errors import ServerError


class Client:
    """Calls ``adapters serve`` at ``url``: ``Client("http://127.0.0.1:8000").predict("a.jpg", adapters=["cls"])``.

    ``token``: the server's bearer token (default: none). ``timeout``: seconds per request.
    """

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 60.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._heads: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # -- calls ---------------------------------------------------------------------------------

    def predict(self, images: Any, *, adapters: Sequence[str] | str, batch_size: int = 16,
                **options: Any) -> list[Any]:
        """One :class:`~loradex.core.results.ImageResult` per image, as ``loradex.load(adapters).predict`` gives.

        ``images``: paths (files, folders, globs), PIL images or numpy arrays, or a list of
        them; files are sent as they are, in-memory images as PNG. ``adapters``: refs
        (``name``, ``name@v2``, ``name@prod``). ``options``: prediction options (``top_k=3``,
        ``detection.min_score=0.5``). ``batch_size`` images go in each request.
        """
        from loradex.core.inputs import image_inputs

        refs = [adapters] if isinstance(adapters, str) else list(adapters)
        inputs = image_inputs(images)
        results: list[Any] = []
        for start in range(0, len(inputs), max(1, batch_size)):
            chunk = inputs[start:start + batch_size]
            fields = {"adapters": ",".join(refs), "options": json.dumps(options, default=str)}
            if len(chunk) == 1:  # one image: the raw body, no multipart to encode or parse
                body, mime = _payload(chunk[0])
                records = self._request("POST", "/v1/predict", content=body, headers={"content-type": mime},
                                        params={**fields, "name": chunk[0].source})["results"]
            else:
                files = [("images", (item.source, *_payload(item))) for item in chunk]
                records = self._request("POST", "/v1/predict", files=files, data=fields)["results"]
            results += [self._result(record, item) for record, item in zip(records, chunk)]
        return results

    def adapters(self) -> dict[str, Any]:
        """``GET /v1/adapters``: the base, what is loaded, what the registry offers, the limits."""
        return self._request("GET", "/v1/adapters")

    def ready(self) -> bool:
        """Whether the server has loaded its base and takes requests."""
        try:
            return self._http.get("/readyz").status_code == 200
        except Exception:  # noqa: BLE001 - any failure to connect means "not ready"
            return False

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServerError(0, f"{self.url}: no answer ({type(exc).__name__}: {exc})") from None
        if response.status_code >= 400:
            try:
                message = response.json().get("error") or response.text
            except ValueError:
                message = response.text.strip() or response.reason_phrase
            raise ServerError(response.status_code, f"{self.url}{path}: {response.status_code}: {message}")
        return response.json()

    # -- records back into results ---------------------------------------------------------------

    def _heads_of(self, key: str) -> dict[str, Any]:
        """Task and head configuration of head ``key`` (versions never change: asked once per ref)."""
        ref = key.split("#", 1)[0]
        if key not in self._heads:
            described = self._request("GET", f"/v1/adapters/{ref}")
            for head in described["heads"]:
                self._heads[head["key"]] = head
        return self._heads[key]

    def _result(self, record: dict[str, Any], item: Any) -> Any:
        from loradex.core import plugins
        from loradex.core.results import BaseInfo, ImageResult, TaskResult

        base = BaseInfo(**record["base"])
        result = ImageResult(source=record["image"], width=record["width"], height=record["height"], base=base,
                             error=record.get("error"), path=item.path, image=item.image)
        for key, entry in record["predictions"].items():
            head = self._heads_of(key)
            prediction = {k: v for k, v in entry.items() if k != "task"}
            result.results[key] = TaskResult(key=key, task=plugins.get_task(entry["task"]), prediction=prediction,
                                             head_config=head["config"], path=item.path, image=item.image)
        return result


def _payload(item: Any) -> tuple[bytes, str]:
    """(bytes, MIME type) of one input: a file's own bytes, an in-memory image as PNG."""
    if item.path is not None:
        return item.path.read_bytes(), "application/octet-stream"
    buffer = io.BytesIO()
    item.image.save(buffer, format="PNG")
    return buffer.getvalue(), "image/png"

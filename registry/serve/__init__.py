"""``adapters serve``: ONE shared base behind an HTTP API, requests for many adapters batched together.

- :mod:`.settings` — what a deployment is told (limits, batching, security);
- :mod:`.decoding` — request images to PIL, off the event loop, with a pixel limit;
- :mod:`.shelf` — the base, the adapters attached on demand (an LRU with pinned refs), refs
  resolved per request so a moved alias takes effect at once;
- :mod:`.batcher` — the micro-batcher: concurrent requests become one mixed pass;
- :mod:`.app` — the FastAPI app (routes, token, body limit, metrics), the same for uvicorn and Ray;
- :mod:`.client` — :class:`Client`, whose ``predict`` returns the results a local model does;
- :mod:`.ray_app` — the same app as a Ray Serve deployment (``serve run loradex.registry.serve.ray_app:app``).

FastAPI, uvicorn and prometheus-client come with ``pip install 'loradex[serve]'``; only the
client is needed to call a server, and it needs none of them.
"""

"""`adapters serve [REF,...]`: one base, many adapters behind an HTTP API, batched across requests."""

from __future__ import annotations

import click

from loradex.core.errors import ConfigError


@click.command(name="serve")
@click.argument("refs", metavar="[REF[,REF...]]", required=False, default="")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 opens the server to your network.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images in one pass through the base, from however many requests.")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="How long the first image of a batch waits for others to join.")
@click.option("--max-queue", type=click.IntRange(min=1), default=256, show_default=True,
              help="Images waiting at most; more get 503 with Retry-After.")
@click.option("--max-adapters", type=click.IntRange(min=1), default=64, show_default=True,
              help="Adapters attached at once (pinned included); the least recently used are evicted.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds before an unanswered request gets 504.")
@click.option("--max-body-mb", type=click.FloatRange(min=0, min_open=True), default=32.0, show_default=True,
              help="Largest request body in MB (413 beyond).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=40_000_000, show_default=True,
              help="Largest image, width x height (400 beyond: decompression bombs).")
@click.option("--allow-hub", is_flag=True, help="Let requests name Hub refs (org/repo@rev), downloaded on demand.")
@click.option("--token", envvar="LORADEX_SERVE_TOKEN", default=None, show_envvar=True,
              help="Require 'Authorization: Bearer TOKEN' on every route but /healthz.")
@click.option("--device", default=None, help="cpu, cuda, cuda:N, mps (default: a GPU if there is one).")
@click.option("--ray", "use_ray", is_flag=True, help="Deploy the same app on Ray Serve (pip install 'loradex[ray]').")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --ray: replicas, each holding the base once.")
@click.option("--replica-cpus", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="With --ray: CPUs Ray reserves for each replica.")
@click.pass_context
def serve_command(ctx: click.Context, refs: str, host: str, port: int, max_batch: int, max_wait_ms: float,
                  max_queue: int, max_adapters: int, timeout_s: float, max_body_mb: float, max_pixels: int,
                  allow_hub: bool, token: str | None, device: str | None, use_ray: bool, replicas: int,
                  replica_cpus: float) -> None:
    """Serve adapters over HTTP: POST /v1/predict, GET /v1/adapters, /healthz, /readyz, /metrics, /docs.

    REF[,REF...] are attached at start and pinned; any other adapter of the registry attaches on
    its first request. Concurrent requests — for the same or different adapters — run as one
    mixed pass through the shared base. See docs/serving.md.
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError("adapters serve needs FastAPI and uvicorn: pip install 'loradex[serve]'") from None
    from loradex.registry.loading import parse_refs
    from loradex.registry.serve.settings import ServeSettings

    if replicas != 1 and not use_ray:
        raise ConfigError("--replicas needs --ray (one process serves one replica)")
    from .options import check_listen_address

    check_listen_address(host, port)  # before the base loads
    settings = ServeSettings(refs=tuple(parse_refs(refs)) if refs else (), home=ctx.obj.get("home"), device=device,
                             max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                             max_adapters=max_adapters, timeout_s=timeout_s, max_body_mb=max_body_mb,
                             max_pixels=max_pixels, allow_hub=allow_hub, token=token)
    if use_ray:
        from loradex.registry.serve.ray_app import run_on_ray

        run_on_ray(settings, host=host, port=port, replicas=replicas, replica_cpus=replica_cpus)
        return
    from loradex.registry.serve.server import serve

    serve(settings, host=host, port=port)


def register(cli: click.Group) -> None:
    """Add ``serve`` to the root group."""
    cli.add_command(serve_command)

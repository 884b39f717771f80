"""The same app on Ray Serve: each replica holds the base once, its own adapter LRU and its own batcher.

Ray's proxy spreads requests over the replicas (power of two choices). Nothing is
multiplexed by adapter: since Ray 2.5x, ``@serve.batch`` splits a batch by multiplexed model id,
so one id per adapter would never let two adapters share a pass — the point of one base. Every
replica can serve every adapter instead (a ViT-B adapter is ~2.4 MB: a thousand fit in 2.4 GB),
attaching each on its first request; with repeated traffic an adapter is loaded at most once
per replica. Replicas read the registry folder given in the settings (shared storage on a
cluster) or, with ``allow_hub``, pull from a Hub.

``adapters serve --ray --replicas N`` runs :func:`run_on_ray`; for ``serve run`` or KubeRay,
point at :func:`app_builder` with arguments (``serve run loradex.registry.serve.ray_app:app_builder
refs=cls,det home=/models replicas=2``).
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from .app import create_app
from .settings import ServeSettings

DEPLOYMENT = "loradex"


def build(settings: ServeSettings, *, replicas: int = 1, replica_cpus: float = 1.0) -> Any:
    """A bound Ray Serve application of the app over ``settings`` with ``replicas`` replicas."""
    from ray import serve

    ingress = create_app(settings)

    @serve.deployment(name=DEPLOYMENT, num_replicas=replicas, ray_actor_options={"num_cpus": replica_cpus},
                      # requests beyond this wait in Ray's router instead of in our batcher: keep it at the
                      # batcher's own bound so batches can fill (Ray's default of 5 would cap them at 5)
                      max_ongoing_requests=settings.max_queue,
                      graceful_shutdown_timeout_s=settings.timeout_s)
    @serve.ingress(ingress)
    class LoradexReplica:
        """One replica: the app's lifespan loads the base and starts the batcher."""

    return LoradexReplica.bind()


def app_builder(args: dict[str, str]) -> Any:
    """For ``serve run loradex.registry.serve.ray_app:app_builder key=value ...`` (keys: ServeSettings
    fields, plus ``replicas`` and ``replica_cpus``)."""
    import dataclasses

    values: dict[str, Any] = dict(args)
    replicas = int(values.pop("replicas", 1))
    replica_cpus = float(values.pop("replica_cpus", 1.0))
    types = {f.name: f.type for f in dataclasses.fields(ServeSettings)}
    settings: dict[str, Any] = {}
    for key, value in values.items():
        if key not in types:
            from loradex.core.errors import ConfigError, suggest

            raise ConfigError(f"unknown serve setting {key!r}.{suggest(key, types)} Settings: {', '.join(types)}")
        kind = str(types[key])
        if key == "refs":
            settings[key] = tuple(r.strip() for r in str(value).split(",") if r.strip())
        elif kind.startswith("int"):
            settings[key] = int(value)
        elif kind.startswith("float"):
            settings[key] = float(value)
        elif kind.startswith("bool"):
            settings[key] = str(value).lower() in ("1", "true", "yes", "on")
        else:
            settings[key] = value
    return build(ServeSettings(**settings), replicas=replicas, replica_cpus=replica_cpus)


def run_on_ray(settings: ServeSettings, *, host: str, port: int, replicas: int, replica_cpus: float) -> None:
    """Start (or join) a Ray cluster, deploy, and serve on ``host:port`` until SIGINT/SIGTERM."""
    try:
        import ray
        from ray import serve
    except ImportError:
        from loradex.core.errors import ConfigError

        raise ConfigError("adapters serve --ray needs Ray Serve: pip install 'loradex[ray]'") from None
    # Ray's core installs its own SIGTERM handler (which dies at once): block both signals in every
    # thread Ray starts from here on and wait for them below, so a SIGTERM drains the replicas first
    stopping = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stopping)
    ray.init(include_dashboard=False, ignore_reinit_error=True, log_to_driver=True)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build(settings, replicas=replicas, replica_cpus=replica_cpus), name=DEPLOYMENT, route_prefix="/")
        print(f"serving on http://{host}:{port} through Ray Serve, {replicas} replica(s)", file=sys.stderr, flush=True)
        received = signal.sigwait(stopping)
        print(f"{signal.Signals(received).name}: draining the replicas", file=sys.stderr, flush=True)
        serve.shutdown()  # replicas answer what they hold (graceful_shutdown_timeout_s) before they stop
    finally:
        ray.shutdown()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stopping)

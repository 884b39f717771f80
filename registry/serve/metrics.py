"""The server's Prometheus metrics, in a registry of its own (two apps in one process never collide)."""

from __future__ import annotations

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    """Requests by route and status, latency, queue depth, batch sizes, adapters loaded, loads and evictions."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # the *_created series double the page and no dashboard reads them

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("loradex_requests", "HTTP requests answered, by route and status code.",
                                ["route", "status"], registry=r)
        self.latency = Histogram("loradex_request_seconds", "Time from a predict request's arrival to its answer.",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("loradex_queue_depth", "Images waiting for a pass through the base.", registry=r)
        self.batch_images = Histogram("loradex_batch_images", "Images in each pass through the base.",
                                      buckets=COUNT_BUCKETS, registry=r)
        self.batch_adapters = Histogram("loradex_batch_adapters", "Distinct adapters in each pass through the base.",
                                        buckets=COUNT_BUCKETS, registry=r)
        self.batch_requests = Histogram("loradex_batch_requests", "Distinct requests sharing each pass.",
                                        buckets=COUNT_BUCKETS, registry=r)
        self.batch_seconds = Histogram("loradex_batch_seconds", "Time of each pass on the model thread.",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("loradex_images", "Images predicted.", registry=r)
        self.adapters_loaded = Gauge("loradex_adapters_loaded", "Adapters attached to the base now.", registry=r)
        self.adapter_loads = Counter("loradex_adapter_loads", "Adapters attached on demand.", registry=r)
        self.adapter_evictions = Counter("loradex_adapter_evictions", "Adapters detached to make room (LRU).",
                                         registry=r)

    def adapter_change(self, event: str, attached: int) -> None:
        """Called by the shelf after a load, an eviction or the start."""
        self.adapters_loaded.set(attached)
        if event == "load":
            self.adapter_loads.inc()
        elif event == "evict":
            self.adapter_evictions.inc()

    def batch(self, *, images: int, adapters: int, requests: int) -> None:
        """Record one pass through the base."""
        self.batch_images.observe(images)
        self.batch_adapters.observe(adapters)
        self.batch_requests.observe(requests)
        self.images.inc(images)

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of the text exposition format."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def sample(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The value of metric ``name`` (with ``labels``) in exposition ``text``; for tests and the bench."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                return float(s.value)
    return None


def histogram_mean(text: str, name: str) -> float | None:
    """``name_sum / name_count`` of a histogram in exposition ``text`` (None when empty)."""
    total, count = sample(text, f"{name}_sum"), sample(text, f"{name}_count")
    return total / count if total is not None and count else None


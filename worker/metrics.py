"""A worker's own Prometheus metrics (optional: `--metrics-port`), for per-replica scraping."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, start_http_server


def worker_metrics(registry: CollectorRegistry) -> Callable[[int, float], None]:
    """Register the worker's metrics; returns the callback that records one computed shard."""
    shards = Counter("lenet_worker_shards", "Shards computed by this worker", registry=registry)
    samples = Counter("lenet_worker_samples", "Samples computed by this worker", registry=registry)
    seconds = Counter("lenet_worker_compute_seconds", "Seconds spent computing shards", registry=registry)

    def observe(n: int, secs: float) -> None:
        shards.inc()
        samples.inc(n)
        seconds.inc(secs)

    return observe


def serve_worker_metrics(addr: str, port: int) -> Callable[[int, float], None]:
    registry = CollectorRegistry()
    observe = worker_metrics(registry)
    start_http_server(port, addr=addr, registry=registry)
    return observe

"""A worker's own Prometheus metrics (optional: `--metrics-port`), for per-replica scraping."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from lenet.cli import serve_metrics


class WorkerMetrics:
    """The worker's counters; `params_received` and `task` are called as those messages arrive."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.params = Counter("lenet_worker_params", "Parameter broadcasts received (one per step worked on)",
                              registry=registry)
        self.tasks = Counter("lenet_worker_tasks", "Tasks computed by this worker", registry=registry)
        self.shards = Counter("lenet_worker_shards", "Shards computed by this worker", registry=registry)
        self.samples = Counter("lenet_worker_samples", "Samples computed by this worker", registry=registry)
        # Not lenet_worker_compute_seconds: that is the coordinator's per-worker series of *accepted* work.
        self.seconds = Counter("lenet_worker_busy_seconds", "Seconds this worker spent computing tasks",
                               registry=registry)

    def params_received(self) -> None:
        self.params.inc()

    def task(self, shards: int, samples: int, seconds: float) -> None:
        self.tasks.inc()
        self.shards.inc(shards)
        self.samples.inc(samples)
        self.seconds.inc(seconds)


def serve_worker_metrics(addr: str, port: int) -> WorkerMetrics:
    """The worker's metrics on a fresh registry, served at http://addr:port/metrics (NetworkError if it cannot be)."""
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    serve_metrics(registry, addr, port)
    return metrics

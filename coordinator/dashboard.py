"""The metrics port: Prometheus' `/metrics`, a live dashboard at `/`, and its JSON at `/api/status`.

One small bounded HTTP server (coordinator/httpserver.py: fixed threads, however
many clients connect) replaces `prometheus_client.start_http_server`.
`/metrics` is produced by prometheus_client itself (same encoder negotiation), so
scrapers see no difference.  The page is one self-contained HTML document (inline
CSS and JavaScript, charts drawn as SVG by hand, no external asset) that polls
`/api/status` once a second.  That JSON is built only from the registry's samples
plus `RunHistory`, the recent past of those same figures (loss, learning rate,
samples per second per step; loss and accuracies per epoch): the dashboard shows
nothing `/metrics` does not (no data, no parameters); it is built at most four
times a second (`StatusCache`), however many clients poll.
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from coordinator.httpserver import BoundedHTTPServer, HeadReadHandler

LIVE_WITHIN = 3.0  # seconds: workers heartbeat every second, so a live one is never silent longer
EPOCH_KEYS = ("epoch", "loss", "train_accuracy", "test_accuracy")


def _finite(x: float) -> float | None:
    """JSON has no NaN or infinity (browsers refuse them): a diverged loss becomes null."""
    return x if math.isfinite(x) else None


class RunHistory:
    """Per-step and per-epoch figures for the dashboard's curves; thread-safe and bounded.

    Steps are thinned rather than dropped: past `max_points` points every other one
    goes and only every 2nd (then 4th, ...) step is kept, so the curve always spans
    the whole run.  Samples per second are measured over the last `rate_window` seconds.
    """

    def __init__(self, max_points: int = 1000, rate_window: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_points < 2:
            raise ValueError(f"max_points must be >= 2, got {max_points}")
        self.max_points, self.rate_window, self.clock = max_points, rate_window, clock
        self._lock = threading.Lock()
        self._steps: list[tuple[int, float, float, float]] = []  # (step, loss, lr, samples/s)
        self._stride = 1
        self._recent: deque[tuple[float, int]] = deque()  # (time, samples) of the steps in the rate window
        self._recent_samples = 0  # their samples, summed
        self._epochs: list[dict[str, float]] = []

    def record_step(self, step: int, loss: float, lr: float, samples: int) -> None:
        """Step `step` (1-based count of steps done) applied `samples` samples at `lr`, with mean loss `loss`."""
        now = self.clock()
        with self._lock:
            self._recent.append((now, samples))
            self._recent_samples += samples
            while len(self._recent) > 2 and now - self._recent[0][0] > self.rate_window:
                self._recent_samples -= self._recent.popleft()[1]
            span = now - self._recent[0][0]
            # The first step's samples were computed before the window opened: count those after it.
            rate = (self._recent_samples - self._recent[0][1]) / span if span > 0 else 0.0
            if step % self._stride:
                return
            self._steps.append((step, loss, lr, rate))
            if len(self._steps) > self.max_points:
                self._stride *= 2
                self._steps = [p for p in self._steps if p[0] % self._stride == 0]

    def record_epochs(self, history: Sequence[Mapping[str, Any]]) -> None:
        """The run's epoch history so far (entries with EPOCH_KEYS); only entries not yet seen are added."""
        with self._lock:
            for entry in history[len(self._epochs):]:
                self._epochs.append({k: float(entry[k]) for k in EPOCH_KEYS})

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            steps, epochs = list(self._steps), [dict(e) for e in self._epochs]
        return {
            "steps": {"step": [s[0] for s in steps], "loss": [_finite(s[1]) for s in steps],
                      "learning_rate": [s[2] for s in steps], "samples_per_second": [s[3] for s in steps]},
            "epochs": {k: [_finite(e[k]) for e in epochs] for k in EPOCH_KEYS},
        }


def status(registry: CollectorRegistry, history: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The dashboard's JSON: the registry's samples regrouped, plus `history` (a `RunHistory.snapshot()`).

    `now` is the Unix time the workers' last-seen timestamps are compared with.
    """
    values: dict[str, float | None] = {}
    per_worker: dict[str, dict[str, float]] = {}
    rejected: dict[str, float] = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name.endswith("_created"):
                continue  # when a series was created: of no use on the page
            if set(s.labels) == {"worker"}:
                per_worker.setdefault(s.labels["worker"], {})[s.name] = s.value
            elif set(s.labels) == {"reason"}:
                rejected[s.labels["reason"]] = s.value
            elif not s.labels:
                values[s.name] = _finite(s.value)
    workers = []
    for name in sorted(per_worker):
        series = per_worker[name]
        seen = series.get("lenet_worker_last_seen_timestamp_seconds")
        ago = None if seen is None else max(0.0, now - seen)
        workers.append({
            "name": name,
            "state": "live" if ago is not None and ago <= LIVE_WITHIN else "silent",
            "shards": series.get("lenet_worker_accepted_shards_total", 0.0),
            "compute_seconds": series.get("lenet_worker_compute_seconds_total", 0.0),
            "last_seen_seconds_ago": ago,
        })
    return {"time": now, "metrics": values, "workers": workers, "rejected": rejected, "history": dict(history)}


class _Handler(HeadReadHandler):
    server: DashboardServer
    server_version = "lenet5-dashboard"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = urllib.parse.urlsplit(self.path).path
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept"))
            self._answer(200, content_type, encoder(self.server.registry))
        elif path == "/":
            self._answer(200, "text/html; charset=utf-8", self.server.page)
        elif path == "/api/status":
            self._answer(200, "application/json", self.server.status.body())
        else:
            self._answer(404, "text/plain; charset=utf-8", b"not found: try / or /metrics\n")

    def _answer(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        # The page loads nothing from anywhere: only its own inline code and this server's JSON.
        self.send_header("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; "
                         "style-src 'unsafe-inline'; connect-src 'self'; img-src data:")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        pass  # every scrape and poll would otherwise be a line in the coordinator's log


class StatusCache:
    """`/api/status`'s body, built at most once per `max_age` seconds whatever the number of polling clients.

    Building it walks the registry (every worker's series) and encodes JSON, under
    the same interpreter lock as the training loop: clients polling in a tight loop
    must cost the run a few builds a second, not one per request.
    """

    def __init__(self, registry: CollectorRegistry, history: RunHistory, max_age: float = 0.25,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry, self.history, self.max_age, self.clock = registry, history, max_age, clock
        self._lock = threading.Lock()
        self._body, self._built = b"", -math.inf
        self.builds = 0

    def body(self) -> bytes:
        with self._lock:  # one build at a time; the others wait for it and share it
            now = self.clock()
            if now - self._built >= self.max_age:
                built = status(self.registry, self.history.snapshot(), time.time())
                self._body, self._built = json.dumps(built, allow_nan=False).encode(), now
                self.builds += 1
            return self._body


class DashboardServer(BoundedHTTPServer):
    """The metrics port: a bounded server (coordinator/httpserver.py) with the dashboard's handler."""

    def __init__(self, addr: str, port: int, registry: CollectorRegistry, history: RunHistory) -> None:
        self.registry, self.history = registry, history
        self.status = StatusCache(registry, history)
        self.page = resources.files("coordinator").joinpath("dashboard.html").read_bytes()
        super().__init__(addr, port, _Handler)


def start_dashboard(registry: CollectorRegistry, addr: str, port: int, history: RunHistory) -> DashboardServer:
    """Serve `/metrics`, `/` and `/api/status` on addr:port from a daemon thread; OSError if unusable."""
    server = DashboardServer(addr, port, registry, history)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="dashboard",
                     daemon=True).start()
    return server

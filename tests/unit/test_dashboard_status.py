"""The dashboard's pure parts: the JSON built from a registry, the bounded run history, the page's self-containment."""

import json
import re
from importlib import resources

import pytest
from prometheus_client import CollectorRegistry

from coordinator.dashboard import LIVE_WITHIN, RunHistory, status
from coordinator.metrics import Metrics
from fakes import Clock


@pytest.fixture
def metrics():
    m = Metrics(CollectorRegistry())
    m.steps.inc(42)
    m.workers_alive.set(2)
    m.test_accuracy.set(0.985)
    m.checkpoint_duration.observe(0.02)
    m.checkpoint_duration.observe(0.03)
    m.rejected.labels("late").inc(3)
    for name, shards, seconds in (("w1", 8, 1.5), ("w0", 4, 0.75)):
        m.worker_shards.labels(name).inc(shards)
        m.worker_compute.labels(name).inc(seconds)
    m.worker_last_seen.labels("w0").set(1000.0)
    m.worker_last_seen.labels("w1").set(1000.0 - LIVE_WITHIN - 1)
    return m


def test_status_regroups_the_registry_samples(metrics):
    st = status(metrics.registry, RunHistory().snapshot(), now=1001.0)
    values = st["metrics"]
    assert values["lenet_steps_total"] == 42 and values["lenet_workers_alive"] == 2
    assert values["lenet_test_accuracy"] == 0.985
    assert values["lenet_checkpoint_duration_seconds_count"] == 2  # checkpoints written
    assert not any(name.endswith("_created") for name in values)
    assert st["rejected"]["late"] == 3 and st["rejected"]["malformed"] == 0  # every reason, as /metrics has
    assert st["workers"] == [
        {"name": "w0", "state": "live", "shards": 4, "compute_seconds": 0.75, "last_seen_seconds_ago": 1.0},
        {"name": "w1", "state": "silent", "shards": 8, "compute_seconds": 1.5,
         "last_seen_seconds_ago": LIVE_WITHIN + 2},
    ]
    json.dumps(st, allow_nan=False)  # what the server sends: strict JSON


def test_a_departed_worker_leaves_the_table(metrics):
    metrics.forget_worker("w1")
    assert [w["name"] for w in status(metrics.registry, {}, now=1001.0)["workers"]] == ["w0"]


def test_a_registered_worker_without_results_is_listed(metrics):
    metrics.worker_seen("w2")
    seen = metrics.registry.get_sample_value("lenet_worker_last_seen_timestamp_seconds", {"worker": "w2"})
    row = status(metrics.registry, {}, now=seen)["workers"][-1]
    assert row == {"name": "w2", "state": "live", "shards": 0.0, "compute_seconds": 0.0, "last_seen_seconds_ago": 0.0}


def test_non_finite_values_become_null(metrics):
    metrics.train_loss.set(float("nan"))
    history = RunHistory()
    history.record_step(1, float("inf"), 0.05, 128)
    st = status(metrics.registry, history.snapshot(), now=0.0)
    assert st["metrics"]["lenet_train_loss"] is None and st["history"]["steps"]["loss"] == [None]
    json.dumps(st, allow_nan=False)


def test_history_rate_is_samples_over_the_window():
    clock = Clock()
    history = RunHistory(rate_window=5.0, clock=clock)
    for step in range(1, 12):
        history.record_step(step, 1.0 / step, 0.05, 100)
        clock.now += 0.5
    rates = history.snapshot()["steps"]["samples_per_second"]
    assert rates[0] == 0.0  # one step: no interval to measure yet
    assert rates[-1] == pytest.approx(200.0)  # 100 samples every 0.5 s


def test_history_is_thinned_but_spans_the_whole_run():
    history = RunHistory(max_points=10, clock=Clock())
    for step in range(1, 1001):
        history.record_step(step, 1.0, 0.05, 128)
    steps = history.snapshot()["steps"]["step"]
    assert 5 <= len(steps) <= 10
    assert steps[0] <= 128 and steps[-1] >= 1000 - 128  # from near the start to near the end
    assert steps == sorted(steps)


def test_history_adds_only_new_epochs():
    history = RunHistory()
    run = [{"epoch": 1, "samples": 60000, "loss": 0.3, "train_accuracy": 0.9, "test_accuracy": 0.95}]
    history.record_epochs(run)
    run.append({"epoch": 2, "samples": 60000, "loss": 0.1, "train_accuracy": 0.97, "test_accuracy": 0.98})
    history.record_epochs(run)
    history.record_epochs(run)
    assert history.snapshot()["epochs"] == {"epoch": [1.0, 2.0], "loss": [0.3, 0.1], "train_accuracy": [0.9, 0.97],
                                            "test_accuracy": [0.95, 0.98]}


def test_page_loads_nothing_from_elsewhere():
    page = resources.files("coordinator").joinpath("dashboard.html").read_text()
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|<link[^>]+stylesheet|<script[^>]+src=|<img", page, re.I)
    assert 'fetch("api/status"' in page


def test_status_is_built_at_most_once_per_max_age_however_often_it_is_asked():
    from prometheus_client import CollectorRegistry

    from coordinator.dashboard import RunHistory, StatusCache
    from coordinator.metrics import Metrics

    metrics, now = Metrics(CollectorRegistry()), [100.0]
    cache = StatusCache(metrics.registry, RunHistory(), max_age=0.25, clock=lambda: now[0])
    first = cache.body()
    metrics.steps.inc(3)
    assert [cache.body() for _ in range(1000)] == [first] * 1000 and cache.builds == 1
    now[0] += 0.25
    assert b'"lenet_steps_total": 3.0' in cache.body() and cache.builds == 2

"""The coordinator's Prometheus metrics, on a registry it is given (tests use a fresh one).

All names start with `lenet_`, are in base units, and counters end in `_total`.
The only per-worker label is the worker's name, and a departed worker's series
are removed, so label sets stay bounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from coordinator.refusals import Reason


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.samples = Counter("lenet_samples", "Training samples whose gradients were applied", registry=registry)
        self.steps = Counter("lenet_steps", "Optimizer steps applied", registry=registry)
        self.epoch = Gauge("lenet_epoch", "Current epoch (1-based)", registry=registry)
        self.epoch_samples = Gauge("lenet_epoch_samples", "Samples applied so far in the current epoch",
                                   registry=registry)
        self.learning_rate = Gauge("lenet_learning_rate", "Learning rate of the last step", registry=registry)
        self.train_loss = Gauge("lenet_train_loss", "Mean cross-entropy of the last step's batch", registry=registry)
        self.train_accuracy = Gauge("lenet_train_accuracy", "Training accuracy over the last finished epoch (0-1)",
                                    registry=registry)
        self.test_accuracy = Gauge("lenet_test_accuracy", "Test accuracy after the last finished epoch (0-1)",
                                   registry=registry)
        self.workers_alive = Gauge("lenet_workers_alive", "Registered, live workers", registry=registry)
        self.step_duration = Histogram(
            "lenet_step_duration_seconds",
            "Wall time of one step, from the end of the update before to the end of its own", registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.worker_compute = Counter("lenet_worker_compute_seconds", "Seconds a worker spent computing accepted "
                                      "shards", ["worker"], registry=registry)
        # Named apart from the worker process's own lenet_worker_shards_total, which Prometheus also scrapes.
        self.worker_shards = Counter("lenet_worker_accepted_shards", "Shards of a worker whose results were "
                                     "accepted", ["worker"], registry=registry)
        self.worker_last_seen = Gauge("lenet_worker_last_seen_timestamp_seconds", "Unix time of the last message "
                                      "from a worker", ["worker"], registry=registry)
        self.sent_bytes = Counter("lenet_sent_bytes", "Bytes sent to workers", registry=registry)
        self.received_bytes = Counter("lenet_received_bytes", "Bytes received from workers", registry=registry)
        self.redispatched = Counter("lenet_shards_redispatched", "Shards taken back from a worker and queued again",
                                    registry=registry)
        self.workers_lost = Counter("lenet_workers_lost", "Workers declared dead: silent past the heartbeat timeout, "
                                    "or their local process exited", registry=registry)
        self.rejected = Counter("lenet_rejected_messages", "Messages refused, by reason", ["reason"],
                                registry=registry)
        self.workers_banned = Counter("lenet_workers_banned", "Workers banned for the run: a NaN, implausible or "
                                      "mismatching result that the coordinator's own computation contradicts",
                                      registry=registry)
        self.workers_removed = Counter("lenet_workers_removed", "Workers removed for missing task deadlines "
                                       "again and again without ever answering", registry=registry)
        self.probe_failures = Counter("lenet_probe_failures", "Registrations refused because the worker's "
                                      "conformance probe differs from the coordinator's", registry=registry)
        self.backup_tasks = Counter("lenet_backup_tasks", "Units given to an idle worker while their first "
                                    "holder still computes them (not counted as re-dispatched)", registry=registry)
        self.units_verified = Counter("lenet_units_verified", "Units whose result was computed twice and compared "
                                      "bit for bit (--verify-fraction)", registry=registry)
        self.verify_mismatches = Counter("lenet_verify_mismatches", "Verified units whose two results differed",
                                         registry=registry)
        self.units_recomputed_locally = Counter("lenet_units_recomputed_locally", "Units the coordinator computed "
                                                "itself to settle a doubt (NaN, implausible, mismatch, verification)",
                                                registry=registry)
        self.coordinator_seconds = Counter("lenet_coordinator_seconds", "Seconds the coordinator's loop spent, "
                                           "by phase (coordinator/phases.py)", ["phase"], registry=registry)
        self.rewinds = Counter("lenet_rewinds", "Times the run went back to before a convicted worker's first "
                               "accepted answer, to replay the steps since without it", registry=registry)
        self.steps_replayed = Counter("lenet_steps_replayed", "Steps undone by rewinds, to be done again "
                                      "(lenet_steps_total counts them again once replayed)", registry=registry)
        self.rewind_seconds = Counter("lenet_rewind_seconds", "Wall time spent replaying the steps rewinds undid",
                                      registry=registry)
        self.checkpoint_duration = Histogram(
            "lenet_checkpoint_duration_seconds", "Time to write one checkpoint", registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.checkpoint_failures = Counter("lenet_checkpoint_failures", "Checkpoint writes that failed",
                                           registry=registry)
        for reason in Reason:
            self.rejected.labels(reason.value)  # every reason exported from the start, at 0

    def rejected_by_reason(self) -> dict[str, int]:
        """Messages refused so far, per reason (zeros left out)."""
        sample = self.registry.get_sample_value
        counts = {r.value: int(sample("lenet_rejected_messages_total", {"reason": r.value}) or 0) for r in Reason}
        return {r: n for r, n in counts.items() if n}

    def worker_seen(self, name: str) -> None:
        self.worker_last_seen.labels(name).set_to_current_time()

    def forget_worker(self, name: str) -> None:
        for series in (self.worker_compute, self.worker_shards, self.worker_last_seen):
            try:
                series.remove(name)
            except KeyError:
                pass  # a worker that never completed a shard has no series there

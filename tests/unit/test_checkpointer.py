"""Checkpoints while the disk is full: training goes on, the log says how far behind the newest good one is
(one line a minute at most), writes are retried, and the first success says so."""

import logging

from prometheus_client import CollectorRegistry

from coordinator import checkpoint as ckpt
from coordinator.runs import RunIdentity
from coordinator.metrics import Metrics
from coordinator.training import Training
from lenet.status import StorageError


class Disk:
    """A checkpoint directory that can fill up."""

    def __init__(self):
        self.full, self.written = False, []

    def save(self, directory, checkpoint, key=None):
        if self.full:
            raise StorageError(f"cannot write {directory}/ckpt: No space left on device")
        self.written.append(checkpoint.step)
        return directory / f"ckpt-{checkpoint.step:09d}.npz"


def test_a_full_disk_is_logged_rate_limited_retried_and_recovered(tmp_path, monkeypatch, caplog):
    disk, now = Disk(), [0.0]
    monkeypatch.setattr(ckpt, "save", disk.save)
    monkeypatch.setattr(ckpt, "snapshot", lambda run, identity: ckpt.Checkpoint(run.state.step, {}, {}, {}))
    run = Training.__new__(Training)  # only its state is read here
    run.state = type("State", (), {"step": 0})()
    checkpoints = ckpt.Checkpointer(tmp_path, Metrics(CollectorRegistry()), RunIdentity("a" * 12), retry_every=30,
                                    log_every=60,
                                    clock=lambda: now[0])
    caplog.set_level(logging.INFO, "coordinator")

    run.state.step = 100
    assert checkpoints.save(run) is not None and not checkpoints.retry_due()
    disk.full = True
    for step in range(110, 200, 10):  # 9 failures within a minute
        run.state.step, now[0] = step, now[0] + 5
        assert checkpoints.save(run) is None
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors
    assert "checkpoint at step 110 failed (1 in a row)" in errors[0] and "No space left on device" in errors[0]
    assert "the newest good one is step 100, 10 steps behind" in errors[0] and "retrying every 30 s" in errors[0]

    assert not checkpoints.retry_due()
    now[0] += 30
    assert checkpoints.retry_due()  # the coordinator then tries again without waiting for the next schedule
    run.state.step = 400
    checkpoints.save(run)  # still full: a minute since the last line, so one more, with what was held back
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and "(10 in a row, 8 not logged)" in errors[1] and "300 steps behind" in errors[1]

    disk.full = False
    now[0] += 30
    run.state.step = 500
    assert checkpoints.save(run) is not None and disk.written == [100, 500] and not checkpoints.retry_due()
    assert "checkpoint at step 500 written after 10 failed attempts" in caplog.records[-1].getMessage()


def test_no_directory_means_no_checkpoint_and_nothing_to_retry():
    checkpoints = ckpt.Checkpointer(None, Metrics(CollectorRegistry()), RunIdentity("a" * 12))
    assert checkpoints.save(None) is None and not checkpoints.retry_due()

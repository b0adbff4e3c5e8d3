"""Rewinds carried out (coordinator/rewinds.py): back to the state before the liar's first accepted answer, with
every epoch closed before it and no checkpoint after it; the replay ends where the furthest rewind left."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from coordinator import protocol as P
from coordinator import runs
from coordinator.checkpoint import Checkpointer, list_checkpoints
from coordinator.epochs import Epochs
from coordinator.metrics import Metrics
from coordinator.phases import StepTimes
from coordinator.rewinds import Replay, Rewinds
from coordinator.training import Training
from lenet.config import TrainConfig
from lenet.shards import unit_sums
from fakes import Clock


class Run:
    """A run of 2-step epochs whose steps are computed here, each credited to the members named."""

    def __init__(self, mnist, directory=None):
        self.training = Training(TrainConfig(epochs=3, batch_size=64, train_subset=128, seed=3), 4, mnist)
        self.training.test_accuracy = lambda params: 0.5  # the evaluation itself is not what is tested
        self.metrics = Metrics(CollectorRegistry())
        self.clock = Clock()
        self.epochs = Epochs(self.training, self.metrics, StepTimes(), workers=lambda: 1, clock=self.clock)
        identity = runs.identity(self.training.config, 4, self.training.data.checksums)
        self.checkpoints = Checkpointer(directory, self.metrics, identity)
        self.rewinds = Rewinds(self.training, self.epochs, self.checkpoints, self.metrics, clock=self.clock)
        self.params_after: dict[int, dict] = {}  # steps done -> a copy of the parameters then

    def step(self, *accepted: bytes, members=(b"a", b"b", b"c")) -> None:
        t = self.training
        number = t.state.step
        for who in accepted:
            self.rewinds.accepted(who, number)
        plan = t.plan(number, (1,))
        task = P.decode(plan.tasks[0])
        t.model.params = t.params
        sums = unit_sums(t.model, task.pixels, task.labels, task.sizes, task.first, task.num_shards)
        report = t.apply({plan.units[0]: P.result_of(task.step, sums, 0.0)}, plan.units)
        self.rewinds.step_done(members)
        self.params_after[t.state.step] = {k: v.copy() for k, v in t.params.items()}
        if report.epoch_ended:
            self.epochs.end()

    def convict(self, who: bytes) -> bool:
        """`who` convicted during the step under way; True if the run went back."""
        at = self.training.state.step
        rewind = self.rewinds.convicted(who, at)
        if rewind is not None:
            self.rewinds.rewind(rewind, at, who.decode())
        return rewind is not None

    def counted(self, name: str) -> float:
        return self.metrics.registry.get_sample_value(name)


@pytest.fixture
def run(mnist):
    r = Run(mnist)
    yield r
    r.epochs.close()


def test_a_replay_lasts_until_the_furthest_step_a_rewind_left_and_counts_every_step_undone():
    replay = Replay(until=5, started=0.0)
    replay.rewound(at=5, to=2, name="b")
    assert not replay.done(4) and replay.done(5)
    replay.rewound(at=3, to=1, name="c")  # convicted during the replay: back further, and no less far ahead
    assert (replay.until, replay.steps, replay.convicted) == (5, 5, ["b", "c"])
    replay.rewound(at=7, to=6, name="d")
    assert replay.until == 7 and not replay.done(6) and replay.done(7)


def test_a_conviction_goes_back_to_before_the_liars_first_accepted_answer(run, caplog):
    run.step(b"a")
    run.step(b"b")  # b's first accepted answer, in step 1
    run.step(b"a", b"b")
    with caplog.at_level(logging.WARNING, logger="coordinator"):
        assert run.convict(b"b")  # during step 3
    assert run.training.state.step == 1
    assert all(np.array_equal(run.training.params[k], v) for k, v in run.params_after[1].items())
    assert run.counted("lenet_rewinds_total") == 1 and run.counted("lenet_steps_replayed_total") == 2
    assert "rewind: b convicted at step 3; back to step 1" in caplog.text and "2 steps to do again" in caplog.text


def test_a_member_with_nothing_accepted_before_the_step_is_not_rewound(run):
    run.step(b"a")
    assert not run.convict(b"b")
    assert run.training.state.step == 1 and run.counted("lenet_rewinds_total") == 0


def test_the_replay_is_done_once_the_run_is_back_where_the_furthest_rewind_left_it(run, caplog):
    run.step(b"a", b"c")
    run.step(b"b")
    run.step(b"a")
    run.convict(b"b")  # at step 3, back to 1
    run.clock.now += 2.0
    run.step(b"a")
    run.convict(b"c")  # at step 2, during the replay: back to 0, and still done only at step 3
    with caplog.at_level(logging.WARNING, logger="coordinator"):
        run.step(b"a")
        run.step(b"a")
        assert "rewind done" not in caplog.text
        run.clock.now += 3.0
        run.step(b"a")
    assert run.training.state.step == 3
    assert "rewind done: 4 steps replayed in 5.0 s without b, c" in caplog.text
    assert run.counted("lenet_rewind_seconds_total") == 5.0
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="coordinator"):
        run.step(b"a")
    assert "rewind" not in caplog.text  # said once


def test_the_snapshot_holds_every_epoch_closed_before_it(run):
    run.step(b"a")
    run.step(b"a")  # the end of epoch 1: its evaluation starts
    run.step(b"b")  # b's first accepted answer: its snapshot is taken with epoch 1 recorded
    run.convict(b"b")
    assert [e["epoch"] for e in run.training.state.history] == [1]


def test_an_epoch_closed_after_the_point_gone_back_to_is_not_recorded(run):
    run.step(b"a")
    run.step(b"b")  # in the epoch's last step
    run.convict(b"b")  # back to step 1: epoch 1 is done again
    run.epochs.settle(wait=True)
    assert run.training.state.history == []
    run.step(b"a")
    run.epochs.settle(wait=True)
    assert [e["epoch"] for e in run.training.state.history] == [1]


def test_checkpoints_after_the_point_gone_back_to_are_deleted(mnist, tmp_path, caplog):
    run = Run(mnist, directory=tmp_path)
    try:
        for who in (b"a", b"b", b"a"):
            run.step(who)
            run.checkpoints.save(run.training)
        with caplog.at_level(logging.WARNING, logger="coordinator"):
            run.convict(b"b")  # back to step 1
        assert [f.step for f in list_checkpoints(tmp_path)] == [1]
        assert "(2 checkpoints holding its answers deleted)" in caplog.text
    finally:
        run.epochs.close()

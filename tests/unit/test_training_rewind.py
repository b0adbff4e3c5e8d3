"""Going back (coordinator/training.py `snapshot`, `rewind`): a replay from a snapshot gives the same bits, and
the steps done again carry numbers never sent before."""

from __future__ import annotations

import numpy as np

from coordinator import protocol as P
from coordinator.training import Training
from lenet.config import TrainConfig
from lenet.model import LeNet5
from lenet.shards import unit_sums


def step_once(training: Training) -> int:
    """One step computed here, as one unit; returns the step number its messages carried."""
    plan = training.plan(training.state.step, (1,))
    task = P.decode(plan.tasks[0])
    model = LeNet5()
    model.params = training.params
    sums = unit_sums(model, task.pixels, task.labels, task.sizes, task.first, task.num_shards)
    training.apply({plan.units[0]: P.result_of(task.step, sums, 0.0)}, plan.units)
    return task.step


def test_a_replay_from_a_snapshot_ends_bit_identical(mnist):
    config = TrainConfig(train_subset=384, batch_size=128, epochs=2)  # 3 steps an epoch: an epoch end crossed
    straight = Training(config, 4, mnist)
    for _ in range(5):
        step_once(straight)
    training = Training(config, 4, mnist)
    step_once(training)
    snapshot = training.snapshot()
    for _ in range(3):
        step_once(training)
    closed = training.close_epoch(seconds=1.0)
    training.record_epoch(closed, training.test_accuracy(closed.params))
    training.rewind(snapshot)
    assert training.state.step == 1 and training.state.history == []
    for _ in range(4):
        step_once(training)
    assert all(np.array_equal(training.params[k], straight.params[k]) for k in straight.params)
    ours, theirs = training.optimizer.state_dict(), straight.optimizer.state_dict()
    assert ours.keys() == theirs.keys() and all(np.array_equal(v, theirs[k]) for k, v in ours.items())


def test_the_snapshot_is_a_copy_and_stays_one(mnist):
    training = Training(TrainConfig(train_subset=256, batch_size=128), 4, mnist)
    snapshot = training.snapshot()
    first = {k: v.copy() for k, v in snapshot.params.items()}
    step_once(training)
    training.rewind(snapshot)
    step_once(training)  # steps the rewound parameters in place: the snapshot must not see it
    assert all(np.array_equal(snapshot.params[k], first[k]) for k in first)


def test_steps_done_again_are_numbered_above_every_step_sent_before(mnist):
    training = Training(TrainConfig(train_subset=512, batch_size=128), 4, mnist)
    snapshot = training.snapshot()
    sent = [step_once(training) for _ in range(3)]
    training.plan_ahead((1,))  # the next step's plan, built ahead: numbered before the rewind
    training.rewind(snapshot)
    again = [step_once(training) for _ in range(3)]
    assert sent == [0, 1, 2] and min(again) > max(sent) + 1 and again == sorted(again)

"""The run's epochs, as the coordinator closes them: evaluated off the loop, recorded in order, resumable."""

import copy

import numpy as np
import pytest

from coordinator import checkpoint as ckpt
from coordinator import runs
from coordinator import protocol as P
from coordinator.training import Training
from lenet.config import TrainConfig
from lenet.shards import unit_sums


def run_steps(training: Training, steps: int) -> None:
    """Apply `steps` steps, each computed as one unit here (what a single worker would send)."""
    for _ in range(steps):
        plan = training.plan(training.state.step, (1,))
        results = {}
        for node, encoded in zip(plan.units, plan.tasks):
            task = P.decode(encoded)
            training.model.params = training.params
            results[node] = P.result_of(task.step, unit_sums(training.model, task.pixels, task.labels, task.sizes,
                                                             task.first, task.num_shards), 0.0)
        training.apply(results, plan.units)


@pytest.fixture
def training(mnist) -> Training:
    return Training(TrainConfig(epochs=2, batch_size=64, train_subset=128, seed=3), num_shards=4, data=mnist)


def test_an_epoch_is_unclosed_from_its_last_step_until_it_is_closed(training):
    run_steps(training, 1)
    assert not training.epoch_unclosed  # mid-epoch
    run_steps(training, 1)
    assert training.epoch_unclosed  # its last step is applied, its sums are still open
    closed = training.close_epoch(seconds=2.0)
    assert not training.epoch_unclosed
    assert (closed.epoch, closed.steps, closed.samples, closed.seconds) == (1, 2, 128, 2.0)
    assert training.state.epoch_samples == 0 and training.state.history == []  # recorded only with its accuracy


def test_the_closed_epoch_keeps_its_own_parameters_while_training_goes_on(training):
    run_steps(training, 2)
    closed = training.close_epoch(seconds=1.0)
    at_close = {k: v.copy() for k, v in closed.params.items()}
    run_steps(training, 1)  # the next epoch trains while the evaluation runs
    assert all(np.array_equal(closed.params[k], at_close[k]) for k in at_close)
    assert not all(np.array_equal(training.params[k], at_close[k]) for k in at_close)
    accuracy = training.test_accuracy(closed.params)
    stats = training.record_epoch(closed, accuracy)
    assert stats.test_accuracy == accuracy
    assert training.state.history == [{"epoch": 1, "samples": 128, "loss": closed.loss,
                                       "train_accuracy": closed.train_accuracy, "test_accuracy": accuracy}]


def test_a_checkpoint_of_an_unclosed_epoch_closes_to_the_same_record(training, mnist):
    """The epoch's checkpoint is written before it is closed; a run resumed from it closes it again."""
    run_steps(training, 2)
    identity = runs.identity(training.config, training.num_shards, training.data.checksums)
    saved = copy.deepcopy(ckpt.snapshot(training, identity))  # as written to disk: nothing shared with the run
    closed = training.close_epoch(seconds=1.0)
    direct = training.record_epoch(closed, training.test_accuracy(closed.params))

    resumed = Training(training.config, training.num_shards, mnist)
    ckpt.restore(resumed, saved)
    assert resumed.epoch_unclosed
    again = resumed.close_epoch(seconds=0.0)
    record = resumed.record_epoch(again, resumed.test_accuracy(again.params))
    assert (record.loss, record.train_accuracy, record.test_accuracy) == \
        (direct.loss, direct.train_accuracy, direct.test_accuracy)
    assert resumed.state.history == training.state.history

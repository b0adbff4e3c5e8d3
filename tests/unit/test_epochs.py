"""The epochs' ends (coordinator/epochs.py): evaluated while training goes on, recorded in order once their
accuracy is known, at once when asked, timed by the clock given, and dropped when a rewind undoes them."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from coordinator import protocol as P
from coordinator.epochs import Epochs
from coordinator.metrics import Metrics
from coordinator.phases import StepTimes
from coordinator.training import Training
from lenet.config import TrainConfig
from lenet.shards import unit_sums
from fakes import Clock


def run_steps(training: Training, steps: int) -> None:
    """Apply `steps` steps, each computed here as one unit (what a single worker would send)."""
    for _ in range(steps):
        plan = training.plan(training.state.step, (1,))
        task = P.decode(plan.tasks[0])
        training.model.params = training.params
        sums = unit_sums(training.model, task.pixels, task.labels, task.sizes, task.first, task.num_shards)
        training.apply({plan.units[0]: P.result_of(task.step, sums, 0.0)}, plan.units)


class Gate:
    """A test accuracy that is known only once the test opens the gate."""

    def __init__(self, accuracy: float = 0.5):
        self.accuracy, self.opened = accuracy, threading.Event()

    def __call__(self, params) -> float:
        assert self.opened.wait(10)
        return self.accuracy


@pytest.fixture
def run(mnist):
    """A run of 3 epochs of 2 steps, its epochs' records as told to the run log, a clock, and its Epochs."""
    training = Training(TrainConfig(epochs=3, batch_size=64, train_subset=128, seed=3), num_shards=4, data=mnist)
    records = []
    training.on_epoch = lambda record, params: records.append(record)
    training.test_accuracy = Gate()
    clock = Clock()
    metrics = Metrics(CollectorRegistry())
    epochs = Epochs(training, metrics, StepTimes(), workers=lambda: 2, clock=clock)
    yield training, records, clock, metrics, epochs
    training.test_accuracy.opened.set()
    epochs.close()


def test_an_epoch_is_recorded_once_its_accuracy_is_known_and_training_goes_on_meanwhile(run):
    training, records, _, metrics, epochs = run
    run_steps(training, 2)
    epochs.end()
    run_steps(training, 1)  # the next epoch trains during the evaluation
    epochs.settle(wait=False)
    assert records == [] and training.state.history == []  # not known yet: nothing recorded
    training.test_accuracy.opened.set()
    deadline = time.monotonic() + 10
    while not records and time.monotonic() < deadline:
        epochs.settle(wait=False)
        time.sleep(0.01)
    assert [r["epoch"] for r in records] == [1] and training.state.history[0]["test_accuracy"] == 0.5
    assert metrics.registry.get_sample_value("lenet_test_accuracy") == 0.5
    epochs.settle(wait=False)
    assert len(records) == 1  # recorded once


def test_the_cpu_an_evaluation_takes_in_its_thread_is_told_to_the_step_times(mnist):
    training = Training(TrainConfig(epochs=2, batch_size=64, train_subset=128, seed=3), num_shards=4, data=mnist)
    thread_cpu, threads = Clock(), set()

    def accuracy(params) -> float:  # a thread's CPU clock: it moves only while this evaluation computes
        threads.add(threading.get_ident())
        thread_cpu.now += 0.25
        return 0.5

    training.test_accuracy = accuracy
    times = StepTimes()
    epochs = Epochs(training, Metrics(CollectorRegistry()), times, workers=lambda: 1, clock=Clock(),
                    thread_cpu=thread_cpu)
    try:
        run_steps(training, 2)
        epochs.end()
        epochs.settle(wait=True)
    finally:
        epochs.close()
    assert times.evaluation_cpu == pytest.approx(0.25)
    assert threading.get_ident() not in threads  # computed in the evaluation thread, not the loop's


def test_waiting_records_the_epoch_at_once_with_its_line(run, caplog):
    training, records, _, metrics, epochs = run
    run_steps(training, 2)
    epochs.end()
    threading.Timer(0.05, training.test_accuracy.opened.set).start()
    with caplog.at_level(logging.INFO, logger="coordinator"):
        epochs.settle(wait=True)
    assert [r["epoch"] for r in records] == [1]
    assert metrics.registry.get_sample_value("lenet_train_accuracy") == training.state.history[0]["train_accuracy"]
    assert "epoch 1/3: loss " in caplog.text and "test acc 50.00%" in caplog.text and "2 workers" in caplog.text


def test_an_epoch_ending_during_the_last_ones_evaluation_waits_for_it_so_epochs_are_recorded_in_order(run):
    training, records, _, _, epochs = run
    run_steps(training, 2)
    epochs.end()
    run_steps(training, 2)
    threading.Timer(0.05, training.test_accuracy.opened.set).start()
    epochs.end()  # epoch 1 is recorded before epoch 2 is closed
    assert [r["epoch"] for r in records] == [1]
    epochs.settle(wait=True)
    assert [r["epoch"] for r in records] == [1, 2]
    assert [e["epoch"] for e in training.state.history] == [1, 2]


def test_an_epoch_is_timed_from_its_start_or_the_last_end_and_a_resumed_one_is_not_timed(run):
    training, records, clock, _, epochs = run
    training.test_accuracy.opened.set()
    epochs.start()
    run_steps(training, 2)
    clock.now += 4.0
    epochs.end()
    run_steps(training, 2)
    clock.now += 2.0
    epochs.end()
    run_steps(training, 2)
    clock.now += 8.0
    epochs.end(resumed=True)  # its last step ran before a restart: its time is not known
    epochs.settle(wait=True)
    assert [r["seconds"] for r in records] == [4.0, 2.0, 0.0]
    assert records[0]["samples_per_second"] == 128 / 4.0 and records[2]["samples_per_second"] == 0.0


def test_an_epoch_a_rewind_undoes_is_never_recorded(run):
    training, records, _, _, epochs = run
    run_steps(training, 2)
    epochs.end()
    epochs.undo(to=2)  # back to the start of step 2, after the epoch's end: it stays
    training.test_accuracy.opened.set()
    epochs.settle(wait=True)
    assert [r["epoch"] for r in records] == [1]
    run_steps(training, 2)
    epochs.end()
    epochs.undo(to=3)  # back to before the epoch's last step: it is done again, and closed again
    epochs.settle(wait=True)
    assert [r["epoch"] for r in records] == [1] and len(training.state.history) == 1


def test_settling_with_no_epoch_closed_does_nothing(run):
    training, records, _, _, epochs = run
    epochs.settle(wait=True)
    assert records == [] and training.state.history == []

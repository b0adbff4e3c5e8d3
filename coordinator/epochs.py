"""The epochs' ends: an epoch is closed at its last step, evaluated on the test set in a thread while the
next epoch trains, and recorded once its accuracy is known.  No sockets; the clock is passed in.

The test accuracy needs only the closed epoch's parameters (a copy), so the
workers never wait for it.  One epoch is evaluated at a time: an epoch that ends
while the previous one is still evaluated waits for it, so epochs are recorded in
order.  Recording an epoch (`settle`) puts it in the run's history, sets the
accuracy metrics and logs the epoch's line; with `wait=True` it happens at once,
for whoever needs every finished epoch in the history: a checkpoint, a snapshot a
rewind may go back to, the run's end.  An epoch a rewind undoes is dropped
unrecorded (`undo`): it is closed and evaluated again when the replay reaches it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from coordinator.metrics import Metrics
from coordinator.phases import StepTimes
from coordinator.training import ClosedEpoch, Training
from lenet.cli import counted
from lenet.params import Params

log = logging.getLogger("coordinator")


class Epochs:
    """The epoch under way's clock, and the closed epoch being evaluated (at most one).

    `workers()` is the number of workers, for the epoch's line; `times` takes the
    time the loop waits for an evaluation (phase "evaluation") and the CPU each
    evaluation took in its thread (`thread_cpu`, read there).
    """

    def __init__(self, training: Training, metrics: Metrics, times: StepTimes, workers: Callable[[], int],
                 clock: Callable[[], float] = time.monotonic,
                 thread_cpu: Callable[[], float] = time.thread_time) -> None:
        self.training, self.metrics, self.times, self.workers, self.clock = training, metrics, times, workers, clock
        self.thread_cpu = thread_cpu
        self.started = clock()  # the epoch under way's
        self.evaluator = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evaluation")
        self.evaluating: tuple[ClosedEpoch, Future[float]] | None = None

    def start(self) -> None:
        """The epoch under way is timed from now (training starts, or resumes)."""
        self.started = self.clock()

    def end(self, resumed: bool = False) -> None:
        """Close the epoch and start its test-set evaluation; training goes on meanwhile.

        `resumed`: the epoch's last step ran before a restart (the run resumed from its checkpoint), so its
        time is not known.
        """
        seconds = 0.0 if resumed else self.clock() - self.started
        self.settle(wait=True)  # the previous epoch's, if epochs are shorter than an evaluation
        closed = self.training.close_epoch(seconds)
        self.started = self.clock()
        self.metrics.epoch.set(self.training.epoch)
        self.metrics.epoch_samples.set(0)
        self.evaluating = (closed, self.evaluator.submit(self._test_accuracy, closed.params))

    def _test_accuracy(self, params: Params) -> float:
        """In the evaluation thread: the test accuracy, and the CPU it took told to `times`."""
        started = self.thread_cpu()
        try:
            return self.training.test_accuracy(params)
        finally:
            self.times.evaluated(self.thread_cpu() - started)

    def settle(self, wait: bool) -> None:
        """Record the evaluated epoch (history, metrics, log line) once its accuracy is known, or now if `wait`."""
        if self.evaluating is None or not (wait or self.evaluating[1].done()):
            return
        closed, future = self.evaluating
        with self.times.timed("evaluation"):
            accuracy = future.result()
        self.evaluating = None
        stats = self.training.record_epoch(closed, accuracy)
        self.metrics.train_accuracy.set(stats.train_accuracy)
        self.metrics.test_accuracy.set(stats.test_accuracy)
        log.info("epoch %d/%d: loss %.4f  train acc %.2f%%  test acc %.2f%%  %d samples  %.0f samples/s  %s",
                 stats.epoch, self.training.config.epochs, stats.loss, 100 * stats.train_accuracy,
                 100 * stats.test_accuracy, stats.samples, stats.samples_per_second,
                 counted(self.workers(), "worker"))

    def undo(self, to: int) -> None:
        """A rewind went back to the start of step `to`: an epoch closed after it is not recorded."""
        if self.evaluating is not None and self.evaluating[0].steps > to:
            self.evaluating = None

    def close(self) -> None:
        """Wait for an evaluation under way (its result is not recorded) and stop the thread."""
        self.evaluator.shutdown(wait=True)

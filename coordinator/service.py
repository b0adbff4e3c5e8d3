"""The service assembled and run: coordinator, local worker processes, supervision, shutdown.

`run_service` is the one place that wires these together; the command line, the
benchmarks and the tests all call it.  It returns when training is done or
`stop()` turns true, having checkpointed where the run stands, told the workers to
stop, and closed every socket and process it started.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import zmq

from coordinator import checkpoint as ckpt
from coordinator import protocol as P
from coordinator.config import ServiceConfig
from coordinator.local_workers import LocalWorkers
from coordinator.metrics import Metrics
from coordinator.server import Coordinator, RunOutcome, RunStuck, StepObserver
from coordinator.training import Training, TrainingDiverged

log = logging.getLogger("coordinator")


@dataclass
class ServiceOutcome(RunOutcome):
    checkpoint: Path | None = None  # written at the end: stopped early, diverged, or ended mid-epoch


def run_service(training: Training, service: ServiceConfig, metrics: Metrics, *, local_workers: int = 0,
                local_worker_args: Sequence[str] = (), resume_from: ckpt.Checkpoint | None = None,
                stop: Callable[[], bool] = lambda: False, reload_keys: Callable[[], bool] = lambda: False,
                progress: StepObserver = lambda report, workers: None) -> ServiceOutcome:
    """Train `training` with `local_workers` processes started here plus any that connect.

    `stop()` true ends the run early; `reload_keys()` true (a SIGHUP) re-reads the
    CURVE allow-list.

    Raises TrainingDiverged (after checkpointing) when the coordinator's own computation
    confirms that the model diverged; RunStuck (after checkpointing and telling the
    workers to stop) when every member's results are refused again and again; user
    errors (an unusable address or checkpoint) as lenet.status errors.
    """
    context = zmq.Context()
    coordinator = None
    local = None
    linger_ms = 0  # once the workers are told to stop: a second for that to reach them
    try:
        coordinator = Coordinator(training, service, metrics, context)
        if resume_from is not None:
            coordinator.restore(resume_from)
        log.info("listening on %s", coordinator.endpoint.address)
        if local_workers and not training.done:  # a finished run (resumed at its end) needs none
            local = LocalWorkers(local_workers, coordinator.endpoint.local_address, list(local_worker_args))

        def tick() -> None:
            if local is not None:
                coordinator.forget_exited(local.supervise())
            if reload_keys():
                coordinator.reload_keys()

        try:
            outcome = coordinator.run(stop=stop, tick=tick, progress=progress)
            log.info("%s", coordinator.times.line())
        except TrainingDiverged:
            coordinator.save_checkpoint()
            raise
        except RunStuck as err:
            coordinator.save_checkpoint()
            coordinator.broadcast_shutdown(f"coordinator stopped: {err}"[: P.MAX_TEXT])
            linger_ms = 1000
            raise
        checkpoint = None
        if not outcome.finished or training.state.step % training.steps_per_epoch:
            checkpoint = coordinator.save_checkpoint()  # stopped, or a --max-steps run ended mid-epoch: keep it
        coordinator.broadcast_shutdown("training finished" if outcome.finished else "coordinator stopped")
        linger_ms = 1000
        return ServiceOutcome(outcome.params, outcome.state, outcome.finished, checkpoint)
    finally:
        rejected = metrics.rejected_by_reason()
        if rejected:
            log.info("rejected %d messages during the run: %s", sum(rejected.values()),
                     ", ".join(f"{reason} {n}" for reason, n in sorted(rejected.items())))
        if local is not None:
            local.stop()
        if coordinator is not None:
            coordinator.close(linger_ms)
        context.term()

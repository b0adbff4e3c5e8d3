"""The coordinator's event loop: receive and route messages, dispatch units, finish steps.

One thread, one ROUTER socket (coordinator/endpoint.py), every wait bounded.  The
loop only moves messages and calls the pure parts:
  - `Membership` (who is alive and may get work),
  - `Training.plan` / `Step` (a step's units and encoded tasks, and its state while
    the workers compute: the `StepScheduler` keeps the first valid result of each
    unit and takes units back from dead, departed or overdue workers),
  - `Training.apply` (add the units up the fixed tree, step the optimizer) and
    `Training.end_epoch`,
  - `Checkpointer` (coordinator/checkpoint.py).
Every node of the reduction tree is the same float32 addition wherever it is done,
so the parameters are bit-identical whatever the number, order or failures of workers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq

from coordinator import checkpoint as ckpt
from coordinator import protocol as P
from coordinator.config import ServiceConfig
from coordinator.endpoint import RouterEndpoint
from coordinator.membership import Member, Membership
from coordinator.metrics import Metrics
from coordinator.ratelimit import RateLimitedLog, ReplyLimiter
from coordinator.refusals import Reason
from coordinator.step import Step, StepPlan
from coordinator.training import RunState, StepReport, Training
from lenet.params import Params

log = logging.getLogger("coordinator")

PREFETCH = 2  # tasks a worker may hold at once: hides the round trip between units
RECEIVE_BUDGET = 256  # messages handled per loop turn, so a flood cannot starve the rest of the loop
# A step has diverged (rather than met one broken worker) when this many distinct
# workers, or every live worker if fewer, returned NaN/Inf gradients for it.
DIVERGED_AFTER_WORKERS = 3

Progress = Callable[[StepReport, int], None]  # after each step: its report and the number of workers


class TrainingDiverged(Exception):
    """Every worker returns non-finite gradients: the model itself has diverged."""


@dataclass
class RunOutcome:
    params: Params
    state: RunState
    finished: bool  # False: stopped early by a signal


class Coordinator:
    def __init__(self, training: Training, service: ServiceConfig, metrics: Metrics, context: zmq.Context):
        self.training, self.service, self.metrics = training, service, metrics
        self.members = Membership[bytes](service.heartbeat_timeout)
        self.checkpoints = ckpt.Checkpointer(service.checkpoint_dir, metrics)
        self.step: Step | None = None
        self.next_plan: StepPlan | None = None
        self.epoch_started = 0.0
        self.warnings = RateLimitedLog(interval=10.0)
        self.replies = ReplyLimiter(interval=1.0)
        self.endpoint = RouterEndpoint(context, service.bind, service.curve)

    def restore(self, c: ckpt.Checkpoint) -> None:
        """Continue from a checkpoint of the same configuration and data."""
        ckpt.restore(self.training, c)
        self.metrics.steps.inc(c.step)
        self.metrics.epoch.set(self.training.epoch)
        self.metrics.epoch_samples.set(self.training.state.epoch_samples)

    def save_checkpoint(self) -> Path | None:
        return self.checkpoints.save(self.training)

    # ------------------------------------------------------------------ sending

    def _send(self, identity: bytes, frame: bytes) -> None:
        if self.endpoint.send(identity, frame):
            self.metrics.sent_bytes.inc(len(frame))
        else:
            self._warn_limited("send_full", f"send buffer to {self._name(identity)} full: message dropped")

    def _name(self, identity: bytes) -> str:
        member = self.members.get(identity)
        return member.name if member else identity.hex()[:8]

    def broadcast_shutdown(self, reason: str) -> None:
        frame = P.encode(P.Shutdown(reason=reason))
        for identity in list(self.members.members):
            self._send(identity, frame)

    # ------------------------------------------------------------------ membership

    def _remove_worker(self, identity: bytes, why: str) -> None:
        member = self.members.remove(identity)
        released = self.step.scheduler.release_worker(identity) if self.step else 0
        self.metrics.redispatched.inc(released)
        self.metrics.forget_worker(member.name)
        self.metrics.workers_alive.set(len(self.members))
        log.info("worker %s %s (%d live; %d shards re-dispatched)", member.name, why, len(self.members), released)

    def forget_exited(self, pids: list[int]) -> None:
        """Local worker processes seen to exit: drop them now rather than at the heartbeat timeout."""
        for identity in self.members.with_pids(pids):
            self.metrics.workers_lost.inc()
            self._remove_worker(identity, "exited")

    def _check_liveness(self, now: float) -> None:
        for identity, silent in self.members.silent(now):
            self.metrics.workers_lost.inc()
            self._remove_worker(identity, f"lost: silent for {silent:.1f} s")
        if self.step is None:
            return
        sched = self.step.scheduler
        for unit, identity in sched.expire(now):
            lo, hi = sched.units[unit]
            self.metrics.redispatched.inc(hi - lo)
            self.members.suspect(identity, now)
            log.warning("shards %d-%d of step %d missed their %.0f s deadline on %s: re-dispatched", lo, hi - 1,
                        sched.step, self.service.task_timeout, self._name(identity))

    # ------------------------------------------------------------------ receiving

    def _warn_limited(self, key: str, text: str) -> None:
        """One log line per key per 10 s, whatever the flood, saying how many were held back."""
        held = self.warnings.admit(key, time.monotonic())
        if held is not None:
            more = f" (+{held} more like it since the last report)" if held else ""
            log.warning("%s%s", text, more)

    def _reject(self, reason: Reason, identity: bytes | None, detail: str) -> None:
        self.metrics.rejected.labels(reason.value).inc()
        who = self._name(identity) if identity else "?"
        self._warn_limited(reason.value, f"rejected message from {who}: {reason.value}: {detail[:200]}")

    def _drain(self) -> None:
        """Handle the messages already queued, at most RECEIVE_BUDGET of them."""
        for frames in self.endpoint.receive(RECEIVE_BUDGET):
            self.metrics.received_bytes.inc(sum(len(f.buffer) for f in frames))
            if len(frames) != 2:
                self._reject(Reason.MALFORMED, frames[0].bytes if frames else None,
                             f"{len(frames)} frames, expected 2")
                continue
            self._handle(frames[0].bytes, frames[1].buffer, time.monotonic())

    def _handle(self, identity: bytes, frame: bytes | memoryview, now: float) -> None:
        try:
            msg = P.decode(frame)
        except P.ProtocolError as err:
            self._reject(err.reason, identity, err.detail)
            return
        if isinstance(msg, P.Register):
            if self.members.join(identity, msg.name, msg.pid, now):
                log.info("worker %s joined (%d live)", msg.name, len(self.members))
            self.metrics.worker_seen(msg.name)
            self.metrics.workers_alive.set(len(self.members))
            self._send(identity, P.encode(P.Heartbeat()))
            return
        member = self.members.touch(identity, now)
        if member is None:
            self._reject(Reason.UNREGISTERED, identity, f"{msg.TYPE} from an unknown worker")
            if not isinstance(msg, P.Leave) and self.replies.allow(identity, now):
                self._send(identity, P.encode(P.Error(code="unregistered", message="register first")))
            return
        self.metrics.worker_seen(member.name)
        if isinstance(msg, P.Heartbeat):
            self._send(identity, P.encode(P.Heartbeat()))
        elif isinstance(msg, P.Leave):
            self._remove_worker(identity, "left")
        elif isinstance(msg, P.Result):
            self._handle_result(identity, member, msg)
        else:
            self._reject(Reason.UNEXPECTED, identity, f"a worker may not send {msg.TYPE}")

    def _handle_result(self, identity: bytes, member: Member, msg: P.Result) -> None:
        if self.step is None:
            self._reject(Reason.STALE_STEP, identity, f"result for step {msg.step} between steps")
            return
        sched = self.step.scheduler
        where = f"step {msg.step} shards {msg.first}-{msg.first + msg.shards - 1}"
        reason = sched.check(identity, msg.step, msg.first, msg.shards, msg.count)
        if reason:
            self._reject(reason, identity, where)
            return
        if not P.all_finite(msg.grads):
            self._reject(Reason.NON_FINITE, identity, f"NaN/Inf gradient for {where}")
            self.step.nonfinite.add(identity)
            self.metrics.redispatched.inc(sched.reject_result(msg.first) + sched.release_worker(identity))
            if len(self.step.nonfinite) >= min(DIVERGED_AFTER_WORKERS, len(self.members)):
                raise TrainingDiverged(f"step {msg.step}: {len(self.step.nonfinite)} workers returned NaN/Inf "
                                       "gradients")
            return
        sched.accept(msg.first, msg)
        self.metrics.worker_compute.labels(member.name).inc(msg.compute_seconds)
        self.metrics.worker_shards.labels(member.name).inc(msg.shards)

    # ------------------------------------------------------------------ steps

    def _live(self) -> int:
        return len(self.members.eligible())

    def _plan_ahead(self) -> None:
        """Build the next step's tasks while the workers compute, off the step's critical path."""
        nxt = self.training.state.step + 1
        if nxt < self.training.total_steps and (self.next_plan is None or self.next_plan.step != nxt):
            self.next_plan = self.training.plan(nxt, self._live())

    def _start_step(self, now: float) -> None:
        step, live = self.training.state.step, self._live()
        plan = self.next_plan
        if plan is None or plan.step != step or plan.live != live:
            plan = self.training.plan(step, live)
        self.step = Step.start(plan, self.training.params, self.service.task_timeout, now)

    def _dispatch(self, now: float) -> None:
        """Hand out pending units round-robin, up to PREFETCH per worker."""
        step = self.step
        assert step is not None
        sched = step.scheduler
        eligible = [i for i in self.members.eligible() if i not in step.nonfinite]
        progress = True
        while sched.pending and progress:
            progress = False
            for identity in eligible:
                if not sched.pending or len(sched.held_by(identity)) >= PREFETCH:
                    continue
                unit = sched.next_unit(identity, now)
                assert unit is not None
                member = self.members.get(identity)
                assert member is not None
                if member.params_step != sched.step:
                    self._send(identity, step.params_frame)
                    member.params_step = sched.step
                self._send(identity, step.plan.tasks[unit])
                progress = True

    def _finish_step(self, now: float) -> StepReport:
        step = self.step
        assert step is not None
        report = self.training.apply(step.results(), step.plan.units)
        m = self.metrics
        m.samples.inc(report.samples)
        m.steps.inc()
        m.train_loss.set(report.loss)
        m.learning_rate.set(report.lr)
        m.epoch_samples.set(self.training.state.epoch_samples)
        m.step_duration.observe(now - step.started)
        self.step = None
        if report.epoch_ended:
            self._end_epoch()
        elif self.service.checkpoint_every and report.step % self.service.checkpoint_every == 0:
            self.save_checkpoint()
        return report

    def _end_epoch(self) -> None:
        now = time.monotonic()
        stats = self.training.end_epoch(seconds=now - self.epoch_started)
        self.metrics.train_accuracy.set(stats.train_accuracy)
        self.metrics.test_accuracy.set(stats.test_accuracy)
        self.metrics.epoch.set(self.training.epoch)
        self.metrics.epoch_samples.set(0)
        log.info("epoch %d/%d: loss %.4f  train acc %.2f%%  test acc %.2f%%  %d samples  %.0f samples/s  %d workers",
                 stats.epoch, self.training.config.epochs, stats.loss, 100 * stats.train_accuracy,
                 100 * stats.test_accuracy, stats.samples, stats.samples_per_second, len(self.members))
        self.epoch_started = time.monotonic()
        self.save_checkpoint()

    # ------------------------------------------------------------------ the loop

    def _turn(self, wait: float, tick: Callable[[], None]) -> float:
        """Wait up to `wait` s for messages, handle them, check liveness, run `tick`; returns the time after."""
        if self.endpoint.poll(wait):
            self._drain()
        now = time.monotonic()
        self._check_liveness(now)
        tick()
        return now

    def wait_for_workers(self, stop: Callable[[], bool], tick: Callable[[], None] = lambda: None) -> bool:
        """Block until min_workers have registered; False if stopped first."""
        announced = False
        while len(self.members) < self.service.min_workers:
            if stop():
                return False
            if not announced:
                log.info("waiting for %d workers at %s (have %d)", self.service.min_workers, self.endpoint.address,
                         len(self.members))
                announced = True
            self._turn(0.1, tick)
        return True

    def run(self, stop: Callable[[], bool], tick: Callable[[], None] = lambda: None,
            progress: Progress = lambda report, workers: None) -> RunOutcome:
        """Train until done or `stop()` is true; `tick` runs every loop turn, `progress` after each step."""
        training = self.training
        self.metrics.epoch.set(training.epoch)
        if not self.wait_for_workers(stop, tick):
            return RunOutcome(training.params, training.state, finished=False)
        log.info("training: %d steps of batch %d in %d shards, %d workers", training.total_steps - training.state.step,
                 training.config.batch_size, training.num_shards, len(self.members))
        self.epoch_started = time.monotonic()
        paused = False  # no live worker: said once, until one registers
        while not training.done:
            if stop():
                return RunOutcome(training.params, training.state, finished=False)
            now = time.monotonic()
            if self.step is None:
                self._start_step(now)
            assert self.step is not None
            self._dispatch(now)
            self._plan_ahead()
            deadline = self.step.scheduler.next_deadline()
            now = self._turn(0.1 if deadline is None else min(0.1, max(0.0, deadline - now)), tick)
            if not len(self.members) and not paused:
                log.warning("no live workers: training paused until one registers")
            paused = not len(self.members)
            if self.step.scheduler.complete:
                progress(self._finish_step(now), len(self.members))
        return RunOutcome(training.params, training.state, finished=True)

    def close(self) -> None:
        self.endpoint.close()

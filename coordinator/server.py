"""The coordinator's event loop: receive and route messages, dispatch units, finish steps.

One thread, one ROUTER socket, every wait bounded.  The loop only moves messages,
times, metrics and logs; the rules live in pure rooms, and rooms beside the loop
carry out what they decide:
  - `Hub` (coordinator/hub.py, shared with the relay): the door, heartbeats,
    members lost, work given with its parameters once per step;
  - `Training.plan` / `Step` (a step's units and encoded tasks, and its state
    while the members compute); `plan_gives` (coordinator/dispatch.py, shared
    with the relay): which member gets which unit now, prefetch and backups;
  - `Verification` (coordinator/trust.py): which answers are believed, what the
    coordinator computes itself, who is banned; `Verdicts` (coordinator/verdicts.py)
    does it (a ban may rewind the run: the loop then drops the step under way);
  - `Liveness` (coordinator/liveness.py): units past their deadline taken back,
    members silent, exited or missing deadlines taken out, a run stuck (RunStuck);
  - `Training.gradient` and `apply` (add the units up the fixed tree, step the
    optimizer); `Checkpointer` (coordinator/checkpoint.py);
  - `Epochs` (coordinator/epochs.py): an epoch's test-set evaluation runs in a
    thread while the next epoch trains (the workers never wait for it); the epoch
    is recorded and logged when it is done, and before any other checkpoint or the end;
  - `Rewinds` (coordinator/rewinds.py) on `Provenance`'s rules (coordinator/provenance.py):
    when a member is convicted, back to before its first accepted answer, and the
    steps since replayed without it.
With `--gradient-delay 1` the next step's gradient is computed with the parameters
the run has now, so that step (`ahead`) is handed out as soon as the step under way
is: the workers compute it while the last results of this one travel and the
coordinator applies them.  Results for `ahead` are only placed when they arrive
(`early`) and judged once it is the step under way, so every rule above still sees
one step at a time.
The epoch's own checkpoint is written before it is closed (its sums, not yet its
record): resuming from it closes the epoch again, with the same result.
`StepTimes` (coordinator/phases.py) times each part of the loop for the per-step
breakdown (its `line()` ends a run's log; `lenet_coordinator_seconds_total` in /metrics).
Every node of the reduction tree is the same float32 addition wherever it is done,
so the parameters are bit-identical whatever the number, order or failures of workers.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq

from coordinator import checkpoint as ckpt
from coordinator import protocol as P
from coordinator import runs, trust
from coordinator.config import ServiceConfig
from coordinator.endpoint import RouterEndpoint
from coordinator.epochs import Epochs
from coordinator.hub import Hub, timed_probe
from coordinator.liveness import Liveness
from coordinator.membership import Member, Membership
from coordinator.metrics import Metrics
from coordinator.phases import PHASES, StepTimes
from coordinator.ratelimit import TokenBucket
from coordinator.refusals import Reason
from coordinator.rewinds import Rewinds
from coordinator.scheduler import DeadlinePolicy, RecentRate
from coordinator.step import Step
from coordinator.training import RunState, StepReport, Training, TrainingDiverged
from coordinator.verdicts import Verdicts
from lenet.bounds import implausible
from lenet.cli import counted
from lenet.params import Params
from lenet.status import UserError

log = logging.getLogger("coordinator")

StepObserver = Callable[[StepReport, int], None]  # after each step: its report and the number of workers


class RunStuck(Exception):
    """Every member's results are refused again and again and nothing is accepted: the run cannot progress."""


@dataclass
class RunOutcome:
    params: Params
    state: RunState
    finished: bool  # False: stopped early by a signal


class Coordinator:
    def __init__(self, training: Training, service: ServiceConfig, metrics: Metrics, context: zmq.Context):
        self.training, self.service, self.metrics = training, service, metrics
        identity = service.run or runs.identity(training.config, training.num_shards, training.data.checksums)
        self.checkpoints = ckpt.Checkpointer(service.checkpoint_dir, metrics, identity, key=service.checkpoint_key)
        self.step: Step | None = None
        self.ahead: Step | None = None  # with a gradient delay: the next step, out while `step` is open
        self.early: list[tuple[bytes, P.Result]] = []  # results for `ahead`, judged once it is under way
        self.early_due: list[tuple[bytes, P.Result]] = []  # those, now that it is
        self.deadlines = DeadlinePolicy(cap=service.task_timeout)
        self.turnaround = RecentRate()  # from giving a unit out to accepting it
        self.secret = secrets.token_bytes(16)  # picks the verified units; never leaves this process
        model = type(training.model)
        probe = timed_probe(model, self.deadlines)  # a flood of ghosts at step 0 would hold the cap
        # Units are cut to fit a message (coordinator/step.py), so no honest frame is larger than this.
        largest = min(training.config.batch_size, P.max_unit_samples(training.num_shards, model))
        self.endpoint = RouterEndpoint(context, service.bind, service.curve,
                                       P.max_result_bytes(largest, training.num_shards, model))
        self.hub = Hub(self.endpoint, Membership[bytes](service.heartbeat_timeout, max_members=service.max_workers),
                       probe, "coordinator", log, self._release, model, metrics=metrics,
                       registrations=TokenBucket(rate=service.registrations_per_second,
                                                 burst=service.registration_burst),
                       on_reject=lambda reason, identity, detail: self.liveness.refused(reason, identity, detail))
        self.members = self.hub.members
        self.liveness = Liveness(self.hub, self.deadlines, metrics, service.stuck_after)
        phase_seconds = {p: metrics.coordinator_seconds.labels(p) for p in PHASES}
        self.times = StepTimes(publish=lambda phase, seconds: phase_seconds[phase].inc(seconds))
        self.epochs = Epochs(training, metrics, self.times, workers=lambda: len(self.members))
        self.rewinds = Rewinds(training, self.epochs, self.checkpoints, metrics)
        self.verdicts = Verdicts(self.hub, metrics, self.times, self.turnaround, self.liveness, self.rewinds, model)
        self.last_step_end: float | None = None  # when the last step's update ended: the next one's time runs from then

    def restore(self, c: ckpt.Checkpoint) -> None:
        """Continue from a checkpoint of the same configuration and data."""
        ckpt.restore(self.training, c)
        self.training.untimed_samples = self.training.state.epoch_samples  # the epoch's clock starts now
        self.metrics.steps.inc(c.step)
        self.metrics.epoch.set(self.training.epoch)
        self.metrics.epoch_samples.set(self.training.state.epoch_samples)

    def save_checkpoint(self) -> Path | None:
        return self.checkpoints.save(self.training)

    def broadcast_shutdown(self, reason: str) -> None:
        self.hub.broadcast(P.encode(P.Shutdown(reason=reason)))

    def close(self, linger_ms: int = 0) -> None:
        self.epochs.close()
        self.endpoint.close(linger_ms)

    # ------------------------------------------------------------------ members

    def _release(self, identity: bytes) -> int:
        return sum(s.scheduler.release_worker(identity) for s in (self.step, self.ahead) if s is not None)

    def reload_keys(self) -> None:
        """Re-read the CURVE allow-list (SIGHUP): new keys may connect; revoked keys' workers are dropped."""
        if self.endpoint.auth is None:
            log.warning("SIGHUP: CURVE is off, no keys to reload")
            return
        try:
            added, removed = self.endpoint.auth.reload()
        except UserError as err:
            log.warning("SIGHUP: keeping the allow-list as it was: %s", err)
            return
        revoked = self.members.with_keys(removed)
        for identity in revoked:
            self.hub.remove(identity, "dropped: its key was revoked")
        log.info("SIGHUP: allow-list reloaded: %d keys added, %d revoked, %s dropped", len(added),
                 len(removed), counted(len(revoked), "worker"))

    def forget_exited(self, pids: list[int]) -> None:
        """Local worker processes seen to exit: drop them now rather than at the heartbeat timeout."""
        self.liveness.exited(pids)

    # ------------------------------------------------------------------ results

    def _handle(self, identity: bytes, member: Member, msg: P.Message, now: float) -> None:
        if isinstance(msg, P.Result):
            with self.times.timed("checks"):
                self._on_result(identity, member, msg)
        elif isinstance(msg, P.Capacity):
            if msg.capacity != member.capacity:  # rate-limited: a peer may send these as fast as it likes
                self.hub.warn_limited(f"capacity {member.label}", f"relay {member.label} now serves "
                                      f"{counted(msg.capacity, 'worker')} (was {member.capacity})")
            member.capacity = msg.capacity
        else:
            self.hub.reject(Reason.UNEXPECTED, identity, f"a worker may not send {msg.TYPE}")

    def _on_result(self, identity: bytes, member: Member, msg: P.Result) -> None:
        where = f"step {msg.step} shards {msg.first}-{msg.first + msg.shards - 1}"
        if self.ahead is not None and msg.step == self.ahead.plan.wire:
            self._hold_early(identity, msg, where)
            return
        if self.step is None:
            self.hub.reject(Reason.STALE_STEP, identity, f"result for {where} between steps")
            return
        step, sched = self.step, self.step.scheduler
        refusal = sched.check(identity, msg.step, msg.first, msg.shards, msg.count)
        if refusal is None:
            refusal = P.cover_refusal(msg, step.plan.num_shards)
        if refusal not in (None, Reason.LATE, Reason.DUPLICATE):
            self.hub.reject(refusal, identity, where)
            return
        unit = sched.index[msg.first]
        doubt = None  # the bound check also fails on NaN and infinity: which of the two, is asked only then
        if implausible(msg.grads, msg.factors, msg.count, step.bounds, step.model) \
                or step.model.outcome_problem(msg.losses, msg.correct):
            doubt = Reason.IMPLAUSIBLE if P.finite(msg) else Reason.NON_FINITE
        if refusal is not None:  # too late to use; it may still show that its sender computes
            self.hub.reject(refusal, identity, where)
            if doubt is None and sched.was_given(unit, identity):
                self._carry_out(step.verification.aside(identity, unit, msg, sched.results.get(unit)))
            return
        if doubt is not None:
            self.hub.reject(doubt, identity, f"{doubt.value} gradients for {where}")
        else:
            self.deadlines.record(msg.compute_seconds, msg.count)
            self.metrics.worker_compute.labels(member.label).inc(msg.compute_seconds)
            self.metrics.worker_shards.labels(member.label).inc(msg.shards)
            self.times.computed(msg.compute_seconds, msg.first)
        others = any(i != identity for i in self.members.eligible(time.monotonic()))
        self._carry_out(step.verification.answer(identity, unit, msg, doubt, where, others))

    def _hold_early(self, identity: bytes, msg: P.Result, where: str) -> None:
        """A result for the step handed out early: kept if it is one that step expects from `identity`
        (so at most one per unit given), judged when that step is under way (`_judge_early`)."""
        assert self.ahead is not None
        refusal = self.ahead.scheduler.check(identity, msg.step, msg.first, msg.shards, msg.count)
        if refusal is None and any(i == identity and m.first == msg.first for i, m in self.early):
            refusal = Reason.DUPLICATE
        if refusal is not None:
            self.hub.reject(refusal, identity, where)
        else:
            self.early.append((identity, msg))

    def _judge_early(self) -> None:
        """The results that came for the step now under way before it was, judged as if they came now."""
        due, self.early_due = self.early_due, []
        for identity, msg in due:
            member = self.members.get(identity)
            if member is None or self.step is None:
                continue  # gone since (its units went back to the queue), or rewound
            with self.times.timed("checks"):
                self._on_result(identity, member, msg)

    def _carry_out(self, decisions: list[trust.Decision]) -> None:
        """Do what the trust rules decided (coordinator/verdicts.py)."""
        assert self.step is not None
        if not self.verdicts.carry_out(self.step, decisions):
            # Rewound: the late answers of the steps out are refused as stale; they are done again without the liar.
            self.step = self.ahead = None
            self.times.dropped()
            self.early, self.early_due = [], []

    # ------------------------------------------------------------------ steps

    def _capacities(self, now: float) -> tuple[int, ...]:
        """What the next step's units are cut for: the capacity of every member that may get work."""
        return tuple(sorted((c for _, c in self.hub.workers_for_work(now)), reverse=True))

    def _dispatch(self, now: float) -> None:
        """Hand out units (coordinator/dispatch.py); a unit under check that nobody else may take is computed here."""
        step = self.step
        assert step is not None
        with self.times.timed("send"):
            batches = [step.batch] if self.ahead is None else [step.batch, self.ahead.batch]
            answered = Counter(identity for identity, _ in self.early)  # not busy with those any more
            self.metrics.backup_tasks.inc(self.hub.dispatch(batches, now, self.deadlines, self.turnaround,
                                                            answered=answered))
        sched = step.scheduler
        for unit in [u for u in sched.pending if u in step.verification.candidates]:
            if self.step is not step:
                return  # rewound
            if not [i for i, _ in self.hub.workers_for_work(now) if i != sched.excluded.get(unit)]:  # nobody else
                self._carry_out(step.verification.no_checker(unit))

    def _start_ahead(self, now: float) -> None:
        """With a gradient delay: the next step, handed out with the current parameters (its gradient's)
        while the step under way is still open; none after the last step."""
        training, step = self.training, self.step
        assert step is not None and training.pipelined
        if step.number + 1 >= training.total_steps:
            return
        with self.times.timed("plan"):
            plan = training.plan(step.number + 1, self._capacities(now))
        with self.times.timed("send"):  # a copy: the step under way's update changes them in place
            params = {k: v.copy() for k, v in training.params.items()}
            self.ahead = Step.start(plan, params, self.service.task_timeout, now, type(training.model),
                                    secret=self.secret, verify_fraction=self.service.verify_fraction, lag=1)

    def _finish_step(self) -> StepReport:
        step = self.step
        assert step is not None
        results = step.results()
        with self.times.timed("reduce"):
            grads = self.training.gradient(results, step.plan.units)
        with self.times.timed("optimizer"):
            report = self.training.apply(results, step.plan.units, grads)
        end = time.monotonic()
        # A step's time runs from the end of the update before (the first: from its start) to the end of its own.
        seconds = end - (step.started if self.last_step_end is None else self.last_step_end)
        self.last_step_end = end
        m = self.metrics
        m.samples.inc(report.samples)
        m.steps.inc()
        m.train_loss.set(report.loss)
        m.learning_rate.set(report.lr)
        m.epoch_samples.set(self.training.state.epoch_samples)
        m.step_duration.observe(seconds)
        self.step, self.ahead = self.ahead, None  # with a gradient delay, the next step is already out
        if self.step is not None:
            self.early_due, self.early = self.early, []
        self.rewinds.step_done(self.members.members)
        if report.epoch_ended:
            with self.times.timed("checkpoint"):
                self.save_checkpoint()  # before the epoch is closed: a resume from it closes it again
            self.epochs.end()
        elif self.service.checkpoint_every and report.step % self.service.checkpoint_every == 0:
            self.epochs.settle(wait=True)  # a checkpoint holds every finished epoch's record
            with self.times.timed("checkpoint"):
                self.save_checkpoint()
        elif self.checkpoints.retry_due():  # the last write failed: the newest checkpoint falls behind
            self.epochs.settle(wait=True)
            with self.times.timed("checkpoint"):
                self.save_checkpoint()
        self.times.step_done(seconds, regular=step.scheduler.handed_out == len(step.scheduler.units))
        return report

    # ------------------------------------------------------------------ the loop

    def _turn(self, wait: float, tick: Callable[[], None]) -> float:
        """Wait up to `wait` s for messages, handle them, check liveness, run `tick`; returns the time after."""
        with self.times.timed("idle"):
            ready = self.hub.poll(wait)
        self.times.receiving()
        if ready:
            with self.times.timed("receive"):
                self.hub.drain(self._handle, fatal=(TrainingDiverged,))
        now = time.monotonic()
        self.liveness.check(now, self.step.scheduler if self.step is not None else None)
        tick()
        return now

    def wait_for_workers(self, stop: Callable[[], bool], tick: Callable[[], None] = lambda: None) -> bool:
        """Block until min_workers have registered; False if stopped first."""
        announced = False
        while len(self.members) < self.service.min_workers:
            if stop():
                return False
            if not announced:
                log.info("waiting for %s at %s (have %d)", counted(self.service.min_workers, "worker"),
                         self.endpoint.address, len(self.members))
                announced = True
            self._turn(0.1, tick)
        return True

    def run(self, stop: Callable[[], bool], tick: Callable[[], None] = lambda: None,
            progress: StepObserver = lambda report, workers: None) -> RunOutcome:
        """Train until done or `stop()` is true; `tick` runs every loop turn, `progress` after each step.

        However it ends, the epoch under evaluation is recorded first: what is saved then holds it."""
        try:
            return self._train(stop, tick, progress)
        finally:
            self.epochs.settle(wait=True)

    def _train(self, stop: Callable[[], bool], tick: Callable[[], None], progress: StepObserver) -> RunOutcome:
        training = self.training
        self.metrics.epoch.set(training.epoch)
        if not training.done and not self.wait_for_workers(stop, tick):  # a finished run needs no workers
            return RunOutcome(training.params, training.state, finished=False)
        if not training.done:
            log.info("training: %d steps of batch %d in %d shards, %s%s", training.total_steps - training.state.step,
                     training.config.batch_size, training.num_shards, counted(len(self.members), "worker"),
                     ", each step's gradient one step behind (--gradient-delay 1)" if training.pipelined else "")
        self.epochs.start()
        if training.epoch_unclosed:  # resumed from the checkpoint of an epoch's last step
            self.epochs.end(resumed=True)
        paused = False  # no live worker: said once, until one registers
        while not training.done:
            if stop():
                return RunOutcome(training.params, training.state, finished=False)
            now = time.monotonic()
            if self.step is None:
                with self.times.timed("plan"):
                    plan = training.plan(training.state.step, self._capacities(now))
                with self.times.timed("send"):  # encodes the parameters
                    self.step = Step.start(plan, training.gradient_params, self.service.task_timeout, now,
                                           type(training.model), secret=self.secret,
                                           verify_fraction=self.service.verify_fraction)
            if self.ahead is None and training.pipelined:
                self._start_ahead(now)
            if self.early_due:
                self._judge_early()
                if self.step is None:
                    continue  # rewound: the replay starts with a new step
            self._dispatch(now)
            self.times.dispatched()
            if self.step is None:
                continue  # rewound: the replay starts with a new step
            with self.times.timed("plan"):  # the step after the last one out
                training.plan_ahead(self._capacities(now), (self.ahead or self.step).number + 1)
            alone = len(self.members.eligible(now)) == 1  # nobody could check its answers: the coordinator will
            for out in (self.step, self.ahead):  # while the workers compute, not once their results are in:
                if out is not None:
                    with self.times.timed("checks"):
                        out.prepare_checks()  # the bounds
                    if alone:
                        self.verdicts.prepare(out)  # the units chosen for verification, computed here
            deadline = self.step.scheduler.next_deadline()
            wait = 0.1 if deadline is None else min(0.1, max(0.0, deadline - now))
            if self.step.scheduler.complete:  # its results all came early: only a look at what has come since
                wait = 0.0
            now = self._turn(wait, tick)
            # No member, or only relays that have no worker right now (stops at the first with capacity).
            idle = not any(m.capacity for m in self.members.members.values())
            if idle and not paused:
                log.warning("no live workers%s: training paused until one registers",
                            f" ({len(self.members)} relays without workers)" if len(self.members) else "")
            paused = idle
            why = self.liveness.stuck()
            if why is not None:
                raise RunStuck(why)
            if self.step is not None and self.step.scheduler.complete:
                self.times.completed()
                progress(self._finish_step(), len(self.members))
                if self.step is not None:  # its work went out while the last one was open: nobody waited
                    self.times.dispatched(early=True)
            self.epochs.settle(wait=False)
        return RunOutcome(training.params, training.state, finished=True)

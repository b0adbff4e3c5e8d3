"""The coordinator's event loop: receive and route messages, dispatch units, finish steps.

One thread, one ROUTER socket (coordinator/endpoint.py), every wait bounded.  The
loop only moves messages and calls the pure parts:
  - `Membership` (who is alive, who may get work, who is banned),
  - `Training.plan` / `Step` (a step's units and encoded tasks, and its state while
    the workers compute: the `StepScheduler` keeps the first valid result of each
    unit, takes units back from dead, departed or overdue workers, and hands out
    backups to idle workers),
  - `Training.apply` (add the units up the fixed tree, step the optimizer) and
    `Training.end_epoch`,
  - `Checkpointer` (coordinator/checkpoint.py).
Every node of the reduction tree is the same float32 addition wherever it is done,
so the parameters are bit-identical whatever the number, order or failures of workers.

Peers are not trusted.  A message is handled in isolation: one that makes the
code fail is refused and counted, and training goes on.  A result must fit its
task in every field; gradients that are non-finite or larger than any honest
result (`lenet.bounds`) are settled by the coordinator computing the unit itself:
if its own answer is finite the peer lied and is banned for the run, and if not,
the model has diverged.  A fraction of units (`--verify-fraction`), chosen with a
per-run secret, is computed twice and compared bit for bit.  A worker joins only
if its conformance probe (`lenet.probe`) matches the coordinator's bit for bit.
"""

from __future__ import annotations

import logging
import secrets
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq

from coordinator import checkpoint as ckpt
from coordinator import keys
from coordinator import protocol as P
from coordinator.config import ServiceConfig
from coordinator.endpoint import RouterEndpoint
from coordinator.membership import Member, Membership, door_refusal
from coordinator.metrics import Metrics
from coordinator.ratelimit import RateLimitedLog, ReplyLimiter, TokenBucket
from coordinator.refusals import Reason
from coordinator.scheduler import DeadlinePolicy
from coordinator.step import Step, StepPlan, same_result
from coordinator.training import RunState, StepReport, Training, TrainingDiverged
from lenet.bounds import implausible, per_sample_bounds
from lenet.model import LeNet5
from lenet.params import Params
from lenet.probe import PROBE_SIZES, probe_digest
from lenet.shards import unit_sums
from lenet.status import UserError

log = logging.getLogger("coordinator")

PREFETCH = 2  # tasks a worker may hold at once: hides the round trip between units
RECEIVE_BUDGET = 256  # messages handled per loop turn, so a flood cannot starve the rest of the loop
# A unit out for this many times its expected time, and at least BACKUP_AFTER seconds,
# is also given to an idle worker.  Earlier, a backup would mostly keep that worker
# busy into the next step; later, a stalled worker costs more than it must.  The
# expected time is the larger of the workers' compute time and the turnaround the
# coordinator sees (compute, network and its own queue): a busy coordinator whose
# results wait in its queue must not take them for stragglers.
STRAGGLER, BACKUP_AFTER = 4.0, 0.5
LOSSES_LOGGED = 3  # workers found silent at once and logged one by one; the rest in one line

Progress = Callable[[StepReport, int], None]  # after each step: its report and the number of workers

@dataclass
class RunOutcome:
    params: Params
    state: RunState
    finished: bool  # False: stopped early by a signal


class Coordinator:
    def __init__(self, training: Training, service: ServiceConfig, metrics: Metrics, context: zmq.Context):
        self.training, self.service, self.metrics = training, service, metrics
        self.members = Membership[bytes](service.heartbeat_timeout, max_members=service.max_workers)
        self.checkpoints = ckpt.Checkpointer(service.checkpoint_dir, metrics, key=service.checkpoint_key)
        self.step: Step | None = None
        self.next_plan: StepPlan | None = None
        self.epoch_started = 0.0
        self.deadlines = DeadlinePolicy(cap=service.task_timeout)
        self.turnaround = DeadlinePolicy(cap=service.task_timeout)  # from giving a unit out to accepting it
        self.warnings = RateLimitedLog(interval=10.0)
        self.join_lines = TokenBucket(rate=1.0, burst=16)  # a line per join, unless they flood in
        self.joins_unlogged = 0
        self.replies = ReplyLimiter(interval=1.0)
        self.registrations = TokenBucket(rate=service.registrations_per_second, burst=service.registration_burst)
        self.secret = secrets.token_bytes(16)  # picks the verified units; never leaves this process
        started = time.perf_counter()
        self.probe = probe_digest()
        # Its own probe is the first measurement of the time per sample: deadlines follow it from
        # the first step, rather than starting at the --task-timeout cap (a flood of ghosts at step
        # 0 would hold it that long).
        self.deadlines.record(time.perf_counter() - started, sum(PROBE_SIZES))
        self.local_model = LeNet5()  # settles doubts by computing a unit here
        self.bounds: tuple[int, dict[str, float]] = (-1, {})  # (step, per-sample gradient bounds)
        self.endpoint = RouterEndpoint(context, service.bind, service.curve,
                                       P.max_result_bytes(training.config.batch_size, training.num_shards))

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

    def _refuse_peer(self, identity: bytes, code: str, message: str, now: float) -> None:
        """Tell a peer why it is refused, at most once a second per peer."""
        if self.replies.allow(identity, now):
            self._send(identity, P.encode(P.Error(code=code, message=message[: P.MAX_TEXT])))

    def _name(self, identity: bytes) -> str:
        member = self.members.get(identity)
        return member.label if member else identity.hex()[:8]

    def broadcast_shutdown(self, reason: str) -> None:
        frame = P.encode(P.Shutdown(reason=reason))
        for identity in list(self.members.members):
            self._send(identity, frame)

    # ------------------------------------------------------------------ membership

    def _register(self, identity: bytes, msg: P.Register, now: float, key: bytes | None) -> None:
        if identity not in self.members:
            refusal = self._admission(msg, now)
            if refusal is not None:
                reason, text = refusal
                self._reject(reason, identity, f"registration of {msg.name!r:.80}: {text}")
                if reason is not Reason.RATE_LIMITED:  # unanswered, it simply retries with back-off
                    self._refuse_peer(identity, reason.value, text, now)
                return
        if self.members.join(identity, msg.name, msg.pid, now, tag=identity.hex()[:6], key=key,
                             capacity=msg.capacity):
            if self.join_lines.take(now):
                more = f" (+{self.joins_unlogged} more joined since the last report)" if self.joins_unlogged else ""
                log.info("worker %s joined (%d live)%s", self._name(identity), len(self.members), more)
                self.joins_unlogged = 0
            else:
                self.joins_unlogged += 1
        self.metrics.worker_seen(self._name(identity))
        self.metrics.workers_alive.set(len(self.members))
        self._send(identity, P.encode(P.Heartbeat()))

    def _admission(self, msg: P.Register, now: float) -> tuple[Reason, str] | None:
        """Why a new peer may not join, or None."""
        refusal = door_refusal(msg.name, msg.probe, self.probe, "coordinator")
        if refusal is not None:
            if refusal[0] is Reason.NONCONFORMING:
                self.metrics.probe_failures.inc()
            return refusal
        if self.members.full:
            return Reason.FULL, f"the run has its maximum of {self.members.max_members} workers (--max-workers)"
        if not self.registrations.take(now):
            return Reason.RATE_LIMITED, "registrations arrive faster than they are admitted"
        return None

    def _remove_worker(self, identity: bytes, why: str, quiet: bool = False) -> int:
        member = self.members.remove(identity)
        return self._forget(identity, member, why, quiet)

    def _forget(self, identity: bytes, member: Member, why: str, quiet: bool = False) -> int:
        """Take back its units and its metric series; returns the shards re-dispatched."""
        released = self.step.scheduler.release_worker(identity) if self.step else 0
        self.metrics.redispatched.inc(released)
        self.metrics.forget_worker(member.label)
        self.metrics.workers_alive.set(len(self.members))
        if not quiet:
            log.info("worker %s %s (%d live; %d shards re-dispatched)", member.label, why, len(self.members),
                     released)
        return released

    def _ban(self, identity: bytes, why: str) -> None:
        """Out for the run; its results of this step are discarded and computed again."""
        member = self.members.ban(identity)
        self.metrics.workers_banned.inc()
        if member is None:
            return
        if self.step is not None:
            step = self.step
            mine = [u for u, who in step.produced.items() if who == identity]
            for unit in mine:
                del step.produced[unit]
            self.metrics.redispatched.inc(step.scheduler.discard(mine))
            for unit in [u for u, (who, _) in step.candidates.items() if who == identity]:
                del step.candidates[unit]
                step.scheduler.excluded.pop(unit, None)
        self._forget(identity, member, f"banned for the run: {why}")

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
            self._remove_worker(identity, "dropped: its key was revoked")
        log.info("SIGHUP: allow-list reloaded: %d keys added, %d revoked, %d workers dropped", len(added),
                 len(removed), len(revoked))

    def forget_exited(self, pids: list[int]) -> None:
        """Local worker processes seen to exit: drop them now rather than at the heartbeat timeout."""
        for identity in self.members.with_pids(pids):
            self.metrics.workers_lost.inc()
            self._remove_worker(identity, "exited")

    def _check_liveness(self, now: float) -> None:
        silent = self.members.silent(now)
        for i, (identity, seconds) in enumerate(silent):  # a line each for a few, then one for the rest
            self.metrics.workers_lost.inc()
            self._remove_worker(identity, f"lost: silent for {seconds:.1f} s", quiet=i >= LOSSES_LOGGED)
        if len(silent) > LOSSES_LOGGED:
            log.info("%d more workers lost: silent for over %.0f s (%d live)", len(silent) - LOSSES_LOGGED,
                     self.service.heartbeat_timeout, len(self.members))
        if self.step is None:
            return
        sched = self.step.scheduler
        for unit, identity in sched.expire(now):
            lo, hi = sched.units[unit]
            self.metrics.redispatched.inc(hi - lo)
            log.warning("shards %d-%d of step %d missed their %.0f s deadline on %s: re-dispatched", lo, hi - 1,
                        sched.step, self.deadlines.timeout(sched.samples[unit]), self._name(identity))
            if self.members.suspect(identity, now):
                self.metrics.workers_removed.inc()
                self._remove_worker(identity, f"removed: missed {self.members.max_misses} deadlines in a row "
                                              "without answering")

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
        self._warn_limited(reason.value, f"rejected message from {who}: {reason.value}: {detail[:200]!s}")

    def _drain(self) -> None:
        """Handle the messages already queued, at most RECEIVE_BUDGET of them, each in isolation."""
        for frames in self.endpoint.receive(RECEIVE_BUDGET):
            self.metrics.received_bytes.inc(sum(len(f.buffer) for f in frames))
            identity = frames[0].bytes if frames else None
            if len(frames) != 2 or identity is None:
                self._reject(Reason.MALFORMED, identity, f"{len(frames)} frames, expected 2")
                continue
            key = keys.sender_key(frames[1]) if self.endpoint.auth is not None else None
            try:
                self._handle(identity, frames[1].buffer, time.monotonic(), key)
            except TrainingDiverged:
                raise
            except Exception as err:  # a bug must not end the run: refuse the message, say where
                self._reject(Reason.INTERNAL_ERROR, identity, f"{type(err).__name__}: {err}")
                self._warn_limited("internal_error_traceback", "handling it failed:\n" + traceback.format_exc())

    def _handle(self, identity: bytes, frame: bytes | memoryview, now: float, key: bytes | None = None) -> None:
        """One message; `key` is the CURVE public key that sent it (None without CURVE)."""
        if identity in self.members.banned:
            self._reject(Reason.BANNED, identity, f"{len(frame)} bytes from a banned worker: dropped unread")
            self._refuse_peer(identity, "banned", "banned for this run: it returned results the coordinator's own "
                              "computation contradicts", now)
            return
        if self.endpoint.auth is not None:
            if not self.endpoint.auth.allows(key):
                self._reject(Reason.REVOKED_KEY, identity, "sent with a key no longer admitted: dropped unread")
                return
            member = self.members.get(identity)
            if member is not None and member.key != key:
                self._reject(Reason.KEY_MISMATCH, identity, "sent with another key than it registered with: "
                             "dropped unread")
                return
        if identity not in self.members and len(frame) > P.MAX_REGISTER_BYTES:
            self._reject(Reason.UNREGISTERED, identity, f"{len(frame)} bytes from an unknown peer: dropped unread")
            self._refuse_peer(identity, "unregistered", "register first", now)
            return
        try:
            msg = P.decode(frame)
        except P.ProtocolError as err:
            self._reject(err.reason, identity, err.detail)
            return
        if isinstance(msg, P.Register):
            self._register(identity, msg, now, key)
            return
        member = self.members.touch(identity, now)
        if member is None:
            self._reject(Reason.UNREGISTERED, identity, f"{msg.TYPE} from an unknown worker")
            if not isinstance(msg, P.Leave):
                self._refuse_peer(identity, "unregistered", "register first", now)
            return
        self.metrics.worker_seen(member.label)
        if isinstance(msg, P.Heartbeat):
            self._send(identity, P.encode(P.Heartbeat()))
        elif isinstance(msg, P.Leave):
            self._remove_worker(identity, "left")
        elif isinstance(msg, P.Result):
            self._handle_result(identity, member, msg)
        elif isinstance(msg, P.Capacity):
            if msg.capacity != member.capacity:
                # Rate-limited: a peer may send these as fast as it likes.
                held = self.warnings.admit(f"capacity {member.label}", time.monotonic())
                if held is not None:
                    log.info("relay %s now serves %d workers (was %d)%s", member.label, msg.capacity,
                             member.capacity, f" (+{held} changes since the last report)" if held else "")
            member.capacity = msg.capacity
        else:
            self._reject(Reason.UNEXPECTED, identity, f"a worker may not send {msg.TYPE}")

    def _handle_result(self, identity: bytes, member: Member, msg: P.Result) -> None:
        where = f"step {msg.step} shards {msg.first}-{msg.first + msg.shards - 1}"
        if self.step is None:
            self._reject(Reason.STALE_STEP, identity, f"result for {where} between steps")
            return
        step, sched = self.step, self.step.scheduler
        reason = sched.check(identity, msg.step, msg.first, msg.shards, msg.count)
        if reason is None and len(msg.grads["conv1.bias"]) != P.cover_size(msg, step.plan.num_shards):
            reason = Reason.BAD_ARRAY  # one sum per node of the unit's cover, no more, no fewer
        doubt = self._doubt(msg) if reason in (None, Reason.LATE, Reason.DUPLICATE, Reason.STALE_STEP) else None
        if reason is not None:
            if reason in (Reason.LATE, Reason.DUPLICATE, Reason.STALE_STEP) and doubt is None:
                self.members.vouch(identity)  # too late to use, but it shows the worker computes
            self._reject(reason, identity, where)
            return
        unit = sched.index[msg.first]
        if doubt is not None:
            self._settle(identity, unit, doubt, f"{doubt.value} gradients for {where}")
            return
        self.members.vouch(identity)
        self.deadlines.record(msg.compute_seconds, msg.count)
        self.metrics.worker_compute.labels(member.label).inc(msg.compute_seconds)
        self.metrics.worker_shards.labels(member.label).inc(msg.shards)
        if unit not in step.verify:
            self._accept(identity, unit, msg)
        elif unit not in step.candidates:
            step.candidates[unit] = (identity, msg)
            if len(self.members.eligible()) > 1:
                sched.second_opinion(msg.first, identity)  # another worker computes it too
            else:
                self._verify(unit, self._compute_locally(unit))
        else:
            self._verify(unit, msg, identity)

    def _doubt(self, msg: P.Result) -> Reason | None:
        """Why a result's gradients cannot be true (NaN/Inf, or larger than any honest result), or None."""
        if not P.finite(msg):
            return Reason.NON_FINITE
        if self.bounds[0] != msg.step:
            self.bounds = (msg.step, per_sample_bounds(self.training.params))
        return Reason.IMPLAUSIBLE if implausible(msg.grads, msg.factors, msg.count, self.bounds[1]) else None

    def _compute_locally(self, unit: int) -> P.Result:
        """The unit computed here, with the step's parameters: the reference every doubt is settled by."""
        assert self.step is not None
        task = self.step.task(unit)
        self.local_model.params = self.training.params
        start = time.perf_counter()
        sums = unit_sums(self.local_model, task.pixels, task.labels, task.sizes, task.first, task.num_shards)
        self.metrics.units_recomputed_locally.inc()
        return P.Result(step=task.step, first=task.first, shards=len(task.sizes), count=len(task.labels),
                        losses=sums.losses, correct=sums.correct,
                        compute_seconds=time.perf_counter() - start, grads=sums.grads, factors=sums.factors)

    def _settle(self, identity: bytes, unit: int, reason: Reason, detail: str) -> None:
        """A result that cannot be true: compute the unit here; a finite answer convicts the peer."""
        self._reject(reason, identity, detail)
        own = self._compute_locally(unit)
        if not P.finite(own):
            raise TrainingDiverged(f"step {own.step}: the coordinator's own computation of shards "
                                   f"{own.first}-{own.first + own.shards - 1} is not finite either")
        self._ban(identity, detail)
        if self.step is not None and unit not in self.step.scheduler.results:
            self._accept(None, unit, own)

    def _verify(self, unit: int, second: P.Result, second_by: bytes | None = None) -> None:
        """Compare a verified unit's two answers bit for bit; a third computation here settles a mismatch."""
        step = self.step
        assert step is not None
        first_by, first = step.candidates.pop(unit)
        self.metrics.units_verified.inc()
        if same_result(first, second):
            # Both agree.  The unit is held by the second answerer, or, when the coordinator computed the
            # second answer itself, still by the first: not a worker overtaken.
            self._accept(second_by if second_by is not None else first_by, unit, first)
            return
        self.metrics.verify_mismatches.inc()
        own = self._compute_locally(unit) if second_by is not None else second
        for who, answer in ((first_by, first), (second_by, second)):
            if who is not None and not same_result(answer, own):
                self._reject(Reason.MISMATCH, who, f"step {own.step} shards {own.first}-{own.first + own.shards - 1}"
                                                   " differ from the coordinator's own computation")
                self._ban(who, "its result of a verified unit differs from the coordinator's own computation")
        if unit not in step.scheduler.results:
            self._accept(None, unit, own)

    def _accept(self, identity: bytes | None, unit: int, result: P.Result) -> None:
        assert self.step is not None
        sched = self.step.scheduler
        since = sched.given_at(unit, identity)
        if since is not None:
            self.turnaround.record(time.monotonic() - since, sched.samples[unit])
        overtaken = sched.accept(result.first, result, by=identity)
        if identity is not None:
            self.step.produced[unit] = identity
        now = time.monotonic()
        for other in overtaken:  # it had the unit and did not answer first: no new work until it answers
            lo, hi = self.step.scheduler.units[unit]
            self._warn_limited(f"overtaken {self._name(other)}",
                               f"shards {lo}-{hi - 1} of step {result.step}: {self._name(other)} was overtaken by a "
                               "backup; no new work for it until it answers")
            self.members.suspect(other, now, missed=False)

    # ------------------------------------------------------------------ steps

    def _capacities(self) -> tuple[int, ...]:
        """What the next step's units are cut for: the capacity of every member that may get work."""
        caps = [self.members.members[i].capacity for i in self.members.eligible()]
        return tuple(sorted((c for c in caps if c > 0), reverse=True))

    def _plan_ahead(self) -> None:
        """Build the next step's tasks while the workers compute, off the step's critical path."""
        nxt = self.training.state.step + 1
        if nxt < self.training.total_steps and (self.next_plan is None or self.next_plan.step != nxt):
            self.next_plan = self.training.plan(nxt, self._capacities())

    def _start_step(self, now: float) -> None:
        step, capacities = self.training.state.step, self._capacities()
        plan = self.next_plan
        if plan is None or plan.step != step or plan.capacities != capacities:
            plan = self.training.plan(step, capacities)
        self.step = Step.start(plan, self.training.params, self.service.task_timeout, now,
                               secret=self.secret, verify_fraction=self.service.verify_fraction)

    def _give(self, identity: bytes, unit: int) -> None:
        step = self.step
        assert step is not None
        member = self.members.get(identity)
        assert member is not None
        if member.params_step != step.number:
            self._send(identity, step.params_frame)
            member.params_step = step.number
        self._send(identity, step.plan.tasks[unit])

    def _dispatch(self, now: float) -> None:
        """Hand out pending units round-robin, up to PREFETCH per member; then back up stragglers."""
        step = self.step
        assert step is not None
        sched = step.scheduler
        eligible = [i for i in self.members.eligible() if self.members.members[i].capacity > 0]
        largest = max(sched.samples)
        timeout = self.deadlines.timeout(largest)
        progress = True
        while sched.pending and progress:
            progress = False
            for identity in eligible:
                if not sched.pending or sched.holds(identity) >= PREFETCH:
                    continue
                unit = sched.next_unit(identity, now, timeout, capacity=self.members.members[identity].capacity)
                if unit is not None:
                    self._give(identity, unit)
                    progress = True
        for unit in [u for u in sched.pending if u in step.candidates]:
            if not [i for i in eligible if i != sched.excluded.get(unit)]:  # nobody else left to check it
                self._verify(unit, self._compute_locally(unit))
        expected = self.deadlines.expected(largest)
        if sched.pending or expected is None:
            return
        older_than = max(BACKUP_AFTER, STRAGGLER * max(expected, self.turnaround.expected(largest) or 0.0))
        if sched.oldest_age(now) <= older_than:
            return  # no straggler: the common case, decided without a look at every worker
        for identity in eligible:
            if sched.holds(identity):
                continue
            unit = sched.backup_unit(identity, now, timeout, older_than=older_than)
            if unit is not None:
                self.metrics.backup_tasks.inc()
                self._give(identity, unit)

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
            # No member, or only relays that have no worker right now (stops at the first with capacity).
            idle = not any(m.capacity for m in self.members.members.values())
            if idle and not paused:
                log.warning("no live workers%s: training paused until one registers",
                            f" ({len(self.members)} relays without workers)" if len(self.members) else "")
            paused = idle
            if self.step.scheduler.complete:
                progress(self._finish_step(now), len(self.members))
        return RunOutcome(training.params, training.state, finished=True)

    def close(self, linger_ms: int = 0) -> None:
        self.endpoint.close(linger_ms)

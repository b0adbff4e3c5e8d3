"""A relay: one member of the run that serves the workers of its host.

    python -m worker --relay --connect tcp://coordinator:5555 --listen tcp://127.0.0.1:5556
    python -m worker --connect tcp://127.0.0.1:5556          # each of the host's workers

Upstream the relay is a worker: it registers once its first worker has joined it
(with the conformance probe and a capacity, the number of its live workers,
announced again with `Capacity` when it changes), heartbeats, receives the parameters and tasks, and answers each task
with one Result.  Downstream it is a coordinator to its workers: they connect
and register exactly as they would to the coordinator, and the same probe admits
them (a relay does not serve other relays).  It forwards the parameters once per
step, cuts each task into one piece per worker (`work_units`), hands the pieces
out with the coordinator's own scheduler (a dead, departed or late worker's piece
goes to another), and gathers the pieces' results into the task's
(`lenet.shards.gather`): bit for bit what one worker would have sent.  So the
coordinator sends the parameters once per host and receives one result per task,
whatever the number of workers behind the relay.

The relay checks what its workers send only as the protocol does (shape, counts,
the unit's cover); the coordinator's bounds and verification judge the relay's
answer, and a relay whose worker lies is banned with its host.  If the relay
dies, the coordinator re-dispatches its units; its workers keep retrying it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from itertools import accumulate

import zmq

from coordinator import protocol as P
from coordinator.endpoint import RouterEndpoint
from coordinator.keys import CurveServer
from coordinator.membership import Membership, door_refusal
from coordinator.ratelimit import RateLimitedLog, ReplyLimiter
from coordinator.refusals import Reason
from coordinator.scheduler import DeadlinePolicy, StepScheduler, work_units
from lenet.probe import probe_digest
from lenet.reduction import cover
from lenet.shards import UnitSums, gather
from worker.client import WorkerConfig, open_dealer

log = logging.getLogger("relay")

MAX_WORKERS = P.MAX_CAPACITY
# A piece out for this many times its expected time (and at least BACKUP_AFTER s) is
# also given to an idle worker, as the coordinator backs up its stragglers.
STRAGGLER, BACKUP_AFTER = 4.0, 0.5


@dataclass(frozen=True)
class RelayConfig:
    upstream: WorkerConfig  # how to reach the coordinator, the relay's name and CURVE client keys
    listen: str = "tcp://127.0.0.1:5556"  # where the host's workers connect
    curve: CurveServer | None = None  # CURVE for the workers' side: the relay's keys, the workers admitted
    heartbeat_timeout: float = 10.0  # a worker silent this long is presumed dead
    task_timeout: float = 30.0  # cap on a piece's deadline


def relay_name() -> str:
    return f"relay-{socket.gethostname()}:{os.getpid()}"


@dataclass
class Unit:
    """A task from the coordinator under way: its pieces, and the scheduler that hands them out."""

    task: P.Task
    received: float
    pieces: list[bytes]  # encoded piece Tasks, in shard order
    scheduler: StepScheduler[bytes, UnitSums]


class Relay:
    def __init__(self, config: RelayConfig, context: zmq.Context | None = None):
        self.config = config
        self.context = context or zmq.Context.instance()
        self.identity = uuid.uuid4().bytes  # upstream, kept across reconnections
        self.probe = probe_digest()
        self.workers: Membership[bytes] = Membership(config.heartbeat_timeout, max_members=MAX_WORKERS)
        self.down = RouterEndpoint(self.context, config.listen, config.curve)
        self.up: zmq.Socket | None = None
        self.registered = False
        self.announced = -1  # the capacity the coordinator was last told
        self.params: tuple[int, bytes] = (-1, b"")  # (step, encoded Params) as received
        self.units: list[Unit] = []
        self.deadlines = DeadlinePolicy(cap=config.task_timeout)
        self.warnings = RateLimitedLog(interval=10.0)  # a flooding peer costs a line per 10 s
        self.replies = ReplyLimiter(interval=1.0)  # and a reply per second
        self.stopping = False

    @property
    def address(self) -> str:
        return self.down.address

    # ------------------------------------------------------------------ life cycle

    def run(self) -> str:
        """Relay until the coordinator shuts the run down or the relay is stopped; returns which."""
        linger_ms = 0
        cfg = self.config.upstream
        try:
            self.up = open_dealer(self.context, cfg, self.identity)
            now = time.monotonic()
            last_heard, last_beat, next_register, wait = now, 0.0, now, 0.25
            while not self.stopping:
                for sock in self._poll(0.1):
                    if sock is self.up:
                        outcome = self._from_coordinator(self._receive_up(), time.monotonic())
                        if outcome == "shutdown":
                            linger_ms = 1000  # for the Shutdown just forwarded to the workers
                            return outcome
                        if outcome is not None:
                            last_heard = time.monotonic()
                            if outcome == "refused":
                                next_register = last_heard + cfg.refused_backoff
                            elif outcome == "unregistered":
                                next_register = last_heard
                    else:
                        self._from_workers(time.monotonic())
                now = time.monotonic()
                self._check_workers(now)
                if not self.registered and now >= next_register and len(self.workers):  # a member once it serves
                    self._send_up(P.Register(name=cfg.name, pid=os.getpid(), probe=self.probe,
                                             capacity=len(self.workers)))
                    self.announced = len(self.workers)
                    next_register, wait = now + wait, min(2 * wait, cfg.max_backoff)
                elif self.registered:
                    wait = 0.25
                    if self.announced != len(self.workers):
                        self._send_up(P.Capacity(capacity=len(self.workers)))
                        self.announced = len(self.workers)
                    if now - last_beat >= cfg.heartbeat_interval:
                        self._send_up(P.Heartbeat())
                        last_beat = now
                    if now - last_heard > cfg.coordinator_timeout:
                        log.warning("coordinator silent for %.1f s: reconnecting", now - last_heard)
                        self._reconnect()
                        last_heard = next_register = now
                self._dispatch(now)
            self._send_up(P.Leave())
            return "stopped"
        finally:
            self.close(linger_ms)

    def close(self, linger_ms: int = 0) -> None:
        """Close both sides; `linger_ms`: how long a Shutdown forwarded to the workers may take to leave."""
        if self.up is not None:
            self.up.close(linger=1000)  # a second for a Leave queued behind a Result
            self.up = None
        self.down.close(linger_ms)

    def _reconnect(self) -> None:
        assert self.up is not None
        self.up.close(linger=0)
        self.up = open_dealer(self.context, self.config.upstream, self.identity)
        self.registered, self.units = False, []

    def _poll(self, timeout: float) -> list[zmq.Socket]:
        poller = zmq.Poller()
        poller.register(self.up, zmq.POLLIN)
        poller.register(self.down.sock, zmq.POLLIN)
        return [sock for sock, _ in poller.poll(int(timeout * 1000))]

    # ------------------------------------------------------------------ upstream

    def _send_up(self, msg: P.Message | bytes) -> None:
        assert self.up is not None
        try:
            self.up.send(msg if isinstance(msg, bytes) else P.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            log.warning("send queue to the coordinator is full: dropped a message")

    def _receive_up(self) -> tuple[P.Message | None, bytes]:
        assert self.up is not None
        frame = self.up.recv()
        try:
            return P.decode(frame), frame
        except P.ProtocolError as err:
            log.warning("ignored a bad message from the coordinator: %s", err)
            return None, frame

    def _from_coordinator(self, received: tuple[P.Message | None, bytes], now: float) -> str | None:
        """Handle one message from the coordinator; returns what it means for the connection, or None."""
        msg, frame = received
        if msg is None:
            return None
        if isinstance(msg, P.Heartbeat):
            if not self.registered:
                log.info("registered with %s as %s (%d workers)", self.config.upstream.connect,
                         self.config.upstream.name, len(self.workers))
            self.registered = True
        elif isinstance(msg, P.Params):
            self.params = (msg.step, frame)  # forwarded as it came: never re-encoded
            self.units = [u for u in self.units if u.task.step >= msg.step]
        elif isinstance(msg, P.Task):
            self._plan(msg, now)
        elif isinstance(msg, P.Shutdown):
            log.info("coordinator ended the run: %s; telling %d workers", msg.reason, len(self.workers))
            for identity in list(self.workers.members):
                self.down.send(identity, frame)
            return "shutdown"
        elif isinstance(msg, P.Error):
            self.registered = False
            if msg.code == "unregistered":
                log.info("coordinator says %s (%s): registering again", msg.code, msg.message)
                return "unregistered"
            log.error("the coordinator refused this relay (%s): %s; trying again in %.0f s", msg.code, msg.message,
                      self.config.upstream.refused_backoff)
            return "refused"
        return "heard"

    def _plan(self, task: P.Task, now: float) -> None:
        """Cut a task into one piece per live worker (at least one piece)."""
        if task.step != self.params[0]:
            log.warning("task for step %d without its parameters (have step %d): skipped", task.step, self.params[0])
            return
        if any(u.task.step == task.step and u.task.first == task.first for u in self.units):
            return  # given again after the coordinator's deadline: the pieces under way still answer it
        ranges, _ = work_units(len(task.sizes), [1] * max(1, len(self.workers)))
        starts = [0, *accumulate(task.sizes)]  # where each shard starts in the task's samples
        pieces, units, samples = [], [], []
        for a, b in ranges:
            lo, hi = starts[a], starts[b]
            pieces.append(P.encode(P.Task(step=task.step, first=task.first + a, num_shards=task.num_shards,
                                          sizes=task.sizes[a:b], pixels=task.pixels[lo:hi], labels=task.labels[lo:hi])))
            units.append((task.first + a, task.first + b))
            samples.append(hi - lo)
        scheduler: StepScheduler[bytes, UnitSums] = StepScheduler(task.step, units, samples, self.config.task_timeout)
        self.units.append(Unit(task, now, pieces, scheduler))

    # ------------------------------------------------------------------ downstream

    def _from_workers(self, now: float) -> None:
        for parts in self.down.receive(budget=256):
            if len(parts) != 2:
                continue
            identity, frame = parts[0].bytes, parts[1].buffer
            try:
                msg = P.decode(frame)
            except P.ProtocolError as err:
                held = self.warnings.admit(err.reason, now)
                if held is not None:
                    log.warning("ignored a bad message from a worker: %s%s", err,
                                f" (and {held} more since the last report)" if held else "")
                continue
            if isinstance(msg, P.Register):
                self._register(identity, msg, now)
                continue
            member = self.workers.touch(identity, now)
            if member is None:
                if not isinstance(msg, P.Leave):
                    self._refuse(identity, "unregistered", "register first")
            elif isinstance(msg, P.Heartbeat):
                self.down.send(identity, P.encode(P.Heartbeat()))
            elif isinstance(msg, P.Leave):
                self._drop(identity, "left")
            elif isinstance(msg, P.Result):
                self._result(identity, msg, now)

    def _refuse(self, identity: bytes, code: str, text: str) -> None:
        if self.replies.allow(identity, time.monotonic()):
            self.down.send(identity, P.encode(P.Error(code=code, message=text)))

    def _register(self, identity: bytes, msg: P.Register, now: float) -> None:
        if identity not in self.workers:
            refusal = door_refusal(msg.name, msg.probe, self.probe, "relay")
            if refusal is not None:
                return self._refuse(identity, refusal[0].value, refusal[1])
            if msg.capacity != 1:
                return self._refuse(identity, Reason.BAD_FIELD.value, "a relay serves workers, not other relays")
            if self.workers.full:
                return self._refuse(identity, Reason.FULL.value, f"the relay serves at most {MAX_WORKERS} workers")
        if self.workers.join(identity, msg.name, msg.pid, now, tag=identity.hex()[:6]):
            log.info("worker %s joined (%d workers)", msg.name, len(self.workers))
        self.down.send(identity, P.encode(P.Heartbeat()))

    def _drop(self, identity: bytes, why: str) -> None:
        member = self.workers.remove(identity)
        for unit in self.units:
            unit.scheduler.release_worker(identity)
        log.info("worker %s %s (%d workers)", member.label, why, len(self.workers))

    def _check_workers(self, now: float) -> None:
        for identity, silent in self.workers.silent(now):
            self._drop(identity, f"lost: silent for {silent:.0f} s")
        for unit in self.units:
            for _, identity in unit.scheduler.expire(now):
                if identity in self.workers:
                    self.workers.suspect(identity, now)

    def _result(self, identity: bytes, msg: P.Result, now: float) -> None:
        unit = next((u for u in self.units if u.task.step == msg.step and msg.first in u.scheduler.index), None)
        reason = None if unit is None else unit.scheduler.check(identity, msg.step, msg.first, msg.shards, msg.count)
        if unit is None or reason is not None:
            # Too late to use (its task is over, or a backup answered first), but it shows the worker
            # computes: it may have pieces again, as the coordinator treats its members.
            if reason in (Reason.LATE, Reason.DUPLICATE) or (unit is None and msg.step <= self.params[0]):
                self.workers.vouch(identity)
            return
        nodes = cover(msg.first, msg.first + msg.shards, unit.task.num_shards)
        expected = len(nodes)
        if len(msg.grads["conv1.bias"]) != expected:
            held = self.warnings.admit(("nodes", identity), now)
            if held is not None:
                log.warning("worker %s sent %d node sums for %d nodes: ignored%s", self.workers.get(identity).label,
                            len(msg.grads["conv1.bias"]), expected,
                            f" (and {held} more since the last report)" if held else "")
            return
        self.workers.vouch(identity)
        self.deadlines.record(msg.compute_seconds, msg.count)
        overtaken = unit.scheduler.accept(msg.first, UnitSums(msg.losses, msg.correct, nodes, msg.grads,
                                                              msg.factors), by=identity)
        for other in overtaken:  # it had the piece and did not answer first: no new pieces until it answers
            self.workers.suspect(other, now, missed=False)
        if unit.scheduler.complete:
            self.units.remove(unit)
            parts = [unit.scheduler.results[i] for i in range(len(unit.scheduler.units))]
            whole = gather(parts, unit.task.num_shards)
            task = unit.task
            self._send_up(P.Result(step=task.step, first=task.first, shards=len(task.sizes), count=len(task.labels),
                                   losses=whole.losses, correct=whole.correct,
                                   compute_seconds=now - unit.received, grads=whole.grads, factors=whole.factors))

    def _dispatch(self, now: float) -> None:
        """Pieces to idle workers, oldest task first; then idle workers back up stragglers."""
        idle = [i for i in self.workers.eligible() if not any(u.scheduler.holds(i) for u in self.units)]
        for unit in self.units:
            sched = unit.scheduler
            timeout = self.deadlines.timeout(max(sched.samples))
            while idle and sched.pending:
                piece = sched.next_unit(idle[0], now, timeout)
                if piece is None:
                    break
                self._give(idle.pop(0), unit, piece)
        for unit in self.units:
            sched = unit.scheduler
            expected = self.deadlines.expected(max(sched.samples))
            if sched.pending or expected is None:
                continue
            for identity in list(idle):
                piece = sched.backup_unit(identity, now, self.deadlines.timeout(max(sched.samples)),
                                          older_than=max(BACKUP_AFTER, STRAGGLER * expected))
                if piece is not None:
                    idle.remove(identity)
                    self._give(identity, unit, piece)

    def _give(self, identity: bytes, unit: Unit, piece: int) -> None:
        member = self.workers.get(identity)
        assert member is not None
        if member.params_step != unit.task.step:
            self.down.send(identity, self.params[1])
            member.params_step = unit.task.step
        self.down.send(identity, unit.pieces[piece])


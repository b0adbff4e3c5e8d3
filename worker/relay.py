"""A relay: one member of the run that serves the workers of its host.

    python -m worker --relay --connect tcp://coordinator:5555 --listen tcp://127.0.0.1:5556
    python -m worker --connect tcp://127.0.0.1:5556          # each of the host's workers

Upstream the relay is a worker: it registers once its first worker has joined it
(with the conformance probe and a capacity, the number of its workers that compute:
at most as many as their machine's cores, `Hub.computing`; announced again with `Capacity`
when it changes), heartbeats, receives the parameters and tasks, and answers each task
with one Result.  Downstream it is a coordinator to its workers: they connect
and register exactly as they would to the coordinator, and the same probe admits
them (a relay does not serve other relays).  It forwards the parameters once per
step, cuts each task into one piece per computing worker (`work_units`), hands the pieces
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

import zmq

from coordinator import hub
from coordinator import protocol as P
from coordinator.keys import CurveServer
from lenet.cli import counted
from lenet.models import get_model
from lenet.reduction import cover
from lenet.shards import UnitSums, gather
from worker.client import WorkerConfig, open_dealer

log = logging.getLogger("relay")

MAX_WORKERS = P.MAX_CAPACITY


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
    """A task from the coordinator under way: its pieces, handed out and judged as the coordinator's units are."""

    task: P.Task
    received: float
    pieces: hub.Batch


class Relay:
    def __init__(self, config: RelayConfig, context: zmq.Context | None = None):
        self.config = config
        self.context = context or zmq.Context.instance()
        self.identity = uuid.uuid4().bytes  # upstream; a new one per connection (worker/client.py `_register`)
        self.model = get_model(config.upstream.model)
        self.deadlines = hub.DeadlinePolicy(cap=config.task_timeout)
        # As the coordinator's: ghosts' pieces are taken back after a deadline that follows this from the first
        # step, not after the cap (by then the coordinator would have taken the relay's unit back too).
        self.probe = hub.timed_probe(self.model, self.deadlines)
        self.down = hub.Hub(hub.RouterEndpoint(self.context, config.listen, config.curve),
                            hub.Membership(config.heartbeat_timeout, max_members=MAX_WORKERS), self.probe, "relay",
                            log, self._release, self.model, max_capacity=1, count_word="workers")
        self.workers = self.down.members
        self.up: zmq.Socket | None = None
        self.registered = False
        self.announced = -1  # the capacity the coordinator was last told
        self.params: tuple[int, bytes] = (-1, b"")  # (step, encoded Params) as received
        self.units: list[Unit] = []
        self.stopping = False

    @property
    def address(self) -> str:
        return self.down.endpoint.address

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
                        self.down.drain(self._from_worker)
                now = time.monotonic()
                self._check_workers(now)
                if not self.registered and now >= next_register and len(self.workers):  # a member once it serves
                    self.announced = self.down.computing()
                    self._send_up(P.Register(name=cfg.name, pid=os.getpid(), probe=self.probe,
                                             capacity=self.announced, model=self.model.name))
                    next_register, wait = now + wait, min(2 * wait, cfg.max_backoff)
                elif self.registered:
                    wait = 0.25
                    computing = self.down.computing()
                    if self.announced != computing:
                        self.announced = computing
                        self._send_up(P.Capacity(capacity=computing))
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
        self.down.endpoint.close(linger_ms)

    def _reconnect(self) -> None:
        assert self.up is not None
        self.up.close(linger=0)
        self.identity = uuid.uuid4().bytes  # the coordinator may still hold the old one, and would not hear it
        self.up = open_dealer(self.context, self.config.upstream, self.identity)
        self.registered, self.units = False, []

    def _release(self, identity: bytes) -> int:
        return sum(u.pieces.scheduler.release_worker(identity) for u in self.units)

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
            return P.decode(frame, self.model), frame
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
                log.info("registered with %s as %s (%s)", self.config.upstream.connect,
                         self.config.upstream.name, counted(len(self.workers), "worker"))
            self.registered = True
        elif isinstance(msg, P.Params):
            self.params = (msg.step, frame)  # forwarded as it came: never re-encoded
            self.units = [u for u in self.units if u.task.step >= msg.step - msg.lag]  # the others are over
        elif isinstance(msg, P.Task):
            self._plan(msg, now)
        elif isinstance(msg, P.Shutdown):
            log.info("coordinator ended the run: %s; telling %s", msg.reason, counted(len(self.workers), "worker"))
            self.down.broadcast(frame)
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
        """Cut a task into one piece per worker that computes (at least one piece)."""
        if task.step != self.params[0]:
            log.warning("task for step %d without its parameters (have step %d): skipped", task.step, self.params[0])
            return
        if any(u.task.step == task.step and u.task.first == task.first for u in self.units):
            return  # given again after the coordinator's deadline: the pieces under way still answer it
        self.units.append(Unit(task, now, hub.cut(task, self.down.computing(), self.params[1], self.config.task_timeout)))

    # ------------------------------------------------------------------ downstream

    def _from_worker(self, identity: bytes, member: hub.Member, msg: P.Message, now: float) -> None:
        if isinstance(msg, P.Result):
            self._result(identity, msg, now)
        else:
            self.down.reject(hub.Reason.UNEXPECTED, identity, f"a worker may not send {msg.TYPE}")

    def _check_workers(self, now: float) -> None:
        self.down.drop_silent(now)
        for unit in self.units:
            for _, identity in unit.pieces.scheduler.expire(now):
                if identity in self.workers:
                    self.workers.suspect(identity, now)

    def _result(self, identity: bytes, msg: P.Result, now: float) -> None:
        """A worker's piece: checked as the coordinator checks a unit, gathered into the task's result when complete."""
        unit = next((u for u in self.units if u.task.step == msg.step and msg.first in u.pieces.scheduler.index), None)
        where = f"step {msg.step} shards {msg.first}-{msg.first + msg.shards - 1}"
        if unit is None:
            self.down.reject(hub.Reason.STALE_STEP, identity, f"no task under way for {where}")
            return
        sched, pieces = unit.pieces.scheduler, unit.pieces
        refusal = sched.check(identity, msg.step, msg.first, msg.shards, msg.count)
        if refusal is None:
            refusal = P.cover_refusal(msg, unit.task.num_shards)
        piece = sched.index[msg.first] if refusal not in (hub.Reason.UNKNOWN_SHARD,) else None
        if refusal is not None:
            self.down.reject(refusal, identity, where)
            if refusal in (hub.Reason.LATE, hub.Reason.DUPLICATE) and piece is not None \
                    and sched.was_given(piece, identity):
                accepted = sched.results.get(piece)
                self._trust(pieces.verification.aside(identity, piece, msg, accepted.result if accepted else None))
            return
        self.deadlines.record(msg.compute_seconds, msg.count)
        decisions = pieces.verification.answer(identity, piece, msg, None, where, checker_available=False)
        self._trust(decisions)
        nodes = cover(msg.first, msg.first + msg.shards, unit.task.num_shards)
        overtaken = sched.accept(msg.first, Piece(msg, UnitSums(msg.losses, msg.correct, nodes, msg.grads,
                                                                  msg.factors)), by=identity)
        for other in overtaken:  # it had the piece and did not answer first: no new pieces until it answers
            self.workers.suspect(other, now, missed=False)
        if sched.complete:
            self.units.remove(unit)
            whole = gather([sched.results[i].sums for i in range(len(sched.units))], unit.task.num_shards)
            self._send_up(P.result_of(unit.task.step, whole, now - unit.received))

    def _trust(self, decisions: list) -> None:
        """A relay verifies nothing itself (the coordinator judges its answer): only who earned trust matters."""
        for d in decisions:
            if isinstance(d, hub.Vouch):
                self.workers.vouch(d.who)

    def _dispatch(self, now: float) -> None:
        """Pieces to idle workers, oldest task first; then idle workers back up stragglers."""
        self.down.dispatch([u.pieces for u in self.units], now, self.deadlines, prefetch=1)


@dataclass(frozen=True)
class Piece:
    """A worker's accepted answer to a piece: as received (to compare late answers with), and as sums."""

    result: P.Result
    sums: UnitSums

"""The worker's life: register, keep the coordinator informed, compute shard gradients.

The worker holds no data and no training state: each step the coordinator sends the
parameters once, then tasks carrying raw uint8 pixels and labels of a run of
shards; the worker computes the shards' summed gradients, adds them up in the
fixed tree (`lenet.shards.unit_sums`), and answers with one result.  If the coordinator
is unreachable or falls silent, the worker re-registers with capped exponential
back-off, so it survives coordinator restarts without help.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field

import zmq

from coordinator import protocol as P
from coordinator.keys import CurveClient, secure_client
from lenet.models import DEFAULT_MODEL, get_model
from lenet.probe import probe_digest
from lenet.runtime import host_id, usable_cores
from lenet.shards import unit_sums

log = logging.getLogger("worker")


@dataclass(frozen=True)
class WorkerConfig:
    connect: str
    name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    heartbeat_interval: float = 1.0
    coordinator_timeout: float = 10.0  # silence after which the coordinator is presumed gone
    max_backoff: float = 5.0
    refused_backoff: float = 60.0  # after the coordinator refused the registration itself
    give_up_after: float | None = None  # seconds without an answer after which the worker ends; None: never
    waiting_note_every: float = 60.0  # while no coordinator answers, a line this often says why it waits
    curve: CurveClient | None = None  # CURVE keys, when the coordinator requires them
    model: str = DEFAULT_MODEL  # the model it computes: the coordinator admits only the run's (lenet.models)
    # How many workers of this machine compute at once (the coordinator lets the others stand by):
    # by default the cores this process may run on (lenet.runtime.usable_cores).
    cores: int = field(default_factory=usable_cores)
    host: str = field(default_factory=host_id)  # this machine, as the coordinator tells machines apart

    def __post_init__(self) -> None:
        if not self.connect.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError(f"--connect must be a ZeroMQ endpoint such as tcp://host:5555, got {self.connect!r}")
        for name in ("heartbeat_interval", "coordinator_timeout", "max_backoff", "refused_backoff",
                     "waiting_note_every", "give_up_after"):
            if name == "give_up_after" and self.give_up_after is None:
                continue
            if not 0 < getattr(self, name) < float("inf"):
                raise ValueError(f"{name.replace('_', ' ')} must be > 0, got {getattr(self, name)}")
        get_model(self.model)
        if not 1 <= self.cores <= P.MAX_CAPACITY:
            raise ValueError(f"--cores must be 1 to {P.MAX_CAPACITY}, got {self.cores}")


def _resolution_problem(endpoint: str) -> str:
    """' (cannot resolve HOST)' when a tcp endpoint's host has no address (yet), else ''."""
    if not endpoint.startswith("tcp://"):
        return ""
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    try:
        socket.getaddrinfo(host, None)
    except OSError:
        return f" (cannot resolve {host})"
    return ""


def open_dealer(context: zmq.Context, config: WorkerConfig, identity: bytes) -> zmq.Socket:
    """The socket to the coordinator (or relay): routing id `identity`, CURVE if configured, bounded frames."""
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, identity)
    sock.setsockopt(zmq.MAXMSGSIZE, P.MAX_MESSAGE_BYTES)
    if config.curve is not None:
        secure_client(sock, config.curve)
    sock.connect(config.connect)
    return sock


class Worker:
    def __init__(self, config: WorkerConfig, context: zmq.Context | None = None, metrics=None):
        self.config = config
        self.context = context or zmq.Context.instance()
        self.identity = uuid.uuid4().bytes  # kept while the connection is: a re-registration is the same member
        self.model = get_model(config.model)()
        self.probe = probe_digest(type(self.model))  # what the coordinator checks at the door: computed once
        self.params_step = -1
        self.stopping = False
        self.metrics = metrics  # optional worker.metrics.WorkerMetrics
        self.sock: zmq.Socket | None = None
        self.gave_up = False  # no coordinator answered for `give_up_after` seconds

    # ------------------------------------------------------------------ socket

    def _open(self) -> zmq.Socket:
        return open_dealer(self.context, self.config, self.identity)

    def _close(self, linger_ms: int = 0) -> None:
        if self.sock is not None:
            self.sock.close(linger=linger_ms)
            self.sock = None

    def _send(self, msg: P.Message) -> None:
        assert self.sock is not None
        try:
            self.sock.send(P.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            log.warning("send queue to the coordinator is full: dropped a %s message", msg.TYPE)

    def _recv(self, timeout: float) -> P.Message | None:
        assert self.sock is not None
        if not self.sock.poll(int(timeout * 1000)):
            return None
        frame = self.sock.recv()
        try:
            return P.decode(frame, type(self.model))
        except P.ProtocolError as err:
            if err.reason is P.Reason.VERSION:  # its Error saying so is in its own version: this is all we can read
                log.error("the coordinator speaks another protocol version (%s): run the same release of lenet5 "
                          "on both sides", err.detail)
            else:
                log.warning("ignored a bad message from the coordinator: %s", err)
            return None

    # ------------------------------------------------------------------ life cycle

    def run(self) -> str:
        """Work until shut down, stopped or given up; returns why: 'shutdown', 'stopped' or 'gave up'."""
        try:
            outcome = "reconnect"
            while not self.stopping:
                if not self._register(fresh_connection=outcome == "reconnect"):
                    break
                outcome = self._serve()
                if outcome in ("shutdown", "stopped"):
                    return outcome
            return "gave up" if self.gave_up else "stopped"
        finally:
            self._close()

    def _register(self, fresh_connection: bool) -> bool:
        """Register until the coordinator acknowledges; False if stopped or given up meanwhile.

        The connection is opened anew only at start and after the coordinator fell
        silent (the old one may be dead).  Otherwise it is kept: ZeroMQ reconnects it
        by itself.  A new connection gets a new routing id, so the worker joins as a
        new member: the coordinator ignores a connection that claims a routing id it
        still holds (it allows no takeover), and it may still hold the old one, so
        the same id could go unheard for good (libzmq issues 2019, 2892).
        """
        wait, attempt = 0.25, 0
        started = next_note = time.monotonic()
        next_note += self.config.waiting_note_every
        if fresh_connection or self.sock is None:
            self._close()
            self.identity = uuid.uuid4().bytes
            self.sock = self._open()
        while not self.stopping:
            self._send(P.Register(name=self.config.name, pid=os.getpid(), probe=self.probe, capacity=1,
                                  model=self.model.name, host=self.config.host, cores=self.config.cores))
            deadline = time.monotonic() + wait
            while not self.stopping and time.monotonic() < deadline:
                msg = self._recv(min(0.2, max(0.0, deadline - time.monotonic())))
                if isinstance(msg, P.Heartbeat):
                    log.info("registered with %s as %s", self.config.connect, self.config.name)
                    return True
                if isinstance(msg, P.Shutdown):
                    self.stopping = True
                    return False
                if isinstance(msg, P.Error) and msg.code != "unregistered":
                    # Refused for what we are, not for a passing state: retrying soon would only
                    # be refused again, and a restart policy would turn that into a crash loop.
                    log.error("the coordinator refused this worker (%s): %s; trying again in %.0f s", msg.code,
                              msg.message, self.config.refused_backoff)
                    deadline = time.monotonic() + self.config.refused_backoff
                    started = time.monotonic()  # a coordinator is there: not one to give up on
            attempt += 1
            if attempt == 1:
                log.info("coordinator at %s not answering%s; retrying with back-off up to %.0f s",
                         self.config.connect, _resolution_problem(self.config.connect), self.config.max_backoff)
            waited = time.monotonic() - started
            if self.config.give_up_after is not None and waited >= self.config.give_up_after:
                log.info("no coordinator at %s for %.0f s: giving up (--give-up-after %.0f); the run it served has "
                         "ended or its coordinator is down for good", self.config.connect, waited,
                         self.config.give_up_after)
                self.gave_up = True
                return False
            if time.monotonic() >= next_note:
                next_note += self.config.waiting_note_every
                log.info("still no coordinator at %s after %.0f s%s: waiting for one to start (a restarting "
                         "coordinator takes the worker back); %s", self.config.connect, waited,
                         _resolution_problem(self.config.connect),
                         "stop this worker if the run is over" if self.config.give_up_after is None else
                         f"giving up after {self.config.give_up_after:.0f} s")
            wait = min(wait * 2, self.config.max_backoff)
        return False

    def _serve(self) -> str:
        cfg = self.config
        last_heard = last_beat = time.monotonic()
        while True:
            if self.stopping:
                self._send(P.Leave())
                # Up to a second for the Leave to get out: it may be queued behind a Result.
                self._close(linger_ms=1000)
                log.info("leaving: told the coordinator")
                return "stopped"
            msg = self._recv(min(0.2, cfg.heartbeat_interval))
            now = time.monotonic()
            if msg is not None:
                last_heard = now
                if isinstance(msg, P.Params):
                    self.model.params = dict(msg.params)
                    self.params_step = msg.step
                    if self.metrics is not None:
                        self.metrics.params_received()
                elif isinstance(msg, P.Task):
                    self._compute(msg)
                elif isinstance(msg, P.Shutdown):
                    log.info("coordinator ended the run: %s", msg.reason)
                    return "shutdown"
                elif isinstance(msg, P.Error):
                    log.info("coordinator says %s (%s): registering again", msg.code, msg.message)
                    return "reregister"
            if now - last_beat >= cfg.heartbeat_interval:
                self._send(P.Heartbeat())
                last_beat = now
            if now - last_heard > cfg.coordinator_timeout:
                log.warning("coordinator silent for %.1f s: reconnecting", now - last_heard)
                self.params_step = -1
                return "reconnect"

    def _compute(self, task: P.Task) -> None:
        if task.step != self.params_step:
            log.warning("task for step %d without its parameters (have step %d): skipped",
                        task.step, self.params_step)
            return
        start = time.perf_counter()
        sums = unit_sums(self.model, task.pixels, task.labels, task.sizes, task.first, task.num_shards)
        seconds = time.perf_counter() - start
        self._send(P.result_of(task.step, sums, seconds))
        if self.metrics is not None:
            self.metrics.task(len(task.sizes), len(task.labels), seconds)

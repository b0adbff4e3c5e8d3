"""Simulated workers for bench/bench_scale.py: hundreds of protocol-exact workers in one process, cheap compute.

    python bench/sim_workers.py --connect tcp://127.0.0.1:5555 --workers 512 [--name sim0] [--seconds 170]

Each simulated worker is a DEALER socket of its own (its own routing id and TCP
connection) that speaks the protocol as worker/client.py does: Register(name, pid,
probe, capacity=1), sent again with capped back-off until acknowledged; a
Heartbeat every second; Params and Task received and decoded by
coordinator.protocol.decode; a Result for every task whose parameters it holds.
Only the compute is simulated.  The first task of a shape (first shard, shard
sizes, shard count) is computed for real (lenet.shards.unit_sums) with the first
parameters the process was sent, and its Result encoded once; every later task
of that shape is answered with that frame, patched with the task's step and the
compute time measured then (`ResultTemplate`: the bytes are those of
protocol.encode).  The answers are valid and plausible, just not of the current
parameters: a benchmark's training numbers mean nothing.

All sockets share one thread and one zmq.Poller.  The process ends when every
simulated worker was told Shutdown, when the coordinator has been silent for
`--silence` seconds, after `--seconds` in all, or on SIGTERM/SIGINT (then each
registered simulated worker sends Leave, as a worker does).  Last, it prints one
JSON line of counts on stdout.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lenet.runtime import pin_blas_threads  # noqa: E402

pin_blas_threads()  # before NumPy loads: the cache is filled with the workers' own arithmetic

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import msgpack  # noqa: E402
import zmq  # noqa: E402

from coordinator import protocol as P  # noqa: E402
from lenet.architecture import Model  # noqa: E402
from lenet.models import DEFAULT_MODEL, MODELS, get_model  # noqa: E402
from lenet.probe import probe_digest  # noqa: E402
from lenet.shards import unit_sums  # noqa: E402

log = logging.getLogger("sim_workers")

HEARTBEAT = 1.0  # seconds, as worker.client's default
MAX_BACKOFF = 1.0  # registration retries: shorter than the client's 5 s, so a run starts quickly
REFUSED_BACKOFF = 60.0  # as the client, after the coordinator refused the registration itself
RECEIVE_BUDGET = 64  # frames read from one socket per turn, so one busy socket cannot starve the rest
TIMER_PERIOD = 0.05  # seconds between scans for due heartbeats and registrations
SOCKETS_PER_WORKER = 2  # file descriptors: its TCP connection and its ZeroMQ mailbox


def raise_fd_limit(needed: int) -> int:
    """Raise this process's open-file limit towards `needed` (at most to the hard limit); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


class ResultTemplate:
    """A Result encoded once; `frame` patches in a step and a compute time, leaving every other byte as it was.

    A msgpack map is its header followed by its keys and values, so the frame is
    the packed pieces of `protocol.encode`'s own output, in its order, with only
    the two values that differ between steps packed anew.
    """

    PATCHED = ("step", "compute_seconds")

    def __init__(self, result: P.Result):
        body = msgpack.unpackb(P.encode(result), raw=False)  # protocol.encode decides the order and the arrays
        self.pieces: list[bytes | str] = [msgpack.Packer().pack_map_header(len(body))]
        for key, value in body.items():
            self.pieces.append(_pack(key))
            self.pieces.append(key if key in self.PATCHED else _pack(value))

    def frame(self, step: int, compute_seconds: float) -> bytes:
        values = {"step": step, "compute_seconds": compute_seconds}
        return b"".join(p if isinstance(p, bytes) else _pack(values[p]) for p in self.pieces)


class ResultCache:
    """Encoded Results by unit shape, computed with the first parameters this process was sent."""

    def __init__(self, model: type[Model]) -> None:
        self.model_class = model
        self.model: Model | None = None
        self.templates: dict[tuple[int, tuple[int, ...], int], tuple[ResultTemplate, float]] = {}
        self.compute_seconds = 0.0  # spent filling it: the simulator's only real compute

    def params(self, msg: P.Params) -> None:
        if self.model is None:
            self.model = self.model_class()
            self.model.params = dict(msg.params)

    def frame(self, task: P.Task) -> bytes:
        key = (task.first, tuple(task.sizes), task.num_shards)
        if key not in self.templates:
            assert self.model is not None  # a task is answered only after its step's Params
            start = time.perf_counter()
            sums = unit_sums(self.model, task.pixels, task.labels, task.sizes, task.first, task.num_shards)
            seconds = time.perf_counter() - start
            self.compute_seconds += seconds
            result = P.result_of(task.step, sums, seconds)
            self.templates[key] = (ResultTemplate(result), seconds)
        template, seconds = self.templates[key]
        return template.frame(task.step, seconds)


@dataclass
class SimWorker:
    """One simulated worker: its socket and where its conversation stands."""

    sock: zmq.Socket
    name: str
    next_register: float = 0.0  # when to send Register (again), while not registered
    backoff: float = 0.25
    registered: bool = False
    next_beat: float = 0.0
    params_step: int = -1
    tasks: int = 0
    last_task_step: int = -1
    results: int = 0
    dropped: int = 0  # sends refused by a full queue
    shut_down: bool = False
    refused: str = ""  # the code of a refusal of its registration, if any

    def send(self, frame: bytes) -> None:
        try:
            self.sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1


class Simulator:
    def __init__(self, connect: str, workers: int, name: str, silence: float, seconds: float,
                 stop: threading.Event, model: str = DEFAULT_MODEL):
        self.silence, self.seconds, self.stop = silence, seconds, stop
        raise_fd_limit(SOCKETS_PER_WORKER * workers + 256)
        self.context = zmq.Context()
        # ZeroMQ's default of 1,023 sockets per context is fewer than a simulator may open.
        self.context.setsockopt(zmq.MAX_SOCKETS, workers + 64)
        self.model = get_model(model)
        self.probe = probe_digest(self.model)  # computed for real once: the coordinator admits no other digest
        self.cache = ResultCache(self.model)
        self.tasked_per_step: dict[int, int] = {}  # step -> simulated workers given at least one task of it
        self.poller = zmq.Poller()
        self.sims: dict[zmq.Socket, SimWorker] = {}
        start = time.monotonic()
        for i in range(workers):
            sim = SimWorker(self._open(connect), f"{name}-{i}")
            # Spread out over the first heartbeat interval, so that joins and beats do not come in one burst.
            sim.next_register = start + HEARTBEAT * i / workers
            self.sims[sim.sock] = sim
            self.poller.register(sim.sock, zmq.POLLIN)
        self.heard = start

    def _open(self, connect: str) -> zmq.Socket:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, uuid.uuid4().bytes)
        sock.setsockopt(zmq.MAXMSGSIZE, P.MAX_MESSAGE_BYTES)
        sock.connect(connect)
        return sock

    def run(self) -> str:
        """Serve until shut down, silent, out of time or stopped; returns why it ended."""
        end = time.monotonic() + self.seconds
        next_timers = 0.0
        while True:
            now = time.monotonic()
            if self.stop.is_set():
                return "stopped"
            if not self.poller.sockets:
                return "shutdown"
            if now - self.heard > self.silence:
                return "silence"
            if now > end:
                return "timeout"
            for sock, _ in self.poller.poll(int(1000 * TIMER_PERIOD)):
                self._drain(self.sims[sock])
            now = time.monotonic()
            if now >= next_timers:
                self._timers(now)
                next_timers = now + TIMER_PERIOD

    def _drain(self, sim: SimWorker) -> None:
        for _ in range(RECEIVE_BUDGET):
            try:
                frame = sim.sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.heard = time.monotonic()
            try:
                msg = P.decode(frame.buffer, self.model)
            except P.ProtocolError as err:
                log.warning("%s: ignored a bad message from the coordinator: %s", sim.name, err)
                continue
            self._handle(sim, msg)
            if sim.shut_down:
                return

    def _handle(self, sim: SimWorker, msg: P.Message) -> None:
        if isinstance(msg, P.Heartbeat):
            if not sim.registered:
                sim.registered, sim.backoff = True, 0.25
                sim.next_beat = self.heard + HEARTBEAT
        elif isinstance(msg, P.Params):
            self.cache.params(msg)
            sim.params_step = msg.step
        elif isinstance(msg, P.Task):
            sim.tasks += 1
            if msg.step != sim.last_task_step:  # a socket's tasks come in step order: steps never overlap
                sim.last_task_step = msg.step
                self.tasked_per_step[msg.step] = self.tasked_per_step.get(msg.step, 0) + 1
            if msg.step == sim.params_step:  # as the client: no task without its step's parameters
                sim.send(self.cache.frame(msg))
                sim.results += 1
        elif isinstance(msg, P.Shutdown):
            sim.shut_down = True
            self.poller.unregister(sim.sock)
            sim.sock.close(linger=0)
        elif isinstance(msg, P.Error):
            sim.registered, sim.params_step = False, -1
            if msg.code == "unregistered":
                sim.next_register = self.heard
            else:  # refused for what it is: as the client, only try again much later
                sim.refused = msg.code
                sim.next_register = self.heard + REFUSED_BACKOFF
                log.warning("%s refused (%s): %s", sim.name, msg.code, msg.message)

    def _timers(self, now: float) -> None:
        beat = P.encode(P.Heartbeat())
        for sim in self.sims.values():
            if sim.shut_down:
                continue
            if not sim.registered and now >= sim.next_register:
                sim.send(P.encode(P.Register(name=sim.name, pid=os.getpid(), probe=self.probe, capacity=1,
                                                model=self.model.name)))
                sim.next_register = now + sim.backoff
                sim.backoff = min(2 * sim.backoff, MAX_BACKOFF)
            elif sim.registered and now >= sim.next_beat:
                sim.send(beat)
                sim.next_beat = now + HEARTBEAT

    def close(self) -> None:
        """Leave (if stopped by a signal) and close every socket; nothing is left running."""
        leave = P.encode(P.Leave())
        for sim in self.sims.values():
            if sim.shut_down:
                continue
            if self.stop.is_set() and sim.registered:
                sim.send(leave)
                sim.sock.close(linger=200)  # a moment for the Leave to get out, as the client allows
            else:
                sim.sock.close(linger=0)
        self.context.term()

    def counts(self) -> dict[str, Any]:
        sims = list(self.sims.values())
        return {
            "workers": len(sims),
            "registered": sum(s.registered or s.shut_down for s in sims),
            "tasked": sum(s.tasks > 0 for s in sims),
            "tasks": sum(s.tasks for s in sims),
            "tasked_per_step": self.tasked_per_step,
            "results": sum(s.results for s in sims),
            "dropped": sum(s.dropped for s in sims),
            "shutdown": sum(s.shut_down for s in sims),
            "refused": sorted({s.refused for s in sims if s.refused}),
            "untasked": [s.name for s in sims if not s.tasks][:8],
            "shapes": len(self.cache.templates),
            "compute_seconds": round(self.cache.compute_seconds, 4),
            "cpu_seconds": round(time.process_time(), 4),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connect", required=True, help="the coordinator's (or a relay's) endpoint")
    parser.add_argument("--workers", type=int, required=True, help="simulated workers in this process")
    parser.add_argument("--name", default="sim", help="name prefix: NAME-0, NAME-1, ...")
    parser.add_argument("--silence", type=float, default=10.0, help="seconds without a message before giving up")
    parser.add_argument("--seconds", type=float, default=170.0, help="longest life, whatever happens")
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(MODELS), help="the run's model")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s sim_workers {args.name} %(message)s")
    stop = threading.Event()  # set by a signal, even one that comes while the sockets are being opened
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    sim = Simulator(args.connect, args.workers, args.name, args.silence, args.seconds, stop, args.model)
    try:
        why = sim.run()
    finally:
        sim.close()
    print(json.dumps({"name": args.name, "ended": why, **sim.counts()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Hostile peers for tests and the attack benchmark: they speak the protocol and lie.

`ScriptedWorker` registers like a worker (with this machine's conformance probe
unless told otherwise), heartbeats, and answers every task with whatever its
`answer(task, peer)` returns; `peer.honest(task)` is the true result, so a liar
can start from the truth and change one thing.  The answer functions below are
the attack catalogue's lies.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable

import msgpack
import numpy as np
import zmq

from coordinator import protocol as P
from lenet.models import DEFAULT_MODEL, get_model
from lenet.probe import probe_digest
from lenet.reduction import cover
from lenet.shards import unit_sums

Answer = Callable[[P.Task, "ScriptedWorker"], list["P.Message | bytes"]]  # bytes: a frame sent as it is

MODEL = get_model(DEFAULT_MODEL)  # the runs these peers join train the default model
_PROBE: list[str] = []


def this_machines_probe() -> str:
    if not _PROBE:
        _PROBE.append(probe_digest(MODEL))
    return _PROBE[0]


def nan_grads(nodes: int = 1) -> dict[str, np.ndarray]:
    return {k: np.full((nodes, *MODEL.PARAM_SHAPES[k]), np.nan, dtype=np.float32) for k in MODEL.TREE_PARAMS}


def zero_factors(count: int) -> dict[str, np.ndarray]:
    return {k: np.zeros((count, width), np.float32) for k, width in MODEL.FACTOR_WIDTHS.items()}


class ScriptedWorker(threading.Thread):
    """A peer on its own DEALER socket, scripted by `answer`; it records what the coordinator told it."""

    def __init__(self, endpoint: str, name: str, answer: Answer, seconds: float = 120, probe: str | None = None,
                 identity: bytes | None = None, heartbeat: float = 0.5, capacity: int = 1,
                 chatter: Answer | None = None, chatter_interval: float = 0.1, reregister: bool = False):
        super().__init__(daemon=True)
        self.reregister = reregister  # register again when told "unregistered", as a real worker does
        self.capacity = capacity  # what it claims to serve: a relay's count of workers
        self.endpoint, self.name, self.answer, self.seconds = endpoint, name, answer, seconds
        self.probe = probe if probe is not None else this_machines_probe()
        self.identity = identity or uuid.uuid4().bytes
        self.heartbeat = heartbeat
        self.chatter, self.chatter_interval = chatter, chatter_interval  # sent unasked, every interval
        self.given: list[tuple[float, P.Task]] = []  # the last few tasks received, with when
        self.tasks = 0
        self.errors: list[str] = []  # codes of the Error messages received
        self.registered = threading.Event()
        self.stop = threading.Event()
        self.model = MODEL()
        self.params_step = -1
        self.sent: list[P.Result] = []  # honest results computed so far, for replays
        self.outbox: queue.Queue[bytes] = queue.Queue()  # frames another thread has it send (sockets are not shared)

    def honest(self, task: P.Task) -> P.Result:
        """The true result of `task` (computed with the parameters the coordinator sent)."""
        sums = unit_sums(self.model, task.pixels, task.labels, task.sizes, task.first, task.num_shards)
        return P.result_of(task.step, sums, 0.01)

    def run(self) -> None:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, self.identity)
        sock.connect(self.endpoint)
        sock.send(P.encode(P.Register(name=self.name, pid=0, probe=self.probe, capacity=self.capacity,
                                      model=MODEL.name)))
        deadline, beat, chatted = time.monotonic() + self.seconds, 0.0, 0.0
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                while not self.outbox.empty():
                    sock.send(self.outbox.get())
                if self.chatter is not None and time.monotonic() - chatted > self.chatter_interval:
                    for frame in self.chatter(None, self):  # type: ignore[arg-type]
                        sock.send(frame if isinstance(frame, bytes) else P.encode(frame))
                    chatted = time.monotonic()
                if self.heartbeat and time.monotonic() - beat > self.heartbeat:
                    sock.send(P.encode(P.Heartbeat()))
                    beat = time.monotonic()
                if not sock.poll(100):
                    continue
                msg = P.decode(sock.recv(), MODEL)
                if isinstance(msg, P.Heartbeat):
                    self.registered.set()
                elif isinstance(msg, P.Error):
                    self.errors.append(msg.code)
                    if self.reregister and msg.code == "unregistered":
                        sock.send(P.encode(P.Register(name=self.name, pid=0, probe=self.probe,
                                                      capacity=self.capacity)))
                elif isinstance(msg, P.Shutdown):
                    return
                elif isinstance(msg, P.Params):
                    self.model.params, self.params_step = dict(msg.params), msg.step
                elif isinstance(msg, P.Task):
                    self.tasks += 1
                    self.given = [*self.given[-3:], (time.monotonic(), msg)]
                    for reply in self.answer(msg, self):
                        sock.send(reply if isinstance(reply, bytes) else P.encode(reply))
        finally:
            sock.close(linger=0)


# --------------------------------------------------------------------------- the lies


def _with(result: P.Result, **changes) -> P.Result:
    return P.Result(**{**vars(result), **changes})


def nan_answer(task: P.Task, peer: ScriptedWorker) -> list[P.Message]:
    good = peer.honest(task)
    return [_with(good, grads=nan_grads(len(good.grads["conv1.bias"])))]


def honest_answer(task: P.Task, peer: ScriptedWorker) -> list[P.Message]:
    return [peer.honest(task)]


def silent_answer(task: P.Task, peer: ScriptedWorker) -> list[P.Message]:
    """A ghost: alive (it heartbeats), never computing."""
    return []


def negative_seconds_answer(task: P.Task, peer: ScriptedWorker) -> list[P.Message]:
    return [_with(peer.honest(task), compute_seconds=-1.0)]


def poison_answer(task: P.Task, peer: ScriptedWorker) -> list[P.Message]:
    """Finite poison: every gradient and factor 1e30 (no NaN check catches it)."""
    good = peer.honest(task)
    return [_with(good, grads={k: np.full_like(v, 1e30) for k, v in good.grads.items()},
                  factors={k: np.full_like(v, 1e30) for k, v in good.factors.items()})]


def _raw(result: P.Result, **changes) -> bytes:
    """A Result frame with fields no Result object may hold (the protocol's own constructor refuses them)."""
    body = msgpack.unpackb(P.encode(result), raw=False)
    return msgpack.packb({**body, **changes}, use_bin_type=True)


def impossible_answer(task: P.Task, peer: ScriptedWorker) -> list[P.Message | bytes]:
    """Right gradients, impossible statistics: a billion correct, a negative loss."""
    good = peer.honest(task)
    return [_raw(good, correct=10**9), _raw(good, losses=P.encode_array(np.full_like(good.losses, -5.0))), good]


def other_numerics_answer(task: P.Task, peer: ScriptedWorker) -> list[P.Message]:
    """Right to ~1e-7, wrong in the last bits: the unit computed in float64, then rounded."""
    model = MODEL(dtype=np.float64)
    model.params = {k: v.astype(np.float64) for k, v in peer.model.params.items()}
    sums = unit_sums(model, task.pixels, task.labels, task.sizes, task.first, task.num_shards)
    return [_with(peer.honest(task), grads={k: v.astype(np.float32) for k, v in sums.grads.items()},
                  factors={k: v.astype(np.float32) for k, v in sums.factors.items()})]


def replay_answer(task: P.Task, peer: ScriptedWorker) -> list[P.Message]:
    """Answers honestly, and replays every earlier result it sent."""
    good = peer.honest(task)
    replies: list[P.Message] = [*peer.sent[-3:], good]
    peer.sent.append(good)
    return replies


def someone_elses_unit_answer(task: P.Task, peer: ScriptedWorker) -> list[P.Message]:
    """A true-looking result for a unit it was not given (the neighbouring one), then its own."""
    good = peer.honest(task)
    other = 0 if task.first else len(task.sizes)
    return [_with(good, first=other), good]


def bogus_answers(task: P.Task, peer: ScriptedWorker) -> list[P.Message]:
    """Results that may not be applied: NaN, then for a future step, an unknown shard, a wrong count."""
    honest = peer.honest(task)
    good = _with(honest, grads=nan_grads(len(honest.grads["conv1.bias"])), correct=0)
    one_more = {k: np.concatenate([v, v[:1]]) for k, v in good.factors.items()}  # a sample the task did not have
    return [_with(good, step=task.step + 1000), _with(good, first=999),
            _with(good, count=len(task.labels) + 1, factors=one_more, losses=np.append(good.losses, good.losses[:1])),
            good]


def result_flood_answer(task: P.Task, peer: ScriptedWorker) -> list[P.Message]:
    """Two hundred copies of a result for a shard that does not exist, then the true one, for every task."""
    good = peer.honest(task)
    return [_with(good, first=10**6)] * 200 + [good]


def one_ulp_off(result: P.Result) -> P.Result:
    """`result` with the last bit of one factor element flipped: the smallest lie there is.  The element is
    the largest (a zero one, after a ReLU, would become a subnormal that no product notices)."""
    factors = {k: v.copy() for k, v in result.factors.items()}
    first = factors[next(iter(factors))]
    first.view(np.uint32).flat[np.argmax(np.abs(first))] ^= 1
    return _with(result, factors=factors)


def one_ulp_liar(from_step: int = 0, until_step: int | None = None) -> Answer:
    """Honest except the last bit of one factor element, in the steps `from_step` to `until_step` (exclusive);
    the step is the one the coordinator's messages carry."""
    def answer(task: P.Task, peer: ScriptedWorker) -> list[P.Message]:
        good = peer.honest(task)
        lying = task.step >= from_step and (until_step is None or task.step < until_step)
        return [one_ulp_off(good) if lying else good]
    return answer


def late_poison(at_step: int, late: float = 0.3) -> Answer:
    """Honest, except the answer for step `at_step`: gradients of 1e30, sent `late` seconds late (with
    --gradient-delay 1 it lands while the next step is already out)."""
    def answer(task: P.Task, peer: ScriptedWorker) -> list[P.Message]:
        good = peer.honest(task)
        if task.step != at_step:
            return [good]
        time.sleep(late)
        return [P.Result(**{**vars(good), "grads": {k: np.full_like(v, 1e30) for k, v in good.grads.items()}})]
    return answer


def stale_zero_results(_: None, peer: ScriptedWorker) -> list[P.Message]:
    """All-zero Results shaped like true ones, for steps surely over: the one before each task it was given
    (a step is cut alike for the same members), and a task's own step once 1 s has passed (backups took
    its unit long since)."""
    out: list[P.Message] = []
    for at, task in peer.given:
        step = task.step - 1 if task.step > 0 else (task.step if time.monotonic() - at > 1.0 else None)
        if step is not None:
            nodes = len(cover(task.first, task.first + len(task.sizes), task.num_shards))
            out.append(P.Result(step=step, first=task.first, shards=len(task.sizes), count=len(task.labels),
                                losses=np.zeros(len(task.labels), np.float32), correct=0, compute_seconds=0.01,
                                grads={k: np.zeros((nodes, *MODEL.PARAM_SHAPES[k]), np.float32)
                                       for k in MODEL.TREE_PARAMS},
                                factors=zero_factors(len(task.labels))))
    return out

"""A scripted peer for tests: registers like a worker, then misbehaves on purpose."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import zmq

from coordinator import protocol as P
from lenet.model import PARAM_SHAPES


def nan_grads() -> dict[str, np.ndarray]:
    return {k: np.full(shape, np.nan, dtype=np.float32) for k, shape in PARAM_SHAPES.items()}


class ScriptedWorker(threading.Thread):
    """Registers as `name`, heartbeats, and answers every task with the messages `answer(task)` returns."""

    def __init__(self, endpoint: str, name: str, answer: Callable[[P.Task], list[P.Message]], seconds: float = 120):
        super().__init__(daemon=True)
        self.endpoint, self.name, self.answer, self.seconds = endpoint, name, answer, seconds
        self.tasks = 0
        self.registered = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        sock.send(P.encode(P.Register(name=self.name, pid=0)))
        deadline, beat = time.monotonic() + self.seconds, 0.0
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                if time.monotonic() - beat > 0.5:
                    sock.send(P.encode(P.Heartbeat()))
                    beat = time.monotonic()
                if not sock.poll(100):
                    continue
                msg = P.decode(sock.recv())
                if isinstance(msg, P.Heartbeat):
                    self.registered.set()
                elif isinstance(msg, P.Shutdown):
                    return
                elif isinstance(msg, P.Task):
                    self.tasks += 1
                    for reply in self.answer(msg):
                        sock.send(P.encode(reply))
        finally:
            sock.close(linger=0)


def nan_answer(task: P.Task) -> list[P.Message]:
    return [P.Result(step=task.step, first=task.first, shards=len(task.sizes), count=len(task.labels), loss_sum=1.0,
                     correct=0, compute_seconds=0.01, grads=nan_grads())]


def bogus_answers(task: P.Task) -> list[P.Message]:
    """Results that may not be applied: NaN, then for a future step, an unknown shard, a wrong count."""
    good = dict(step=task.step, first=task.first, shards=len(task.sizes), count=len(task.labels), loss_sum=1.0,
                correct=0, compute_seconds=0.01, grads=nan_grads())
    return [P.Result(**{**good, "step": task.step + 1000}), P.Result(**{**good, "first": 999}),
            P.Result(**{**good, "count": len(task.labels) + 1}), P.Result(**good)]

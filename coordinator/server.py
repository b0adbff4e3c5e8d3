"""The coordinator's event loop: membership, dispatch, reduction, optimizer, checkpoints.

One thread, one ROUTER socket, every wait bounded.  Each step:
  1. the batch `epoch_batches(seed, epoch)[i]` is cut into fixed shards (`split_batch`),
     grouped into units, subtrees of the reduction tree sized to the live workers
     (`work_units`): one unit per worker when it divides evenly, so few messages;
  2. units go to live workers (parameters first, once per worker per step);
  3. the first valid result of each unit is kept (`StepScheduler`); dead, departed or
     overdue workers' units are queued again;
  4. when every unit is in, the subtree sums are added up the rest of the fixed tree,
     divided by the batch size (`mean_gradient`), and the optimizer steps at
     `schedule(step)`.
Every node of the tree is the same float32 addition wherever it is done, so the
parameters are bit-identical whatever the number, order or failures of workers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq

from coordinator import checkpoint as ckpt
from coordinator import protocol as P
from coordinator.keys import CurveServer, secure_server
from coordinator.metrics import Metrics
from coordinator.scheduler import StepScheduler
from lenet.config import TrainConfig, make_optimizer, make_schedule
from lenet.data import MNIST, epoch_batches, split_batch, steps_per_epoch, training_subset
from lenet.model import LeNet5, Params, check_params
from lenet.reduction import mean_gradient, work_units
from lenet.status import NetworkError, StorageError, UsageError
from lenet.train import EpochStats, evaluate

log = logging.getLogger("coordinator")

PREFETCH = 2  # tasks a worker may hold at once: hides the round trip between units
# A step has diverged (rather than met one broken worker) when this many distinct
# workers, or every live worker if fewer, returned NaN/Inf gradients for it.
DIVERGED_AFTER_WORKERS = 3


class TrainingDiverged(Exception):
    """Every worker returns non-finite gradients: the model itself has diverged."""


@dataclass(frozen=True)
class ServiceConfig:
    bind: str = "tcp://127.0.0.1:*"
    num_shards: int = 8
    min_workers: int = 1
    heartbeat_timeout: float = 10.0
    task_timeout: float = 30.0
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 0  # steps; 0: only at epoch ends
    curve: CurveServer | None = None  # CURVE encryption and the workers admitted

    def __post_init__(self) -> None:
        if self.num_shards < 1:
            raise ValueError(f"shards must be >= 1, got {self.num_shards}")
        if self.min_workers < 1:
            raise ValueError(f"min workers must be >= 1, got {self.min_workers}")
        if not self.heartbeat_timeout > 0 or not self.task_timeout > 0:
            raise ValueError(f"timeouts must be > 0, got {self.heartbeat_timeout} and {self.task_timeout}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint interval must be >= 0, got {self.checkpoint_every}")


@dataclass
class WorkerInfo:
    name: str
    pid: int
    last_seen: float
    params_step: int = -1
    suspect_since: float | None = None  # missed a task deadline; no new work until it speaks


@dataclass(frozen=True)
class StepPlan:
    """What a step's workers will be sent, apart from the parameters."""

    step: int
    live: int  # live workers the units were cut for
    num_shards: int
    units: list[tuple[int, int]]
    samples: list[int]  # per unit
    tasks: list[bytes]  # per unit: the encoded Task


@dataclass
class RunState:
    """Everything a checkpoint must restore; the rest is derived."""

    step: int = 0  # optimizer steps done
    epoch_loss_sum: float = 0.0
    epoch_correct: int = 0
    epoch_samples: int = 0
    history: list[dict] = field(default_factory=list)


@dataclass
class RunOutcome:
    params: Params
    state: RunState
    finished: bool  # False: stopped early by a signal


class Coordinator:
    def __init__(self, train: TrainConfig, service: ServiceConfig, data: MNIST, metrics: Metrics,
                 context: zmq.Context | None = None):
        self.train, self.service, self.metrics = train, service, metrics
        self.data = training_subset(data, train.train_subset)
        self.context = context or zmq.Context.instance()
        self.model = LeNet5(seed=train.seed)
        self.optimizer = make_optimizer(train, self.model.params)
        self.n_train = len(self.data.train_labels)
        self.steps_per_epoch = steps_per_epoch(self.n_train, train.batch_size)
        self.total_steps = train.epochs * self.steps_per_epoch
        if train.max_steps is not None:
            self.total_steps = min(self.total_steps, train.max_steps)
        self.schedule = make_schedule(train, self.steps_per_epoch)
        self.state = RunState()
        self.workers: dict[bytes, WorkerInfo] = {}
        self.sched: StepScheduler[bytes, P.Result] | None = None
        self.num_shards = 0  # shards of the current step (fewer than --shards if the batch is tiny)
        self.plan: StepPlan | None = None
        self.next_plan: StepPlan | None = None
        self.params_frame = b""
        self.step_started = 0.0
        self._epoch_started = 0.0
        self.nonfinite: set[bytes] = set()  # workers that returned NaN/Inf this step: no more work for them
        self.last_loss = float("nan")
        self.last_step_samples = 0
        self._batches: tuple[int, list[np.ndarray]] = (-1, [])
        self._reject_log: dict[str, tuple[float, int]] = {}
        self._answered: dict[bytes, float] = {}  # unknown peers told to register, and when
        self.auth = None
        self.sock = self._bind(service.bind)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    # ------------------------------------------------------------------ setup

    def _bind(self, endpoint: str) -> zmq.Socket:
        sock = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, P.MAX_MESSAGE_BYTES)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a worker reconnecting under its id takes over
        if self.service.curve is not None:
            self.auth = secure_server(sock, self.service.curve, self.context)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as err:
            sock.close()
            raise NetworkError(f"cannot bind {endpoint}: {err.strerror}") from None
        return sock

    def restore(self, c: ckpt.Checkpoint) -> None:
        """Continue from a checkpoint of the same configuration and data."""
        saved = TrainConfig.from_dict(c.meta.get("config", {}))
        ours = self.train.to_dict()
        diffs = [f"{k}={v!r} (this run: {ours[k]!r})" for k, v in saved.to_dict().items()
                 if k != "max_steps" and ours.get(k) != v]
        if diffs:
            raise UsageError("checkpoint was made with " + ", ".join(diffs) + ": pass the same flags to resume")
        if c.meta.get("num_shards") != self.service.num_shards:
            raise UsageError(f"checkpoint was made with --shards {c.meta.get('num_shards')}, "
                             f"this run has {self.service.num_shards}")
        if c.meta.get("data_checksums") != self.data.checksums:
            raise UsageError("checkpoint was made with different MNIST files (checksums differ)")
        try:
            self.model.params = dict(check_params(c.params, "checkpoint"))
            self.optimizer.load_state_dict(c.optimizer)
        except ValueError as err:
            raise StorageError(f"checkpoint does not fit this model: {err}") from None
        run = c.meta.get("run", {})
        self.state = RunState(step=c.step, epoch_loss_sum=run.get("epoch_loss_sum", 0.0),
                              epoch_correct=run.get("epoch_correct", 0), epoch_samples=run.get("epoch_samples", 0),
                              history=list(run.get("history", [])))
        self.metrics.steps.inc(c.step)
        self.metrics.epoch.set(c.step // self.steps_per_epoch + 1)
        self.metrics.epoch_samples.set(self.state.epoch_samples)

    # ------------------------------------------------------------------ sending

    def _send(self, identity: bytes, frame: bytes) -> None:
        try:
            # copy=False: the frame is immutable bytes, so ZeroMQ may send it in place.
            self.sock.send_multipart([identity, frame], zmq.NOBLOCK, copy=False)
            self.metrics.sent_bytes.inc(len(frame))
        except zmq.Again:
            self._warn_limited("send_full", f"send buffer to {self._name(identity)} full: message dropped")

    def _name(self, identity: bytes) -> str:
        info = self.workers.get(identity)
        return info.name if info else identity.hex()[:8]

    def broadcast_shutdown(self, reason: str) -> None:
        frame = P.encode(P.Shutdown(reason=reason))
        for identity in list(self.workers):
            self._send(identity, frame)

    # ------------------------------------------------------------------ membership

    def _add_worker(self, identity: bytes, msg: P.Register, now: float) -> None:
        if identity not in self.workers:
            self.workers[identity] = WorkerInfo(name=msg.name, pid=msg.pid, last_seen=now)
            log.info("worker %s joined (%d live)", msg.name, len(self.workers))
        self.workers[identity].last_seen = now
        self.metrics.worker_seen(self.workers[identity].name)
        self.metrics.workers_alive.set(len(self.workers))
        self._send(identity, P.encode(P.Heartbeat()))

    def _remove_worker(self, identity: bytes, why: str) -> None:
        info = self.workers.pop(identity)
        released = self.sched.release_worker(identity) if self.sched else 0
        self.metrics.redispatched.inc(released)
        self.metrics.forget_worker(info.name)
        self.metrics.workers_alive.set(len(self.workers))
        log.info("worker %s %s (%d live; %d shards re-dispatched)", info.name, why, len(self.workers), released)

    def forget_exited(self, pids: list[int]) -> None:
        """Local worker processes seen to exit: drop them now rather than at the heartbeat timeout."""
        for identity, info in list(self.workers.items()):
            if info.pid in pids:
                self.metrics.workers_lost.inc()
                self._remove_worker(identity, "exited")

    def _check_liveness(self, now: float) -> None:
        for identity, info in list(self.workers.items()):
            silent = now - info.last_seen
            if silent > self.service.heartbeat_timeout:
                self.metrics.workers_lost.inc()
                self._remove_worker(identity, f"lost: silent for {silent:.1f} s")
        if self.sched is None:
            return
        for unit, identity in self.sched.expire(now):
            lo, hi = self.sched.units[unit]
            self.metrics.redispatched.inc(hi - lo)
            info = self.workers.get(identity)
            if info is not None:
                info.suspect_since = now
            log.warning("shards %d-%d of step %d missed their %.0f s deadline on %s: re-dispatched", lo, hi - 1,
                        self.sched.step, self.service.task_timeout, self._name(identity))

    # ------------------------------------------------------------------ receiving

    def _warn_limited(self, key: str, text: str) -> None:
        """One log line per key per 10 s, whatever the flood, saying how many were held back."""
        now = time.monotonic()
        last, suppressed = self._reject_log.get(key, (-1e9, 0))
        if now - last >= 10.0:
            more = f" (+{suppressed} more like it since the last report)" if suppressed else ""
            log.warning("%s%s", text, more)
            self._reject_log[key] = (now, 0)
        else:
            self._reject_log[key] = (last, suppressed + 1)

    def _reject(self, reason: str, identity: bytes | None, detail: str) -> None:
        self.metrics.rejected.labels(reason).inc()
        who = self._name(identity) if identity else "?"
        self._warn_limited(reason, f"rejected message from {who}: {reason}: {detail[:200]}")

    def _may_answer_stranger(self, identity: bytes, now: float) -> bool:
        """At most one reply a second to each unknown peer, remembering a bounded number of them."""
        if now - self._answered.get(identity, -1e9) < 1.0:
            return False
        if len(self._answered) >= 4096:
            self._answered.clear()
        self._answered[identity] = now
        return True

    def _drain(self, budget: int = 256) -> None:
        """Handle the messages already queued, at most `budget` of them."""
        for _ in range(budget):
            try:
                # copy=False: gradients are unpacked straight from ZeroMQ's buffer.
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.metrics.received_bytes.inc(sum(len(f.buffer) for f in frames))
            if len(frames) != 2:
                self._reject("malformed", frames[0].bytes if frames else None, f"{len(frames)} frames, expected 2")
                continue
            self._handle(frames[0].bytes, frames[1].buffer, time.monotonic())

    def _handle(self, identity: bytes, frame: bytes | memoryview, now: float) -> None:
        try:
            msg = P.decode(frame)
        except P.ProtocolError as err:
            self._reject(err.reason, identity, err.detail)
            return
        if isinstance(msg, P.Register):
            self._add_worker(identity, msg, now)
            return
        info = self.workers.get(identity)
        if info is None:
            self._reject("unregistered", identity, f"{msg.TYPE} from an unknown worker")
            if not isinstance(msg, P.Leave) and self._may_answer_stranger(identity, now):
                self._send(identity, P.encode(P.Error(code="unregistered", message="register first")))
            return
        info.last_seen = now
        self.metrics.worker_seen(info.name)
        info.suspect_since = None
        if isinstance(msg, P.Heartbeat):
            self._send(identity, P.encode(P.Heartbeat()))
        elif isinstance(msg, P.Leave):
            self._remove_worker(identity, "left")
        elif isinstance(msg, P.Result):
            self._handle_result(identity, info, msg)
        else:
            self._reject("unexpected", identity, f"a worker may not send {msg.TYPE}")

    def _handle_result(self, identity: bytes, info: WorkerInfo, msg: P.Result) -> None:
        if self.sched is None:
            self._reject("stale_step", identity, f"result for step {msg.step} between steps")
            return
        where = f"step {msg.step} shards {msg.first}-{msg.first + msg.shards - 1}"
        reason = self.sched.check(identity, msg.step, msg.first, msg.shards, msg.count)
        if reason:
            self._reject(reason, identity, where)
            return
        if not P.all_finite(msg.grads):
            self._reject("non_finite", identity, f"NaN/Inf gradient for {where}")
            self.nonfinite.add(identity)
            self.metrics.redispatched.inc(self.sched.reject_result(msg.first) + self.sched.release_worker(identity))
            if len(self.nonfinite) >= min(DIVERGED_AFTER_WORKERS, len(self.workers)):
                raise TrainingDiverged(f"step {msg.step}: {len(self.nonfinite)} workers returned NaN/Inf gradients")
            return
        self.sched.accept(msg.first, msg)
        self.metrics.worker_compute.labels(info.name).inc(msg.compute_seconds)
        self.metrics.worker_shards.labels(info.name).inc(msg.shards)

    # ------------------------------------------------------------------ steps

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        if self._batches[0] != epoch:
            self._batches = (epoch, epoch_batches(self.train.seed, epoch, self.n_train, self.train.batch_size))
        return self._batches[1]

    def _plan(self, step: int, live: int) -> StepPlan:
        """Shards, units and encoded tasks of `step` for `live` workers: all independent of the parameters."""
        epoch, index = divmod(step, self.steps_per_epoch)
        shards = split_batch(self._epoch_batches(epoch)[index], self.service.num_shards)
        units = work_units(len(shards), max(1, live))
        tasks = []
        for lo, hi in units:
            idx = np.concatenate(shards[lo:hi])
            tasks.append(P.encode(P.Task(step=step, first=lo, sizes=[len(s) for s in shards[lo:hi]],
                                         pixels=self.data.train_images[idx], labels=self.data.train_labels[idx])))
        samples = [sum(len(shards[s]) for s in range(lo, hi)) for lo, hi in units]
        return StepPlan(step, live, len(shards), units, samples, tasks)

    def _live(self) -> int:
        return sum(1 for w in self.workers.values() if w.suspect_since is None)

    def _plan_ahead(self) -> None:
        """Build the next step's tasks while the workers compute, off the step's critical path."""
        nxt = self.state.step + 1
        if nxt < self.total_steps and (self.next_plan is None or self.next_plan.step != nxt):
            self.next_plan = self._plan(nxt, self._live())

    def _start_step(self) -> None:
        step, live = self.state.step, self._live()
        plan = self.next_plan
        if plan is None or plan.step != step or plan.live != live:
            plan = self._plan(step, live)
        self.plan = plan
        self.num_shards = plan.num_shards
        self.sched = StepScheduler(step, plan.units, plan.samples, self.service.task_timeout)
        self.params_frame = P.encode(P.Params(step=step, params=self.model.params))
        self.step_started = time.monotonic()
        self.nonfinite = set()

    def _dispatch(self, now: float) -> None:
        """Hand out pending units round-robin, up to PREFETCH per worker."""
        sched, plan = self.sched, self.plan
        assert sched is not None and plan is not None
        eligible = [(i, w) for i, w in self.workers.items() if w.suspect_since is None and i not in self.nonfinite]
        progress = True
        while sched.pending and progress:
            progress = False
            for identity, info in eligible:
                if not sched.pending or len(sched.held_by(identity)) >= PREFETCH:
                    continue
                unit = sched.next_unit(identity, now)
                assert unit is not None
                if info.params_step != sched.step:
                    self._send(identity, self.params_frame)
                    info.params_step = sched.step
                self._send(identity, plan.tasks[unit])
                progress = True

    def _finish_step(self) -> None:
        sched = self.sched
        assert sched is not None
        by_node = sched.results_by_node()
        results = [by_node[unit] for unit in sched.units]
        n = sum(r.count for r in results)
        grads = mean_gradient({node: r.grads for node, r in by_node.items()}, self.num_shards, n)
        lr = self.schedule(self.state.step)
        self.optimizer.step(self.model.params, grads, lr)
        loss_sum = sum(r.loss_sum for r in results)
        st = self.state
        st.step += 1
        st.epoch_loss_sum += loss_sum
        st.epoch_correct += sum(r.correct for r in results)
        st.epoch_samples += n
        m = self.metrics
        m.samples.inc(n)
        m.steps.inc()
        self.last_loss, self.last_step_samples = loss_sum / n, n
        m.train_loss.set(self.last_loss)
        m.learning_rate.set(lr)
        m.epoch_samples.set(st.epoch_samples)
        m.step_duration.observe(time.monotonic() - self.step_started)
        self.sched = None
        if st.step % self.steps_per_epoch == 0:
            self._end_epoch()
        elif self.service.checkpoint_every and st.step % self.service.checkpoint_every == 0:
            self.save_checkpoint()

    def _end_epoch(self) -> None:
        st = self.state
        epoch = st.step // self.steps_per_epoch
        started = self._epoch_started
        test_acc = evaluate(self.model.params, self.data.test_images, self.data.test_labels)
        stats = EpochStats(epoch=epoch, steps=st.step, samples=st.epoch_samples,
                           loss=st.epoch_loss_sum / st.epoch_samples, train_accuracy=st.epoch_correct / st.epoch_samples,
                           test_accuracy=test_acc, seconds=time.monotonic() - started)
        st.history.append({"epoch": epoch, "samples": stats.samples, "loss": stats.loss,
                           "train_accuracy": stats.train_accuracy, "test_accuracy": test_acc})
        self.metrics.train_accuracy.set(stats.train_accuracy)
        self.metrics.test_accuracy.set(test_acc)
        self.metrics.epoch.set(min(epoch + 1, self.train.epochs))
        log.info("epoch %d/%d: loss %.4f  train acc %.2f%%  test acc %.2f%%  %d samples  %.0f samples/s  %d workers",
                 epoch, self.train.epochs, stats.loss, 100 * stats.train_accuracy, 100 * test_acc, stats.samples,
                 stats.samples_per_second, len(self.workers))
        st.epoch_loss_sum, st.epoch_correct, st.epoch_samples = 0.0, 0, 0
        self.metrics.epoch_samples.set(0)
        self._epoch_started = time.monotonic()
        self.save_checkpoint()

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the last completed step; a failure is logged, not fatal."""
        directory = self.service.checkpoint_dir
        if directory is None:
            return None
        st = self.state
        meta = {"config": self.train.to_dict(), "num_shards": self.service.num_shards,
                "data_checksums": self.data.checksums,
                "run": {"epoch_loss_sum": st.epoch_loss_sum, "epoch_correct": st.epoch_correct,
                        "epoch_samples": st.epoch_samples, "history": st.history}}
        start = time.monotonic()
        try:
            path = ckpt.save(directory, ckpt.Checkpoint(st.step, self.model.params, self.optimizer.state_dict(), meta))
        except StorageError as err:
            self.metrics.checkpoint_failures.inc()
            log.error("checkpoint at step %d failed, training continues (previous checkpoints intact): %s",
                      st.step, err)
            return None
        self.metrics.checkpoint_duration.observe(time.monotonic() - start)
        return path

    # ------------------------------------------------------------------ the loop

    @property
    def done(self) -> bool:
        return self.state.step >= self.total_steps

    def wait_for_workers(self, stop: Callable[[], bool], tick: Callable[[], None] = lambda: None) -> bool:
        """Block until min_workers have registered; False if stopped first."""
        announced = False
        while len(self.workers) < self.service.min_workers:
            if stop():
                return False
            if not announced:
                log.info("waiting for %d workers at %s (have %d)", self.service.min_workers, self.endpoint,
                         len(self.workers))
                announced = True
            self.sock.poll(100)
            self._drain()
            self._check_liveness(time.monotonic())
            tick()
        return True

    def run(self, stop: Callable[[], bool], tick: Callable[[], None] = lambda: None,
            progress: Callable[["Coordinator"], None] = lambda c: None) -> RunOutcome:
        """Train until done or `stop()` is true; `tick` runs every loop, `progress` after each step."""
        self.metrics.epoch.set(self.state.step // self.steps_per_epoch + 1)
        if not self.wait_for_workers(stop, tick):
            return RunOutcome(self.model.params, self.state, finished=False)
        log.info("training: %d steps of batch %d in %d shards, %d workers", self.total_steps - self.state.step,
                 self.train.batch_size, self.service.num_shards, len(self.workers))
        self._epoch_started = time.monotonic()
        paused = False  # no live worker: said once, until one registers
        while not self.done:
            if stop():
                return RunOutcome(self.model.params, self.state, finished=False)
            if self.sched is None:
                self._start_step()
            now = time.monotonic()
            self._dispatch(now)
            self._plan_ahead()
            deadline = self.sched.next_deadline()
            wait = 0.1 if deadline is None else min(0.1, max(0.0, deadline - now))
            if self.sock.poll(int(wait * 1000)):
                self._drain()
            now = time.monotonic()
            self._check_liveness(now)
            tick()
            if not self.workers and not paused:
                log.warning("no live workers: training paused until one registers")
            paused = not self.workers
            if self.sched.complete:
                self._finish_step()
                progress(self)
        return RunOutcome(self.model.params, self.state, finished=True)

    def close(self) -> None:
        self.sock.close(linger=0)
        if self.auth is not None:
            self.auth.stop()

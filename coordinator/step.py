"""One step of the run: what its workers are sent, and its state while they compute.  No sockets.

`limits_problem` says, before training, why a batch cannot be trained in its
shards at all.  `plan_step` cuts a step's batch into its fixed shards, groups them into units for
the live members' capacities (`work_units`), splits a unit too large for one
message into several (`fit_units`), and encodes each unit's Task: everything that does
not depend on the parameters, so the next step's plan is built while the workers
compute.  `Step` then holds the state of the step under way: its plan, the
scheduler that hands out units and keeps the first valid result of each, the
verification of its answers, its parameters (encoded once) and their gradient
bounds, and when it started.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Hashable
from dataclasses import dataclass, field
from itertools import accumulate

import numpy as np

from coordinator import protocol as P
from coordinator.scheduler import StepScheduler, work_units
from coordinator.trust import Verification
from lenet.architecture import Model
from lenet.params import Params
from lenet.reduction import Node
from lenet.shards import shard_sizes


@dataclass(frozen=True)
class StepPlan:
    """What a step's workers will be sent, apart from the parameters."""

    step: int
    capacities: tuple[int, ...]  # the live members' capacities the units were cut for, largest first
    units: list[Node]
    weights: list[int]  # per unit: the capacity it was cut for
    samples: list[int]  # per unit
    tasks: list[bytes]  # per unit: the encoded Task
    wire: int  # the step number its messages carry: `step` until a rewind, above every number sent before it

    @property
    def num_shards(self) -> int:
        """Shards of this step: --shards, or fewer if the batch has fewer samples."""
        return self.units[-1][1]


def limits_problem(batch_size: int, train_images: int, num_shards: int,
                   model: type[Model] | None = None) -> str | None:
    """Why batches of `batch_size` from `train_images` images in `num_shards` shards cannot be trained with
    `model` (default: the default model), or None.

    A unit too large for a message is split (`fit_units`), but a unit is at least one
    shard: a shard too large for a message is refused here, before training.
    """
    if batch_size > train_images:
        return (f"--batch-size {batch_size} is larger than the {train_images} training images: "
                f"use at most {train_images}")
    if num_shards > P.MAX_SHARDS:
        return f"--shards {num_shards} is more than {P.MAX_SHARDS}"
    shards = min(num_shards, batch_size)
    largest = -(-batch_size // shards)
    if largest > P.max_unit_samples(shards, model):
        enough = next((s for s in range(shards, P.MAX_SHARDS + 1)
                       if -(-batch_size // s) <= P.max_unit_samples(s, model)), None)
        fix = f"pass --shards {enough} or more" if enough else "lower --batch-size"
        return (f"--batch-size {batch_size} in {shards} shard{'s' if shards > 1 else ''} makes shards of "
                f"{largest} samples, more than one message holds ({P.max_unit_samples(shards, model)}): {fix}")
    return None


def fit_units(units: list[Node], weights: list[int], sizes: list[int], limit: int) -> tuple[list[Node], list[int]]:
    """`units` with each one of more than `limit` samples split into runs of whole shards of at most `limit`
    (every shard fits: `limits_problem`); a piece keeps its unit's capacity weight."""
    out, out_weights = [], []
    for (lo, hi), weight in zip(units, weights):
        start, held = lo, 0
        for shard in range(lo, hi):
            if held and held + sizes[shard] > limit:
                out.append((start, shard))
                out_weights.append(weight)
                start, held = shard, 0
            held += sizes[shard]
        out.append((start, hi))
        out_weights.append(weight)
    return out, out_weights


def plan_step(step: int, batch: np.ndarray, num_shards: int, capacities: tuple[int, ...],
              images: np.ndarray, labels: np.ndarray, wire: int | None = None,
              model: type[Model] | None = None) -> StepPlan:
    """Units and encoded tasks of `step`, whose batch holds the sample indices `batch`, for members of `capacities`
    (units cut to fit a message of `model`'s results; default: the default model).

    `wire`: the step number the messages carry (default `step`).  After a rewind a replayed step is numbered
    above every step sent before, so an answer computed before the rewind is refused as stale.
    """
    wire = step if wire is None else wire
    sizes = shard_sizes(len(batch), num_shards)
    starts = [0, *accumulate(sizes)]  # the shards are consecutive runs of the batch
    units, weights = fit_units(*work_units(len(sizes), capacities), sizes, P.max_unit_samples(len(sizes), model))
    tasks, samples = [], []
    for lo, hi in units:
        idx = batch[starts[lo] : starts[hi]]
        tasks.append(P.encode(P.Task(step=wire, first=lo, num_shards=len(sizes), sizes=sizes[lo:hi],
                                     pixels=images[idx], labels=labels[idx])))
        samples.append(len(idx))
    return StepPlan(step, capacities, units, weights, samples, tasks, wire)


def chosen_for_verification(secret: bytes, step: int, first: int, fraction: float) -> bool:
    """Whether unit `first` of `step` is computed twice.  Keyed by a per-run secret, so no worker can predict it."""
    if fraction <= 0:
        return False
    digest = hmac.new(secret, f"{step}:{first}".encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def same_result(a: P.Result, b: P.Result) -> bool:
    """Bit for bit: results are deterministic, so two honest workers agree exactly."""
    return (a.count == b.count and a.correct == b.correct and a.losses.tobytes() == b.losses.tobytes()
            and all(a.grads[k].tobytes() == b.grads[k].tobytes() for k in a.grads)
            and all(a.factors[k].tobytes() == b.factors[k].tobytes() for k in a.factors))


@dataclass
class Batch:
    """Units of one step handed out to members: their encoded tasks, who holds what, which answers count.

    The coordinator's step is one; so is each task a relay cuts into pieces for its workers.
    """

    step: int
    params_frame: bytes  # the step's Params message, sent once per member
    tasks: list[bytes]  # per unit: its encoded Task
    scheduler: StepScheduler[Hashable, object]  # which unit is out where; the accepted results
    verification: Verification[Hashable, P.Result]  # which answers are believed (coordinator/trust.py)


@dataclass
class Step:
    """The step under way: everything the loop needs about it, in one place."""

    plan: StepPlan
    batch: Batch
    params: Params  # the parameters every unit of the step is computed with
    started: float
    model: type[Model]  # the run's model: its parameters, bounds and the Params message's name
    own: dict[int, P.Result] = field(default_factory=dict)  # units the coordinator computed itself (Verdicts)
    _bounds: dict[str, float] | None = None

    @classmethod
    def start(cls, plan: StepPlan, params: Params, task_timeout: float, now: float, model: type[Model],
              secret: bytes = b"", verify_fraction: float = 0.0, lag: int = 0) -> "Step":
        """`lag`: 1 if it is handed out while the step before it is still open (P.Params)."""
        verify = {u for u, (first, _) in enumerate(plan.units)
                  if chosen_for_verification(secret, plan.step, first, verify_fraction)}
        scheduler = StepScheduler(plan.wire, plan.units, plan.samples, task_timeout, plan.weights)
        params_frame = P.encode(P.Params(step=plan.wire, params=params, model=model.name, lag=lag))
        batch = Batch(plan.wire, params_frame, plan.tasks, scheduler, Verification(verify, same_result))
        return cls(plan=plan, batch=batch, params=params, started=now, model=model)

    @property
    def scheduler(self) -> StepScheduler[Hashable, P.Result]:
        return self.batch.scheduler  # type: ignore[return-value]  # holds the step's accepted Results

    @property
    def verification(self) -> Verification[Hashable, P.Result]:
        return self.batch.verification

    @property
    def bounds(self) -> dict[str, float]:
        """The largest gradient and factor elements one honest sample can give with the step's parameters."""
        return self.prepare_checks()

    def prepare_checks(self) -> dict[str, float]:
        """The bounds, computed now if they are not yet: the loop asks while the workers compute, so that a
        step's last result (with one worker, its only one) does not wait for them."""
        if self._bounds is None:
            self._bounds = self.model.per_sample_bounds(self.params)
        return self._bounds

    def task(self, unit: int) -> P.Task:
        task = P.decode(self.plan.tasks[unit])
        assert isinstance(task, P.Task)  # encoded by plan_step
        return task

    @property
    def number(self) -> int:
        return self.plan.step

    def results(self) -> dict[Node, P.Result]:
        return self.scheduler.results_by_node()

"""Which unit of work goes to which worker, and which result counts: pure logic, no sockets.

A step's batch is cut into a fixed number of shards (`lenet.shards.split_batch`) and
the shards are grouped into units, subtrees of the reduction tree
(`work_units`, below).  The scheduler hands units to workers, takes a
unit back when its worker dies, leaves, or misses the task deadline, and accepts
exactly one result per unit: the first from a worker that currently holds it.
Anything else (a duplicate, a result from a worker whose task was revoked, a unit
or step that does not exist) is refused with a reason, never applied.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, Hashable, TypeVar

from coordinator.refusals import Reason
from lenet.reduction import Node, nodes_at_depth

W = TypeVar("W", bound=Hashable)  # a worker's identity
R = TypeVar("R")  # an accepted result


def work_units(num_shards: int, workers: int) -> list[Node]:
    """The coarsest cut of the tree that keeps `workers` workers about equally busy.

    Fewer, larger units mean fewer messages; the step takes as long as the busiest
    worker's shards.  Among the cuts with the least busiest-worker load, take the
    coarsest.
    """
    best: tuple[int, list[Node]] | None = None
    depth = 0
    while True:
        units = nodes_at_depth(num_shards, depth)
        sizes = sorted((hi - lo for lo, hi in units), reverse=True)
        loads = [0] * max(1, workers)
        for size in sizes:  # largest first onto the least-loaded worker
            loads[loads.index(min(loads))] += size
        if best is None or max(loads) < best[0]:
            best = (max(loads), units)
        if len(units) == num_shards:
            return best[1]
        depth += 1


@dataclass
class Assignment(Generic[W]):
    worker: W
    deadline: float


class StepScheduler(Generic[W, R]):
    """Bookkeeping of one step's units.  Time is passed in, so tests control it."""

    def __init__(self, step: int, units: list[Node], samples: list[int], task_timeout: float):
        if len(units) != len(samples):
            raise ValueError(f"{len(units)} units but {len(samples)} sample counts")
        self.step = step
        self.units = units
        self.samples = samples
        self.task_timeout = task_timeout
        self.index = {first: i for i, (first, _) in enumerate(units)}
        self.pending: deque[int] = deque(range(len(units)))
        self.assigned: dict[int, Assignment[W]] = {}
        self.results: dict[int, R] = {}

    @property
    def complete(self) -> bool:
        return len(self.results) == len(self.units)

    def held_by(self, worker: W) -> list[int]:
        return [unit for unit, a in self.assigned.items() if a.worker == worker]

    def next_unit(self, worker: W, now: float) -> int | None:
        """Give `worker` the next pending unit, or None if there is none."""
        if not self.pending:
            return None
        unit = self.pending.popleft()
        self.assigned[unit] = Assignment(worker, now + self.task_timeout)
        return unit

    def _revoke(self, unit: int) -> int:
        del self.assigned[unit]
        self.pending.appendleft(unit)
        lo, hi = self.units[unit]
        return hi - lo

    def release_worker(self, worker: W) -> int:
        """The worker died or left: its units go back to the front of the queue.

        Returns the number of shards taken back.
        """
        return sum(self._revoke(unit) for unit in sorted(self.held_by(worker), reverse=True))

    def expire(self, now: float) -> list[tuple[int, W]]:
        """Take back every unit whose deadline has passed; returns (unit, worker) pairs."""
        late = [(u, a.worker) for u, a in self.assigned.items() if a.deadline <= now]
        for unit, _ in sorted(late, reverse=True):
            self._revoke(unit)
        return late

    def next_deadline(self) -> float | None:
        return min((a.deadline for a in self.assigned.values()), default=None)

    def check(self, worker: W, step: int, first: int, shards: int, count: int) -> Reason | None:
        """Why a result may not be accepted, or None if it may."""
        if step != self.step:
            return Reason.STALE_STEP if step < self.step else Reason.FUTURE_STEP
        unit = self.index.get(first)
        if unit is None or self.units[unit] != (first, first + shards):
            return Reason.UNKNOWN_SHARD
        if unit in self.results:
            return Reason.DUPLICATE
        held = self.assigned.get(unit)
        if held is None or held.worker != worker:
            return Reason.LATE  # the task was taken back (deadline, death) or never given
        if count != self.samples[unit]:
            return Reason.WRONG_COUNT
        return None

    def accept(self, first: int, result: R) -> None:
        """Record the result of a unit that `check` allowed."""
        unit = self.index[first]
        del self.assigned[unit]
        self.results[unit] = result

    def reject_result(self, first: int) -> int:
        """A held unit's result was unusable (NaN gradients): compute it again elsewhere."""
        unit = self.index[first]
        return self._revoke(unit) if unit in self.assigned else 0

    def results_by_node(self) -> dict[Node, R]:
        return {self.units[u]: r for u, r in self.results.items()}

"""Which unit of work goes to which worker, and which result counts: pure logic, no sockets.

A step's batch is cut into a fixed number of shards (`lenet.shards.shard_sizes`) and
the shards are grouped into units, runs of consecutive shards sized for the
members' capacities (`work_units`, below).  The scheduler hands units to workers, takes a
unit back when its worker dies, leaves, or misses the task deadline, and accepts
exactly one result per unit: the first from a worker that currently holds it.
Anything else (a duplicate, a result from a worker whose task was revoked, a unit
or step that does not exist) is refused with a reason, never applied.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Hashable, TypeVar

from coordinator.refusals import Reason
from lenet.reduction import Node

W = TypeVar("W", bound=Hashable)  # a worker's identity
R = TypeVar("R")  # an accepted result


def work_units(num_shards: int, capacities: Sequence[int]) -> tuple[list[Node], list[int]]:
    """Runs of consecutive shards, one per member, sized in proportion to the members' capacities.

    `capacities`: one per member, 1 for a worker, its workers' count for a relay.
    Every member gets at least one shard while there are shards enough (the
    smallest capacities go without when there are not), and the sizes add up to
    `num_shards` (largest remainders first).  A unit need not be a node of the
    reduction tree: its result holds the sums of its cover's nodes, so any cut
    gives the same bits.  Returns the units, left to right in order of decreasing
    capacity, and the capacity each was cut for.
    """
    caps = sorted((c for c in capacities if c > 0), reverse=True)[:num_shards] or [1]
    total = sum(caps)
    ideal = [num_shards * c / total for c in caps]
    sizes = [max(1, int(x)) for x in ideal]
    by_remainder = sorted(range(len(caps)), key=lambda i: (sizes[i] - ideal[i], i))
    for i in by_remainder[: max(0, num_shards - sum(sizes))]:
        sizes[i] += 1
    while sum(sizes) > num_shards:  # the floor of one shard each overshot: take from the largest
        sizes[max(range(len(sizes)), key=lambda i: (sizes[i], -i))] -= 1
    units, lo = [], 0
    for size in sizes:
        units.append((lo, lo + size))
        lo += size
    return units, caps


class RecentRate:
    """The recent median time per sample, of the last `window` measurements."""

    def __init__(self, window: int = 64):
        self.recent: deque[float] = deque(maxlen=window)

    def record(self, seconds: float, samples: int) -> None:
        self.recent.append(seconds / max(1, samples))

    def expected(self, samples: int) -> float | None:
        """The recent median time for `samples` samples; None before anything is measured."""
        if not self.recent:
            return None
        return sorted(self.recent)[len(self.recent) // 2] * samples


class DeadlinePolicy(RecentRate):
    """How long a unit may take: a multiple of the recent median time per sample, with a floor and a cap.

    A deadline that follows the measured compute time makes a stall cost seconds,
    not the fixed cap; the floor keeps a burst of fast (or falsely fast) reports
    from making honest workers miss; the cap is `--task-timeout`.  Until anything
    is measured, the cap applies.
    """

    def __init__(self, cap: float, floor: float = 3.0, multiple: float = 10.0, window: int = 64):
        super().__init__(window)
        self.cap, self.floor, self.multiple = cap, floor, multiple

    def timeout(self, samples: int) -> float:
        expected = self.expected(samples)
        return self.cap if expected is None else min(self.cap, max(self.floor, self.multiple * expected))


@dataclass
class Assignment(Generic[W]):
    worker: W
    since: float
    deadline: float


class StepScheduler(Generic[W, R]):
    """Bookkeeping of one step's units.  Time is passed in, so tests control it.

    A unit is held by one worker (its primary) and, once every unit is out and a
    worker is idle, possibly by a second one (a backup, as in MapReduce): the first
    valid result wins and the other is a duplicate.  Results are deterministic,
    so which one wins changes nothing.
    """

    def __init__(self, step: int, units: list[Node], samples: list[int], task_timeout: float,
                 weights: list[int] | None = None):
        if len(units) != len(samples):
            raise ValueError(f"{len(units)} units but {len(samples)} sample counts")
        self.step = step
        self.units = units
        self.samples = samples
        self.weights = weights or [1] * len(units)  # the capacity each unit was cut for
        self.task_timeout = task_timeout  # the default deadline; callers may pass one per unit
        self.index = {first: i for i, (first, _) in enumerate(units)}
        self.pending: deque[int] = deque(range(len(units)))
        self.assigned: dict[int, Assignment[W]] = {}
        self.backups: dict[int, Assignment[W]] = {}
        self.excluded: dict[int, W] = {}  # unit -> the worker that may not compute it (its first answer awaits a check)
        self.results: dict[int, R] = {}
        self.holding: dict[W, int] = {}  # units each worker holds now: asked of every worker at every turn
        self.given: dict[int, set[W]] = {}  # unit -> every worker it was given to in this step
        self.handed_out = 0  # assignments made, primaries and backups: one per unit when nothing went wrong

    def _hold(self, table: dict[int, Assignment[W]], unit: int, assignment: Assignment[W]) -> None:
        table[unit] = assignment
        self.handed_out += 1
        self.given.setdefault(unit, set()).add(assignment.worker)
        self.holding[assignment.worker] = self.holding.get(assignment.worker, 0) + 1

    def _unhold(self, table: dict[int, Assignment[W]], unit: int) -> Assignment[W]:
        assignment = table.pop(unit)
        left = self.holding[assignment.worker] - 1
        if left:
            self.holding[assignment.worker] = left
        else:
            del self.holding[assignment.worker]
        return assignment

    def holds(self, worker: W) -> int:
        """How many units `worker` holds (as primary or backup)."""
        return self.holding.get(worker, 0)

    @property
    def complete(self) -> bool:
        return len(self.results) == len(self.units)

    def held_by(self, worker: W) -> list[int]:
        return [unit for table in (self.assigned, self.backups) for unit, a in table.items() if a.worker == worker]

    def next_unit(self, worker: W, now: float, timeout: float | None = None, capacity: int = 1) -> int | None:
        """Give `worker` the next pending unit it may compute, or None if there is none.

        A unit cut for its `capacity` first; any other if none is left (members came
        and went since the step was planned).
        """
        unit = next((u for u in self.pending if self.weights[u] == capacity and self.excluded.get(u) != worker),
                    None)
        if unit is None:
            unit = next((u for u in self.pending if self.excluded.get(u) != worker), None)
        if unit is None:
            return None
        self.pending.remove(unit)
        self._hold(self.assigned, unit, Assignment(worker, now, now + (timeout or self.task_timeout)))
        return unit

    def second_opinion(self, first: int, worker: W) -> None:
        """`worker` answered this unit, but its answer is to be checked: queue the unit for anyone else."""
        unit = self.index[first]
        for table in (self.assigned, self.backups):
            if unit in table:
                self._unhold(table, unit)
        self.excluded[unit] = worker
        if unit not in self.pending:
            self.pending.appendleft(unit)

    def readmit(self, unit: int) -> None:
        """The answer that barred a worker from `unit` is void (its author was banned): anyone may compute it."""
        self.excluded.pop(unit, None)

    def discard(self, units: list[int]) -> int:
        """Accepted results that turned out untrustworthy: compute these units again.  Returns shards re-queued."""
        for unit in units:
            del self.results[unit]
            self.pending.appendleft(unit)
        return sum(self.units[u][1] - self.units[u][0] for u in units)

    def was_given(self, unit: int, worker: W) -> bool:
        """Whether `worker` was given `unit` at any time in this step (it may since have lost it)."""
        return worker in self.given.get(unit, ())

    def given_at(self, unit: int, worker: W | None) -> float | None:
        """When `worker` was given `unit` (as primary or backup), or None if it does not hold it."""
        return next((t[unit].since for t in (self.assigned, self.backups) if unit in t and t[unit].worker == worker),
                    None)

    def oldest_age(self, now: float) -> float:
        """How long the unit out longest has been out (0 if none): units are given out in order."""
        first = next(iter(self.assigned.values()), None)
        return 0.0 if first is None else now - first.since

    def backup_unit(self, worker: W, now: float, timeout: float | None = None, older_than: float = 0.0) -> int | None:
        """Once every unit is out: give an idle `worker` the oldest outstanding unit, once per unit.

        Only a unit out for more than `older_than` seconds is backed up: a backup of a
        unit about to arrive would only keep its worker busy into the next step.
        """
        if self.pending or self.holds(worker):
            return None
        # `assigned` keeps the order units were given out in: the first candidate is (about) the oldest.
        unit = next((u for u, a in self.assigned.items()
                     if u not in self.backups and a.worker != worker and now - a.since > older_than
                     and self.excluded.get(u) != worker), None)
        if unit is None:
            return None
        self._hold(self.backups, unit, Assignment(worker, now, now + (timeout or self.task_timeout)))
        return unit

    def _drop(self, unit: int) -> int:
        """The unit's primary is gone: its backup takes over, or it is queued again.  Returns shards re-queued."""
        self._unhold(self.assigned, unit)
        if unit in self.backups:
            self._hold(self.assigned, unit, self._unhold(self.backups, unit))
            return 0
        self.pending.appendleft(unit)
        lo, hi = self.units[unit]
        return hi - lo

    def release_worker(self, worker: W) -> int:
        """The worker died, left or was banned: its units go to their backups or back to the front of the queue.

        Returns the number of shards taken back.
        """
        for unit in [u for u, a in self.backups.items() if a.worker == worker]:
            self._unhold(self.backups, unit)
        return sum(self._drop(u) for u in sorted((u for u, a in self.assigned.items() if a.worker == worker),
                                                 reverse=True))

    def expire(self, now: float) -> list[tuple[int, W]]:
        """Take back every assignment whose deadline has passed; returns (unit, worker) pairs."""
        late_backups = [(u, a.worker) for u, a in self.backups.items() if a.deadline <= now]
        for unit, _ in late_backups:
            self._unhold(self.backups, unit)
        late = [(u, a.worker) for u, a in self.assigned.items() if a.deadline <= now]
        for unit, _ in sorted(late, reverse=True):
            self._drop(unit)
        return late + late_backups

    def next_deadline(self) -> float | None:
        return min((a.deadline for t in (self.assigned, self.backups) for a in t.values()), default=None)

    def check(self, worker: W, step: int, first: int, shards: int, count: int) -> Reason | None:
        """Why a result may not be accepted, or None if it may."""
        if step != self.step:
            return Reason.STALE_STEP if step < self.step else Reason.FUTURE_STEP
        unit = self.index.get(first)
        if unit is None or self.units[unit] != (first, first + shards):
            return Reason.UNKNOWN_SHARD
        if unit in self.results:
            return Reason.DUPLICATE
        holders = [t[unit].worker for t in (self.assigned, self.backups) if unit in t]
        if worker not in holders:
            return Reason.LATE  # the task was taken back (deadline, death) or never given
        if count != self.samples[unit]:
            return Reason.WRONG_COUNT
        return None

    def accept(self, first: int, result: R, by: W | None = None) -> list[W]:
        """Record the result of a unit: one that `check` allowed from `by`, or one the coordinator computed.

        Returns the other workers that held the unit and were overtaken (a backup's
        primary, or the other way round).
        """
        unit = self.index[first]
        holders = [self._unhold(t, unit).worker for t in (self.assigned, self.backups) if unit in t]
        self.excluded.pop(unit, None)
        if unit in self.pending:
            self.pending.remove(unit)
        self.results[unit] = result
        return [w for w in holders if w != by]

    def results_by_node(self) -> dict[Node, R]:
        return {self.units[u]: r for u, r in self.results.items()}

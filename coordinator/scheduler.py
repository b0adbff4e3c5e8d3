"""Which shard goes to which worker, and which result counts: pure logic, no sockets.

A step's global batch is cut into a fixed number of shards that does not depend on
the workers (`lenet.data.split_batch`).  The scheduler hands shards to workers, takes each
shard back when its worker dies, leaves, or misses the task deadline, and accepts
exactly one result per shard: the first from a worker that currently holds it.
Anything else (a duplicate, a result from a worker whose task was revoked, a shard
or step that does not exist) is refused with a reason, never applied.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, Hashable, TypeVar

W = TypeVar("W", bound=Hashable)  # a worker's identity
R = TypeVar("R")  # an accepted result


@dataclass
class Assignment(Generic[W]):
    worker: W
    deadline: float


class StepScheduler(Generic[W, R]):
    """Shard bookkeeping of one step.  Time is passed in, so tests control it."""

    def __init__(self, step: int, shard_sizes: list[int], task_timeout: float):
        self.step = step
        self.shard_sizes = shard_sizes
        self.task_timeout = task_timeout
        self.pending: deque[int] = deque(range(len(shard_sizes)))
        self.assigned: dict[int, Assignment[W]] = {}
        self.results: dict[int, R] = {}
        self.redispatched = 0

    @property
    def complete(self) -> bool:
        return len(self.results) == len(self.shard_sizes)

    def held_by(self, worker: W) -> list[int]:
        return [shard for shard, a in self.assigned.items() if a.worker == worker]

    def next_shard(self, worker: W, now: float) -> int | None:
        """Give `worker` the next pending shard, or None if there is none."""
        if not self.pending:
            return None
        shard = self.pending.popleft()
        self.assigned[shard] = Assignment(worker, now + self.task_timeout)
        return shard

    def _revoke(self, shard: int) -> None:
        del self.assigned[shard]
        self.pending.appendleft(shard)
        self.redispatched += 1

    def release_worker(self, worker: W) -> int:
        """The worker died or left: its shards go back to the front of the queue."""
        shards = self.held_by(worker)
        for shard in sorted(shards, reverse=True):
            self._revoke(shard)
        return len(shards)

    def expire(self, now: float) -> list[tuple[int, W]]:
        """Take back every shard whose deadline has passed; returns (shard, worker) pairs."""
        late = [(s, a.worker) for s, a in self.assigned.items() if a.deadline <= now]
        for shard, _ in sorted(late, reverse=True):
            self._revoke(shard)
        return late

    def next_deadline(self) -> float | None:
        return min((a.deadline for a in self.assigned.values()), default=None)

    def check(self, worker: W, step: int, shard: int, count: int) -> str | None:
        """Why a result may not be accepted (a metric reason), or None if it may."""
        if step != self.step:
            return "stale_step" if step < self.step else "future_step"
        if not 0 <= shard < len(self.shard_sizes):
            return "unknown_shard"
        if shard in self.results:
            return "duplicate"
        held = self.assigned.get(shard)
        if held is None or held.worker != worker:
            return "late"  # the task was taken back (deadline, death) or never given
        if count != self.shard_sizes[shard]:
            return "wrong_count"
        return None

    def accept(self, shard: int, result: R) -> None:
        """Record the result of a shard that `check` allowed."""
        del self.assigned[shard]
        self.results[shard] = result

    def reject_result(self, shard: int) -> None:
        """A held shard's result was unusable (NaN gradients): compute it again elsewhere."""
        if shard in self.assigned:
            self._revoke(shard)

    def ordered_results(self) -> list[R]:
        return [self.results[s] for s in range(len(self.shard_sizes))]

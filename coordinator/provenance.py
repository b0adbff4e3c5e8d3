"""Who produced the run's accepted answers, and the states a conviction rewinds to.  No sockets.

Every accepted unit is credited to the member that answered it (behind a relay:
the relay, the only member the coordinator knows).  A member convicted of a lie
may have had unchecked answers accepted in earlier steps.  Every step is
deterministic, so the run is repaired exactly by going back to the state before
the first step that accepted one of its answers and replaying from there without
it.  `Provenance` keeps what that needs, and no more:
  - per member, the step of its first accepted answer and how many were accepted;
  - a snapshot of the run's state (whatever the caller takes: parameters,
    optimizer, step position) at the start of each such step, taken once and
    shared by every member whose first accepted answer came in that step;
  - at most `limit` snapshots: when one more is needed, the one nearest its
    older neighbour goes and its members fall back on that neighbour (an older
    state is always right, it only costs more steps to replay).  The oldest is
    never dropped.
A snapshot goes as soon as no member that may still be convicted points at it:
answers are judged within their own step, so a member that left can no longer
be convicted once that step is over (`retain`).  A verified answer that was
right proves nothing about the unchecked ones before it, so nothing is dropped
for good behaviour: a member's snapshot lasts as long as the member.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

W = TypeVar("W", bound=Hashable)  # a member's identity
S = TypeVar("S")  # a snapshot of the run's state

SNAPSHOT_LIMIT = 16  # of LeNet-5's state (parameters and optimizer, ~0.5 MB): 8 MB at most


@dataclass
class Credit:
    """A member's accepted answers: the step its snapshot starts at, and how many."""

    since: int  # a snapshot's step at or before its first accepted answer
    units: int = 0


@dataclass(frozen=True)
class Rewind(Generic[S]):
    """Go back to `state`, the run's state at the start of step `to`, and replay from there."""

    to: int
    state: S


class Provenance(Generic[W, S]):
    def __init__(self, limit: int = SNAPSHOT_LIMIT):
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self.credits: dict[W, Credit] = {}
        self.snapshots: dict[int, S] = {}  # step -> the state at its start

    def accepted(self, who: W, step: int, take: Callable[[], S]) -> None:
        """An answer of `who` was accepted in `step`; `take()` gives the state at the start of `step`
        (called only when a new snapshot is needed: at a member's first accepted answer)."""
        credit = self.credits.get(who)
        if credit is None:
            if step not in self.snapshots:
                self.snapshots[step] = take()
                self._bound()
            credit = self.credits[who] = Credit(since=self._at_or_before(step))
        credit.units += 1

    def convicted(self, who: W, step: int) -> Rewind[S] | None:
        """`who` is convicted during `step`: where to go back to, or None if nothing of it was accepted
        before `step` (this step's own answers are taken back by the step itself).

        Snapshots after the point gone back to held the lie and go; members credited only after it
        are credited afresh as the replay accepts their answers again.
        """
        credit = self.credits.pop(who, None)
        if credit is None or credit.since >= step:
            self._drop_unreferenced()
            return None
        to = credit.since
        state = self.snapshots[to]
        for step_ in [s for s in self.snapshots if s > to]:
            del self.snapshots[step_]
        for member in [m for m, c in self.credits.items() if c.since > to]:
            del self.credits[member]
        self._drop_unreferenced()
        return Rewind(to, state)

    def retain(self, members: Collection[W]) -> None:
        """A step is over: of the members gone, none can be convicted any more; forget them."""
        for gone in [m for m in self.credits if m not in members]:
            del self.credits[gone]
        self._drop_unreferenced()

    def _at_or_before(self, step: int) -> int:
        return max(s for s in self.snapshots if s <= step)

    def _bound(self) -> None:
        while len(self.snapshots) > self.limit:
            steps = sorted(self.snapshots)
            # The snapshot nearest its older neighbour: its members lose the fewest steps by falling back.
            drop = min(steps[1:], key=lambda s: s - steps[steps.index(s) - 1])
            older = steps[steps.index(drop) - 1]
            del self.snapshots[drop]
            for credit in self.credits.values():
                if credit.since == drop:
                    credit.since = older

    def _drop_unreferenced(self) -> None:
        used = {c.since for c in self.credits.values()}
        for step in [s for s in self.snapshots if s not in used]:
            del self.snapshots[step]

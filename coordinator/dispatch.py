"""Which member gets which unit now: who computes at all, first-time dispatch, prefetch and backups.  Pure;
time is passed in.

The coordinator and a relay hand out work by the same rules, so they are written
once here:
  - on one machine at most as many members compute at once as it has cores
    (`sharing_cores`): eight workers on two cores would only take turns on them,
    each step paying eight parameter messages, eight results and the switching for
    the work of two; the others stand by: they back up stragglers, and one takes
    over when a computing one is suspect, lost or gone;
  - pending units go round-robin to the members that may get work, up to
    `prefetch` held at once each (a unit cut for a member's capacity first);
  - once every unit is out, an idle member backs up the oldest unit still out
    for longer than `backup_after` (below), once per unit: the first valid
    result wins, and results are deterministic, so which one changes nothing.

A member whose parameters are not yet those of the unit's step is sent them
first, once per step (`needs_params`).  The caller only moves the messages.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from coordinator.scheduler import DeadlinePolicy, RecentRate, StepScheduler

W = TypeVar("W", bound=Hashable)

PREFETCH = 2  # units the coordinator lets a worker hold at once: hides the round trip between units
# A unit out for this many times its expected time, and at least BACKUP_AFTER seconds,
# is also given to an idle member.  Earlier, a backup would mostly keep that member
# busy into the next step; later, a stalled member costs more than it must.  The
# expected time is the larger of the members' compute time and the turnaround the
# dispatcher sees (compute, network and its own queue): a busy coordinator whose
# results wait in its queue must not take them for stragglers.
STRAGGLER, BACKUP_AFTER = 4.0, 0.5


def sharing_cores(members: Sequence[tuple[W, str, int]]) -> list[W]:
    """Of `members` (identity, host, cores), in their order, those that compute: on each host the first
    as many as its cores (the most any of its members says); every member of an unknown host ("")."""
    limit: dict[str, int] = {}
    for _, host, cores in members:
        limit[host] = max(cores, limit.get(host, 0))
    taken: dict[str, int] = {}
    kept = []
    for member, host, _ in members:
        if host and taken.get(host, 0) >= limit[host]:
            continue
        taken[host] = taken.get(host, 0) + 1
        kept.append(member)
    return kept


@dataclass(frozen=True)
class Give(Generic[W]):
    """Send `unit` of `schedulers[batch]` to `member`; `backup`: it is a copy of a unit out elsewhere."""

    member: W
    batch: int
    unit: int
    backup: bool


def backup_after(samples: int, deadlines: DeadlinePolicy, turnaround: RecentRate | None) -> float | None:
    """How long a unit of `samples` samples may be out before it is backed up; None before anything is measured."""
    expected = deadlines.expected(samples)
    if expected is None:
        return None
    seen = turnaround.expected(samples) if turnaround is not None else None
    return max(BACKUP_AFTER, STRAGGLER * max(expected, seen or 0.0))


def plan_gives(schedulers: Sequence[StepScheduler[W, object]], members: Sequence[tuple[W, int]], now: float,
               deadlines: DeadlinePolicy, turnaround: RecentRate | None = None,
               prefetch: int = PREFETCH, standby: Sequence[tuple[W, int]] = (),
               answered: Mapping[W, int] | None = None) -> list[Give[W]]:
    """The units to hand out now, oldest batch first; the schedulers record each as given.

    `members`: (identity, capacity) of every member that may get work, in dispatch
    order; `standby`: members that only back up stragglers (`sharing_cores` left them
    out), after the others.  A member holds at most `prefetch` units across all `schedulers`,
    not counting the `answered` ones: units it has answered whose answers wait to be judged
    (a step handed out early), which it is no longer busy with.
    """
    gives: list[Give[W]] = []
    answered = answered or {}
    held = {m: sum(s.holds(m) for s in schedulers) - answered.get(m, 0) for m, _ in [*members, *standby]}
    for batch, sched in enumerate(schedulers):
        timeout = deadlines.timeout(max(sched.samples))
        progress = True
        while sched.pending and progress:
            progress = False
            for member, capacity in members:
                if not sched.pending or held[member] >= prefetch:
                    continue
                unit = sched.next_unit(member, now, timeout, capacity=capacity)
                if unit is not None:
                    gives.append(Give(member, batch, unit, backup=False))
                    held[member] += 1
                    progress = True
    for batch, sched in enumerate(schedulers):
        largest = max(sched.samples)
        older_than = backup_after(largest, deadlines, turnaround)
        if sched.pending or older_than is None or sched.oldest_age(now) <= older_than:
            continue  # no straggler: the common case, decided without a look at every member
        timeout = deadlines.timeout(largest)
        for member, _ in [*members, *standby]:
            if held[member]:
                continue
            unit = sched.backup_unit(member, now, timeout, older_than=older_than)
            if unit is not None:
                gives.append(Give(member, batch, unit, backup=True))
                held[member] += 1
    return gives

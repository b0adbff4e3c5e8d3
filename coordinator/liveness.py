"""Members that stop answering, taken out of the run, and a run that cannot progress.  No sockets of its own:
it acts through the hub (coordinator/hub.py); time is passed in.

Each turn of the loop (`check`): members silent past the heartbeat timeout are
presumed dead; the units whose deadline passed are taken back to be given again,
and a member that missed `max_misses` deadlines in a row without answering is
removed.  Local worker processes seen to exit are dropped at once (`exited`), not
at the heartbeat timeout.  A run is stuck (`stuck`) when work keeps expiring and
every member's answers are refused for one reason (RefusalStreaks,
coordinator/refusals.py): `check` counts the expired units, `refused` (the hub's
on_reject) a member's refusals, and `accepted` clears them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from coordinator.hub import Hub
from coordinator.metrics import Metrics
from coordinator.refusals import Reason, RefusalStreaks
from coordinator.scheduler import DeadlinePolicy, StepScheduler
from lenet.cli import counted

log = logging.getLogger("coordinator")


class Liveness:
    def __init__(self, hub: Hub, deadlines: DeadlinePolicy, metrics: Metrics, stuck_after: int) -> None:
        self.hub, self.members, self.deadlines, self.metrics = hub, hub.members, deadlines, metrics
        self.streaks = RefusalStreaks(stuck_after)

    def check(self, now: float, sched: StepScheduler | None) -> None:
        """Drop the silent members; take back the units of `sched` (the step under way, if any) past their
        deadline, and remove a member that keeps missing them."""
        self.hub.drop_silent(now)
        if sched is None:
            return
        expired = sched.expire(now)
        self.streaks.expired(len(expired))
        for unit, identity in expired:
            lo, hi = sched.units[unit]
            self.metrics.redispatched.inc(hi - lo)
            log.warning("shards %d-%d of step %d missed their %.0f s deadline on %s: re-dispatched", lo, hi - 1,
                        sched.step, self.deadlines.timeout(sched.samples[unit]), self.hub.name(identity))
            if self.members.suspect(identity, now):
                self.metrics.workers_removed.inc()
                self.hub.remove(identity, f"removed: missed {self.members.max_misses} deadlines in a row "
                                          "without answering")

    def exited(self, pids: Iterable[int]) -> None:
        """Local worker processes seen to exit: drop them now rather than at the heartbeat timeout."""
        for identity in self.members.with_pids(pids):
            self.metrics.workers_lost.inc()
            self.hub.remove(identity, "exited")

    def refused(self, reason: Reason, identity: bytes | None, detail: str) -> None:
        """A message was refused; a member's refusals count towards a stuck run (a stranger's do not)."""
        if identity is not None and identity in self.members:
            self.streaks.refused(identity, reason, detail)

    def accepted(self) -> None:
        """A result was accepted: the run progresses."""
        self.streaks.accepted()

    def stuck(self) -> str | None:
        """Why the run cannot progress, when work keeps expiring and every member's answers are refused for one
        reason; else None."""
        streak = self.streaks.stuck(self.members.members)  # looked at only once work has kept expiring
        if streak is None:
            return None
        hint = ("a unit's result does not fit a message: lower --batch-size or raise --shards"
                if streak.reason is Reason.TOO_LARGE else "see the rejected-message lines above")
        return (f"every result refused: {self.streaks.taken_back} units re-dispatched and every answer of "
                f"the {counted(len(self.members), 'worker')} refused ({streak.count}+ in a row, {streak.reason.value}: "
                f"{streak.detail[:120]}), none accepted; {hint}")

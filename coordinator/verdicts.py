"""The trust rules' decisions (coordinator/trust.py), carried out on the step under way.  No sockets of its own:
it acts through the hub; the clock is passed in.

`Verification` decides, `Verdicts` does, in order:
  - `Accept`: the unit's result is in (a backup that was overtaken gets no new
    work until it answers), its sender is credited for a rewind (coordinator/
    rewinds.py) and the turnaround measured, and the stuck count cleared;
  - `Vouch`: a suspect member has shown it computes; `SecondOpinion`: another
    member is to compute the unit;
  - `Recompute`: the unit computed here with the step's parameters, the reference
    every doubt is settled by, and fed back to the rules (computed once a step;
    `prepare` computes it ahead when no other member could check the unit);
  - `Ban`: out for the run; its answers of this step are discarded and computed
    again, or, when answers of it were accepted in earlier steps, the run is
    rewound (the caller then drops the step: what else was decided for it is moot);
  - `Diverged`: the model itself is not finite: TrainingDiverged.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from coordinator import protocol as P
from coordinator import trust
from coordinator.hub import Hub
from coordinator.liveness import Liveness
from coordinator.metrics import Metrics
from coordinator.phases import StepTimes
from coordinator.refusals import Reason
from coordinator.rewinds import Rewinds
from coordinator.scheduler import RecentRate
from coordinator.step import Step
from coordinator.training import TrainingDiverged
from lenet.architecture import Model
from lenet.shards import unit_sums


class Verdicts:
    """`turnaround` measures the time from giving a unit out to accepting it; `model` is the run's."""

    def __init__(self, hub: Hub, metrics: Metrics, times: StepTimes, turnaround: RecentRate, liveness: Liveness,
                 rewinds: Rewinds, model: type[Model], clock: Callable[[], float] = time.monotonic) -> None:
        self.hub, self.members, self.metrics, self.times = hub, hub.members, metrics, times
        self.turnaround, self.liveness, self.rewinds, self.clock = turnaround, liveness, rewinds, clock
        self.local_model = model()  # settles doubts by computing a unit here

    def carry_out(self, step: Step, decisions: list[trust.Decision]) -> bool:
        """Do what the trust rules decided for `step`, in order; a Recompute feeds its answer back to them.
        False when a ban rewound the run: the step is to be dropped."""
        queue = list(decisions)
        while queue:
            d = queue.pop(0)
            if isinstance(d, trust.Accept):
                if d.unit not in step.scheduler.results:
                    self._accept(step, d.by, d.unit, d.result)
                    if d.unit in step.verification.verify:
                        self.metrics.units_verified.inc()
            elif isinstance(d, trust.Vouch):
                self.members.vouch(d.who)
            elif isinstance(d, trust.SecondOpinion):
                step.scheduler.second_opinion(step.plan.units[d.unit][0], d.exclude)  # another worker computes it
            elif isinstance(d, trust.Recompute):
                own = self._own(step, d.unit)
                queue[:0] = step.verification.own(d.unit, own, P.finite(own))
            elif isinstance(d, trust.Ban):
                if not self._ban(step, d):
                    return False
            elif isinstance(d, trust.Diverged):
                lo, hi = step.plan.units[d.unit]
                raise TrainingDiverged(f"step {step.number}: the coordinator's own computation of shards "
                                       f"{lo}-{hi - 1} is not finite either")
        return True

    def prepare(self, step: Step) -> None:
        """Compute here now the step's units chosen for verification that are not accepted yet.  The loop asks
        while the one member that may compute them does, so no other can check its answer: the coordinator's
        own is needed, and is then ready when that answer comes instead of keeping the step waiting for it."""
        for unit in sorted(step.verification.verify):
            if unit not in step.scheduler.results:
                self._own(step, unit)

    def _own(self, step: Step, unit: int) -> P.Result:
        """The unit computed here, once a step, with the step's parameters: the reference every doubt is
        settled by."""
        if unit not in step.own:
            step.own[unit] = self._compute(step, unit)
        return step.own[unit]

    def _compute(self, step: Step, unit: int) -> P.Result:
        task = step.task(unit)
        self.local_model.params = step.params
        start = time.perf_counter()
        with self.times.timed("recompute"):
            sums = unit_sums(self.local_model, task.pixels, task.labels, task.sizes, task.first, task.num_shards)
        self.metrics.units_recomputed_locally.inc()
        return P.result_of(task.step, sums, time.perf_counter() - start)

    def _ban(self, step: Step, ban: trust.Ban) -> bool:
        """Out for the run; its answers of this step are discarded and computed again, or the run is rewound
        (False)."""
        if ban.reason is Reason.MISMATCH:
            self.metrics.verify_mismatches.inc()
            self.hub.reject(Reason.MISMATCH, ban.who, f"{ban.detail} differ from the coordinator's own computation")
            why = "its result of a verified unit differs from the coordinator's own computation"
        else:
            why = f"{ban.reason.value} gradients for {ban.detail}"
        already = ban.who in self.members.banned
        member = self.members.ban(ban.who)
        if already:
            return True
        self.metrics.workers_banned.inc()
        name = member.label if member is not None else self.hub.name(ban.who)  # it may have left this step
        rewind = self.rewinds.convicted(ban.who, step.number)
        if rewind is None:
            mine = step.verification.convicted(ban.who)
            self.metrics.redispatched.inc(step.scheduler.discard(mine))
            for unit in step.scheduler.excluded.copy():
                if step.scheduler.excluded[unit] == ban.who:
                    step.scheduler.readmit(unit)
        if member is not None:
            self.hub.forget(ban.who, member, f"banned for the run: {why}")
        if rewind is None:
            return True
        self.rewinds.rewind(rewind, step.number, name)
        return False

    def _accept(self, step: Step, identity: bytes | None, unit: int, result: P.Result) -> None:
        sched = step.scheduler
        since = sched.given_at(unit, identity)
        if since is not None:
            self.turnaround.record(self.clock() - since, sched.samples[unit])
        overtaken = sched.accept(result.first, result, by=identity)
        self.liveness.accepted()
        if identity is not None:
            self.rewinds.accepted(identity, step.number)
        now = self.clock()
        for other in overtaken:  # it had the unit and did not answer first: no new work until it answers
            lo, hi = sched.units[unit]
            self.hub.warn_limited(f"overtaken {self.hub.name(other)}",
                                  f"shards {lo}-{hi - 1} of step {result.step}: {self.hub.name(other)} was "
                                  "overtaken by a backup; no new work for it until it answers")
            self.members.suspect(other, now, missed=False)

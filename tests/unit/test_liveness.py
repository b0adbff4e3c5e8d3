"""Members that stop answering (coordinator/liveness.py): units past their deadline are taken back, a member that
keeps missing them, falls silent or exits is taken out, and a run whose every answer is refused is stuck."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from coordinator.hub import Hub
from coordinator.liveness import Liveness
from coordinator.membership import Membership
from coordinator.metrics import Metrics
from coordinator.refusals import Reason
from coordinator.scheduler import DeadlinePolicy, StepScheduler
from lenet.model import LeNet5

log = logging.getLogger("coordinator")


class Run:
    """Members a (pid 1) and b (pid 2), the step under way's units (shards 0-1, 2-3, each due 10 s after it is
    given), and the hub of a coordinator that sends nothing in these tests (no endpoint)."""

    def __init__(self, stuck_after: int = 4):
        self.members = Membership[bytes](heartbeat_timeout=30.0)
        self.members.join(b"a", "a", pid=1, now=0.0)
        self.members.join(b"b", "b", pid=2, now=0.0)
        self.sched = StepScheduler(step=7, units=[(0, 2), (2, 4)], samples=[8, 8], task_timeout=10.0)
        self.metrics = Metrics(CollectorRegistry())
        self.hub = Hub(None, self.members, "probe", "coordinator", log, self.sched.release_worker, LeNet5,
                       metrics=self.metrics, on_reject=lambda *refusal: self.liveness.refused(*refusal))
        self.liveness = Liveness(self.hub, DeadlinePolicy(cap=10.0), self.metrics, stuck_after=stuck_after)

    def counted(self, name: str) -> float:
        return self.metrics.registry.get_sample_value(name)


def test_a_unit_past_its_deadline_is_taken_back_and_given_again():
    run = Run()
    assert run.sched.next_unit(b"a", 0.0) == 0
    run.liveness.check(9.9, run.sched)
    assert list(run.sched.pending) == [1]
    run.liveness.check(10.0, run.sched)
    assert list(run.sched.pending) == [0, 1] and run.counted("lenet_shards_redispatched_total") == 2
    assert b"a" in run.members and run.members.eligible(10.0) == [b"b"]  # suspect: no new work until it answers


def test_a_member_that_keeps_missing_deadlines_without_answering_is_removed():
    run = Run()
    for t in (0.0, 10.0, 20.0):
        run.members.touch(b"a", t)  # heartbeats do not help: it does not answer its tasks
        run.sched.next_unit(b"a", t)
        run.liveness.check(t + 10.0, run.sched)
    assert b"a" not in run.members and run.counted("lenet_workers_removed_total") == 1


def test_silent_members_are_dropped_whether_or_not_a_step_is_under_way():
    run = Run()
    run.members.touch(b"b", 20.0)
    run.liveness.check(30.5, None)
    assert list(run.members.members) == [b"b"] and run.counted("lenet_workers_lost_total") == 1


def test_exited_local_workers_are_dropped_at_once_and_their_units_given_again():
    run = Run()
    run.sched.next_unit(b"b", 0.0)
    run.liveness.exited([2, 99])
    assert list(run.members.members) == [b"a"] and list(run.sched.pending) == [0, 1]
    assert run.counted("lenet_workers_lost_total") == 1


def refuse_all(run: Run, reason: Reason = Reason.TOO_LARGE) -> None:
    for who in (b"a", b"b"):
        run.hub.reject(reason, who, "a result of 9 MB")


def expire(run: Run, units: int, now: float) -> None:
    for _ in range(units):
        run.sched.next_unit(b"a", now)
    run.liveness.check(now + 10.0, run.sched)


def test_a_run_is_stuck_once_work_keeps_expiring_and_every_members_answers_are_refused_for_one_reason():
    run = Run(stuck_after=2)
    refuse_all(run)
    assert run.liveness.stuck() is None  # refused, but no work has kept expiring yet
    expire(run, 2, now=0.0)
    why = run.liveness.stuck()
    assert why is not None and why.startswith("every result refused: 2 units re-dispatched")
    assert "the 2 workers refused (1+ in a row, too_large" in why and "lower --batch-size or raise --shards" in why
    run.liveness.accepted()  # one accepted result: the run progresses
    assert run.liveness.stuck() is None


@pytest.mark.parametrize("refusals", [
    [(b"a", Reason.TOO_LARGE)],  # b is silent, not refused: it may still answer
    [(b"a", Reason.TOO_LARGE), (b"b", Reason.IMPLAUSIBLE)],  # refused for two reasons
    [(b"a", Reason.TOO_LARGE), (b"stranger", Reason.TOO_LARGE)],  # a stranger's refusal is no member's
])
def test_a_run_is_not_stuck_while_a_member_is_not_refused_for_the_same_reason(refusals):
    run = Run(stuck_after=2)
    for who, reason in refusals:
        run.hub.reject(reason, who, "detail")
    expire(run, 2, now=0.0)
    assert run.liveness.stuck() is None


def test_the_hint_of_another_reason_points_at_the_rejected_message_lines():
    run = Run(stuck_after=1)
    refuse_all(run, Reason.IMPLAUSIBLE)
    expire(run, 1, now=0.0)
    assert run.liveness.stuck().endswith("see the rejected-message lines above")

"""The dispatch rules (coordinator/dispatch.py): who gets which unit now, shared by coordinator and relay."""

from coordinator.dispatch import BACKUP_AFTER, Give, backup_after, plan_gives, sharing_cores
from coordinator.scheduler import DeadlinePolicy, RecentRate, StepScheduler


def scheduler(units: int, samples: int = 8) -> StepScheduler[str, str]:
    return StepScheduler(0, [(i, i + 1) for i in range(units)], [samples] * units, task_timeout=30.0)


def measured(seconds_per_sample: float) -> DeadlinePolicy:
    d = DeadlinePolicy(cap=30.0)
    d.record(seconds_per_sample * 8, 8)
    return d


def test_units_go_round_robin_up_to_the_prefetch_limit():
    s = scheduler(5)
    gives = plan_gives([s], [("a", 1), ("b", 1)], now=0.0, deadlines=measured(0.01), prefetch=2)
    assert [(g.member, g.unit) for g in gives] == [("a", 0), ("b", 1), ("a", 2), ("b", 3)]
    assert list(s.pending) == [4]


def test_a_member_holds_at_most_prefetch_units_across_all_batches():
    first, second = scheduler(1), scheduler(2)
    gives = plan_gives([first, second], [("a", 1)], now=0.0, deadlines=measured(0.01), prefetch=1)
    assert gives == [Give("a", 0, 0, backup=False)]
    assert list(second.pending) == [0, 1]


def test_no_backup_while_units_are_pending_or_before_anything_is_measured():
    s = scheduler(2)
    plan_gives([s], [("a", 1)], now=0.0, deadlines=DeadlinePolicy(cap=30.0), prefetch=2)
    assert plan_gives([s], [("a", 1), ("idle", 1)], now=100.0, deadlines=DeadlinePolicy(cap=30.0)) == []


def test_an_idle_member_backs_up_a_unit_out_longer_than_the_straggler_threshold_once():
    s = scheduler(2)
    d = measured(0.01)  # 0.08 s per unit: the threshold is the BACKUP_AFTER floor
    plan_gives([s], [("a", 1), ("b", 1)], now=0.0, deadlines=d)
    s.accept(1, "done", by="b")
    assert plan_gives([s], [("a", 1), ("b", 1)], now=BACKUP_AFTER / 2, deadlines=d) == []
    assert plan_gives([s], [("a", 1), ("b", 1)], now=BACKUP_AFTER + 0.1, deadlines=d) == [Give("b", 0, 0, True)]
    assert plan_gives([s], [("a", 1), ("b", 1), ("c", 1)], now=10.0, deadlines=d) == []  # once per unit


def test_the_threshold_follows_the_larger_of_compute_time_and_turnaround():
    d, seen = measured(0.1), RecentRate()  # 0.8 s per unit of 8 samples
    assert backup_after(8, d, None) == 4 * 0.8
    seen.record(2.0, 8)  # results waited in a busy coordinator's queue
    assert backup_after(8, d, seen) == 4 * 2.0
    assert backup_after(8, DeadlinePolicy(cap=30.0), seen) is None


def test_on_one_machine_only_as_many_members_compute_as_it_has_cores_first_come_first():
    members = [(f"w{i}", "aaaaaaaaaaaaaaaa", 2) for i in range(8)]
    assert sharing_cores(members) == ["w0", "w1"]


def test_machines_are_counted_apart_and_an_unknown_machine_limits_nobody():
    members = [("a0", "aaaaaaaaaaaaaaaa", 1), ("b0", "bbbbbbbbbbbbbbbb", 2), ("a1", "aaaaaaaaaaaaaaaa", 1),
               ("r0", "", 1), ("b1", "bbbbbbbbbbbbbbbb", 2), ("r1", "", 1), ("b2", "bbbbbbbbbbbbbbbb", 2)]
    assert sharing_cores(members) == ["a0", "b0", "r0", "b1", "r1"]


def test_a_machine_has_the_most_cores_any_of_its_members_says():
    members = [("w0", "aaaaaaaaaaaaaaaa", 1), ("w1", "aaaaaaaaaaaaaaaa", 3), ("w2", "aaaaaaaaaaaaaaaa", 1),
               ("w3", "aaaaaaaaaaaaaaaa", 1)]
    assert sharing_cores(members) == ["w0", "w1", "w2"]


def test_a_member_left_out_takes_over_when_one_that_computed_is_no_longer_offered():
    """The caller passes only the members that may get work: a suspect or lost one is not among them."""
    everyone = [(f"w{i}", "aaaaaaaaaaaaaaaa", 2) for i in range(4)]
    assert sharing_cores([m for m in everyone if m[0] != "w0"]) == ["w1", "w2"]


def test_members_standing_by_get_no_first_time_work_but_back_up_a_straggler():
    s = scheduler(2)
    d = measured(0.01)
    assert [(g.member, g.unit) for g in plan_gives([s], [("a", 1)], 0.0, d, standby=[("spare", 1)])] == [
        ("a", 0), ("a", 1)]
    late = backup_after(8, d, None) + 0.01
    assert plan_gives([s], [("a", 1)], late, d, standby=[("spare", 1)]) == [Give("spare", 0, 0, backup=True)]

"""Unit plans and the accept/refuse rules of one step."""

import pytest

from coordinator.scheduler import StepScheduler, work_units


def make(units=((0, 2), (2, 4)), timeout=10.0):
    return StepScheduler(step=5, units=list(units), samples=[8] * len(units), task_timeout=timeout)


def test_each_unit_is_accepted_once_from_its_holder():
    s = make()
    assert s.next_unit("a", 0) == 0 and s.next_unit("b", 0) == 1 and s.next_unit("c", 0) is None
    assert s.check("b", 5, 0, 2, 8) == "late"  # b does not hold unit 0
    assert s.check("a", 5, 0, 2, 8) is None
    s.accept(0, "ra")
    assert s.check("a", 5, 0, 2, 8) == "duplicate"
    assert s.check("b", 4, 2, 2, 8) == "stale_step"
    assert s.check("b", 6, 2, 2, 8) == "future_step"
    assert s.check("b", 5, 7, 1, 8) == "unknown_shard"
    assert s.check("b", 5, 2, 1, 8) == "unknown_shard"  # not the unit that was given out
    assert s.check("b", 5, 2, 2, 9) == "wrong_count"
    s.accept(2, "rb")
    assert s.complete and s.results_by_node() == {(0, 2): "ra", (2, 4): "rb"}


def test_a_step_hands_out_each_unit_once_unless_something_goes_wrong():
    s = make()
    s.next_unit("a", 0)
    s.next_unit("b", 0)
    assert s.handed_out == 2  # one assignment per unit: its round trips measure its work
    s.second_opinion(0, "a")  # a's answer is to be checked: unit 0 goes out again
    s.next_unit("b", 1)
    assert s.handed_out == 3
    s.accept(2, "rb", by="b")
    assert s.backup_unit("c", 20) == 0  # every unit out: a backup is one more
    assert s.handed_out == 4


def test_dead_worker_units_return_to_the_front():
    s = make(((0, 1), (1, 2), (2, 3), (3, 4)))
    for w in "aabb":
        s.next_unit(w, 0)
    assert s.release_worker("a") == 2
    assert list(s.pending) == [0, 1]
    assert s.next_unit("b", 1) == 0
    assert s.check("a", 5, 1, 1, 8) == "late"  # a's late answer is never applied


def test_missed_deadline_takes_the_unit_back():
    s = make(timeout=10)
    s.next_unit("a", 0)
    s.next_unit("b", 5)
    assert s.next_deadline() == 10
    assert s.expire(9.9) == []
    assert s.expire(10) == [(0, "a")]
    assert s.held_by("b") == [1]
    s.next_unit("b", 11)
    assert s.check("a", 5, 0, 2, 8) == "late"
    assert s.check("b", 5, 0, 2, 8) is None


@pytest.mark.parametrize("capacities, expected", [
    ([1], [(0, 8)]), ([1, 1], [(0, 4), (4, 8)]), ([1] * 4, [(0, 2), (2, 4), (4, 6), (6, 8)]),
    ([1] * 3, [(0, 3), (3, 6), (6, 8)]), ([1] * 8, [(i, i + 1) for i in range(8)]),
    ([1] * 32, [(i, i + 1) for i in range(8)]),  # more members than shards: one shard each, the rest idle
    ([4, 1, 1, 1, 1], [(0, 4), (4, 5), (5, 6), (6, 7), (7, 8)]),  # a relay of 4 workers and 4 workers
    ([1, 3], [(0, 6), (6, 8)]),  # largest capacity first
    ([0, 1], [(0, 8)]),  # a relay with no workers behind it gets nothing
])
def test_units_follow_capacity_and_cover_the_batch(capacities, expected):
    assert work_units(8, capacities)[0] == expected


@pytest.mark.parametrize("members", [1, 2, 3, 5, 7, 16, 33, 63, 64])
def test_every_member_gets_work_while_there_are_shards(members):
    units, weights = work_units(64, [1] * members)
    sizes = [hi - lo for lo, hi in units]
    assert len(units) == members and weights == [1] * members
    assert units[0][0] == 0 and units[-1][1] == 64 and all(a[1] == b[0] for a, b in zip(units, units[1:]))
    assert max(sizes) - min(sizes) <= 1  # as even as whole shards allow


def test_a_member_is_given_a_unit_cut_for_its_capacity_first():
    units, weights = work_units(8, [4, 1, 1, 1, 1])
    s = StepScheduler(step=5, units=units, samples=[8] * len(units), task_timeout=10.0, weights=weights)
    assert s.next_unit("worker", 0) == 1  # the relay's unit is skipped by a worker
    assert s.next_unit("relay", 0, capacity=4) == 0
    for w in "abc":
        s.next_unit(w, 0)
    assert s.next_unit("relay", 0, capacity=4) is None  # none left at all
    s.release_worker("a")
    assert s.next_unit("relay", 0, capacity=4) == 2  # and when none is cut for it, it takes any


def test_an_idle_worker_backs_up_the_oldest_unit_once_and_the_first_result_wins():
    s = make(((0, 1), (1, 2)))
    assert s.next_unit("a", 0) == 0 and s.next_unit("b", 1) == 1
    assert s.backup_unit("a", 2) is None  # a is busy
    assert s.backup_unit("c", 2, older_than=5.0) is None  # not a straggler yet
    assert s.backup_unit("c", 2) == 0  # the oldest outstanding unit
    assert s.backup_unit("d", 2) == 1 and s.backup_unit("e", 2) is None  # once per unit
    assert s.check("c", 5, 0, 1, 8) is None and s.check("a", 5, 0, 1, 8) is None  # either may answer
    assert s.accept(0, "from c", by="c") == ["a"]  # a was overtaken
    assert s.check("a", 5, 0, 1, 8) == "duplicate" and s.results_by_node() == {(0, 1): "from c"}


def test_a_backup_takes_over_from_a_dead_or_late_primary():
    s = make(((0, 1), (1, 2)), timeout=10.0)
    s.next_unit("a", 0)
    s.next_unit("b", 0)
    s.backup_unit("c", 1)
    assert s.release_worker("a") == 0 and s.held_by("c") == [0] and not s.pending  # nothing re-queued
    assert s.expire(now=10.0) == [(1, "b")] and list(s.pending) == [1]
    assert s.expire(now=11.0) == [(0, "c")] and list(s.pending) == [0, 1]


def test_deadlines_can_be_set_per_unit():
    s = make()
    s.next_unit("a", 0, timeout=3.0)
    s.next_unit("b", 0)
    assert s.next_deadline() == 3.0 and s.expire(now=3.0) == [(0, "a")]


def test_the_coordinator_may_settle_a_unit_itself():
    s = make()
    s.next_unit("a", 0)
    s.accept(0, "computed here")
    assert s.held_by("a") == [] and s.check("a", 5, 0, 2, 8) == "duplicate"
    s.accept(2, "also here")  # even one never given out
    assert s.complete and not s.pending


def test_deadlines_follow_the_measured_time_within_floor_and_cap():
    from coordinator.scheduler import DeadlinePolicy

    policy = DeadlinePolicy(cap=30.0, floor=3.0, multiple=10.0)
    assert policy.timeout(64) == 30.0  # nothing measured yet: the cap
    for seconds in (0.64, 0.64, 6.4):  # 10 ms, 10 ms and an outlier of 100 ms per sample
        policy.record(seconds, 64)
    assert policy.timeout(64) == 10.0 * 0.01 * 64  # the median, not the outlier
    assert policy.timeout(8) == 3.0 and policy.timeout(10_000) == 30.0
    assert DeadlinePolicy(cap=2.0).timeout(1) == 2.0  # a cap below the floor wins


def test_an_answer_under_check_goes_to_someone_else():
    s = make(((0, 2),))
    s.next_unit("a", 0)
    s.second_opinion(0, "a")
    assert s.check("a", 5, 0, 2, 8) == "late"  # a no longer holds it
    assert s.next_unit("a", 1) is None and s.backup_unit("a", 1) is None  # nor may it have it again
    assert s.next_unit("b", 1) == 0 and s.check("b", 5, 0, 2, 8) is None


def test_discarded_results_are_computed_again():
    s = make()
    s.next_unit("a", 0)
    s.accept(0, "from a")
    assert s.discard([0]) == 2 and list(s.pending) == [0, 1] and not s.results



def test_what_each_worker_holds_is_counted_exactly_through_any_sequence_of_events():
    """`holds` (asked of every worker at every turn) agrees with a full scan after every operation."""
    import random

    rng = random.Random(7)
    for trial in range(30):
        units = [(i, i + 1) for i in range(12)]
        s = StepScheduler(step=1, units=units, samples=[2] * 12, task_timeout=5.0)
        workers, now = list("abcdef"), 0.0
        for _ in range(200):
            now += rng.random()
            w = rng.choice(workers)
            op = rng.randrange(6)
            if op == 0:
                s.next_unit(w, now)
            elif op == 1:
                s.backup_unit(w, now, older_than=0.5)
            elif op == 2:
                s.release_worker(w)
            elif op == 3:
                s.expire(now)
            elif op == 4 and s.held_by(w):
                first = units[rng.choice(s.held_by(w))][0]
                if s.check(w, 1, first, 1, 2) is None:
                    s.accept(first, "r", by=w)
            elif op == 5 and s.held_by(w):
                s.second_opinion(units[s.held_by(w)[0]][0], w)
            for x in workers:
                assert s.holds(x) == len(s.held_by(x)), (trial, op, x)
            ages = [now - a.since for a in s.assigned.values()]
            assert s.oldest_age(now) <= max(ages, default=0.0) + 1e-9


def test_when_a_unit_was_given_to_whoever_holds_it():
    s = make(((0, 1), (1, 2)))
    s.next_unit("a", 2.0)
    s.next_unit("b", 3.0)
    s.backup_unit("c", 7.0)
    assert s.given_at(0, "a") == 2.0 and s.given_at(0, "c") == 7.0 and s.given_at(1, "b") == 3.0
    assert s.given_at(1, "a") is None and s.given_at(0, None) is None

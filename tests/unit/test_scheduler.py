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


def test_unusable_result_is_computed_again():
    s = make(((0, 4),))
    s.next_unit("a", 0)
    assert s.reject_result(0) == 4
    assert list(s.pending) == [0] and not s.complete


@pytest.mark.parametrize("workers, expected", [
    (1, [(0, 8)]), (2, [(0, 4), (4, 8)]), (4, [(0, 2), (2, 4), (4, 6), (6, 8)]),
    (3, [(i, i + 1) for i in range(8)]), (8, [(i, i + 1) for i in range(8)]), (32, [(i, i + 1) for i in range(8)]),
])
def test_work_units_balance_with_fewest_messages(workers, expected):
    assert work_units(8, workers) == expected

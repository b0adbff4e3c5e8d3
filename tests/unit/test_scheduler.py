"""Shard plans and the accept/refuse rules of one step."""

import numpy as np
import pytest

from coordinator.scheduler import StepScheduler
from lenet.data import split_batch


def test_split_is_fixed_and_independent_of_workers():
    shards = split_batch(np.arange(100), 8)
    assert [len(s) for s in shards] == [13, 13, 13, 13, 12, 12, 12, 12]
    assert np.array_equal(np.concatenate(shards), np.arange(100))
    assert [len(s) for s in split_batch(np.arange(3), 8)] == [1, 1, 1]
    with pytest.raises(ValueError, match="shards must be >= 1, got 0"):
        split_batch(np.arange(4), 0)


def make(n=4, timeout=10.0):
    return StepScheduler(step=5, shard_sizes=[2] * n, task_timeout=timeout)


def test_each_shard_is_accepted_once_from_its_holder():
    s = make(2)
    assert s.next_shard("a", 0) == 0 and s.next_shard("b", 0) == 1 and s.next_shard("c", 0) is None
    assert s.check("b", 5, 0, 2) == "late"  # b does not hold shard 0
    assert s.check("a", 5, 0, 2) is None
    s.accept(0, "ra")
    assert s.check("a", 5, 0, 2) == "duplicate"
    assert s.check("b", 4, 1, 2) == "stale_step"
    assert s.check("b", 6, 1, 2) == "future_step"
    assert s.check("b", 5, 7, 2) == "unknown_shard"
    assert s.check("b", 5, 1, 3) == "wrong_count"
    s.accept(1, "rb")
    assert s.complete and s.ordered_results() == ["ra", "rb"]


def test_dead_worker_shards_return_to_the_front():
    s = make(4)
    for w in "aabb":
        s.next_shard(w, 0)
    assert s.release_worker("a") == 2
    assert list(s.pending) == [0, 1]
    assert s.next_shard("b", 1) == 0
    assert s.check("a", 5, 1, 2) == "late"  # a's late answer is never applied


def test_missed_deadline_takes_the_shard_back():
    s = make(2, timeout=10)
    s.next_shard("a", 0)
    s.next_shard("b", 5)
    assert s.next_deadline() == 10
    assert s.expire(9.9) == []
    assert s.expire(10) == [(0, "a")]
    assert s.redispatched == 1 and s.held_by("b") == [1]
    s.next_shard("b", 11)
    assert s.check("a", 5, 0, 2) == "late"
    assert s.check("b", 5, 0, 2) is None


def test_unusable_result_is_computed_again():
    s = make(1)
    s.next_shard("a", 0)
    s.reject_result(0)
    assert list(s.pending) == [0] and not s.complete

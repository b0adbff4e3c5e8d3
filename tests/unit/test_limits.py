"""Limits checked before training, units that fit a message, and a run that stops when it cannot progress."""

import numpy as np
import pytest

from coordinator import protocol as P
from coordinator.refusals import Reason, RefusalStreaks
from coordinator.step import fit_units, limits_problem, plan_step
from lenet.model import LeNet5
from lenet.shards import unit_sums


def test_a_batch_larger_than_the_training_set_is_refused():
    assert limits_problem(100_000, 60_000, 64) == ("--batch-size 100000 is larger than the 60000 training images: "
                                                   "use at most 60000")
    assert limits_problem(60_000, 60_000, 64) is None


def test_a_shard_too_large_for_a_message_is_refused_with_the_shard_count_that_fits():
    problem = limits_problem(60_000, 60_000, 1)
    assert problem is not None and "makes shards of 60000 samples" in problem and "pass --shards 12 or more" in problem
    assert limits_problem(60_000, 60_000, 12) is None
    assert limits_problem(128, 60_000, 2000) == "--shards 2000 is more than 1024"


def test_units_are_split_into_whole_shards_each_within_the_limit():
    sizes = [3, 3, 3, 3, 2, 2]
    units, weights = fit_units([(0, 4), (4, 6)], [2, 1], sizes, limit=7)
    assert units == [(0, 2), (2, 4), (4, 6)] and weights == [2, 2, 1]
    assert fit_units([(0, 6)], [1], sizes, limit=100) == ([(0, 6)], [1])


def test_a_large_batch_with_few_workers_is_planned_in_units_that_fit_a_message():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30_000, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 30_000).astype(np.uint8)
    plan = plan_step(0, np.arange(30_000), 64, (1, 1), images, labels)
    assert len(plan.units) > 2  # two members, more units: they are handed out in turn
    assert [u[0] for u in plan.units] == [0, *[u[1] for u in plan.units[:-1]]] and plan.units[-1][1] == 64
    assert sum(plan.samples) == 30_000
    limit = P.max_unit_samples(64)
    assert max(plan.samples) <= limit
    assert all(len(t) <= P.MAX_MESSAGE_BYTES for t in plan.tasks)
    assert all(P.max_result_bytes(n, 64) <= P.MAX_MESSAGE_BYTES for n in plan.samples)


@pytest.mark.slow
def test_the_result_of_the_largest_unit_is_a_message_the_coordinator_accepts():
    """Not just the bound: a real result of a unit of the largest size decodes (the old limit refused it)."""
    rng = np.random.default_rng(1)
    n = P.max_unit_samples(64)
    sizes = [n // 2, n - n // 2]
    pixels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    sums = unit_sums(LeNet5(), pixels, labels, sizes, 0, 64)
    frame = P.encode(P.result_of(0, sums, 1.0))
    assert len(frame) <= P.max_result_bytes(n, 64)
    assert isinstance(P.decode(frame), P.Result)


def test_stuck_needs_expired_work_and_every_member_refused_for_one_reason():
    s = RefusalStreaks(limit=4)
    for _ in range(3):
        s.refused("a", Reason.TOO_LARGE, "49177048 bytes")
        s.refused("b", Reason.TOO_LARGE, "49177048 bytes")
        s.expired(1)
    assert s.stuck(["a", "b"]) is None  # 3 units expired: not yet
    s.expired(1)
    streak = s.stuck(["a", "b"])
    assert streak is not None and streak.reason is Reason.TOO_LARGE and streak.count == 3
    assert s.stuck(["a", "b", "silent"]) is None  # a member that never answered: not stuck on refusals
    s.refused("b", Reason.BAD_ARRAY, "x")
    assert s.stuck(["a", "b"]) is None  # two reasons: not one cause
    s.accepted()
    assert s.stuck(["a"]) is None and s.taken_back == 0


def test_a_flood_of_refusals_without_expired_work_is_not_stuck():
    s = RefusalStreaks(limit=4)
    for _ in range(10_000):
        s.refused("flooder", Reason.UNKNOWN_SHARD, "shard 1000000")
    assert s.stuck(["flooder"]) is None

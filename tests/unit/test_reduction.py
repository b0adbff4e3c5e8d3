"""The fixed reduction tree: where work is cut cannot change a single bit."""

import numpy as np
import pytest

from coordinator.scheduler import work_units
from lenet.reduction import divide, nodes_at_depth, split_point, stacked_tree_sum, tree_sum


def test_tree_shape():
    assert split_point(0, 8) == 4 and split_point(4, 6) == 5 and split_point(0, 6) == 4 and split_point(2, 5) == 4
    assert nodes_at_depth(8, 1) == [(0, 4), (4, 8)]
    assert nodes_at_depth(6, 2) == [(0, 2), (2, 4), (4, 5), (5, 6)]
    assert nodes_at_depth(3, 5) == [(0, 1), (1, 2), (2, 3)]


def test_any_cut_of_the_tree_gives_bit_identical_sums():
    rng = np.random.default_rng(0)
    leaves = {(i, i + 1): {"w": rng.standard_normal(1000).astype(np.float32) * np.float32(10.0 ** rng.integers(-3, 3))}
              for i in range(8)}
    reference = tree_sum(leaves, 0, 8)["w"]
    for workers in (1, 2, 3, 4, 8):
        # Workers sum their units' leaves; the coordinator sums the units.
        units = {node: tree_sum(leaves, *node) for node in work_units(8, workers)}
        assert np.array_equal(tree_sum(units, 0, 8)["w"], reference)
    sequential = sum(leaves[(i, i + 1)]["w"] for i in range(8))
    assert not np.array_equal(sequential, reference)  # the order really matters in float32


def test_the_tree_then_one_division():
    leaves = {(0, 1): {"w": np.array([1.0, 2.0], np.float32)}, (1, 2): {"w": np.array([3.0, 4.0], np.float32)}}
    assert divide(tree_sum(leaves, 0, 2), 4)["w"].tolist() == [1.0, 1.5]
    with pytest.raises(ValueError, match="at least one sample"):
        divide(leaves[(0, 1)], 0)
    with pytest.raises(KeyError, match="shard 1"):
        tree_sum({(0, 1): leaves[(0, 1)]}, 0, 2)


def test_stacked_tree_sum_is_bit_identical_to_the_tree():
    rng = np.random.default_rng(1)
    for size in [*range(1, 41), 64, 100]:
        scale = 10.0 ** rng.integers(-3, 3, (size, 1, 1))  # leaves of different magnitudes: order matters
        stack = {"w": (rng.standard_normal((size, 3, 50)) * scale).astype(np.float32),
                 "b": rng.standard_normal((size, 7)).astype(np.float32)}
        leaves = {(i, i + 1): {k: v[i] for k, v in stack.items()} for i in range(size)}
        reference = tree_sum(leaves, 0, size)
        total = stacked_tree_sum(stack)
        assert all(np.array_equal(total[k], reference[k]) for k in stack), size
    with pytest.raises(ValueError, match="no leaves"):
        stacked_tree_sum({"w": np.zeros((0, 3))})

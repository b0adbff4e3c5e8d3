"""The fixed reduction tree: where work is cut cannot change a single bit."""

import numpy as np
import pytest

from coordinator.scheduler import work_units
from lenet.reduction import cover, divide, split_point, stacked_tree_sum, tree_sum


def test_tree_shape():
    assert split_point(0, 8) == 4 and split_point(4, 6) == 5 and split_point(0, 6) == 4 and split_point(2, 5) == 4


def test_any_cut_of_the_tree_gives_bit_identical_sums():
    rng = np.random.default_rng(0)
    leaves = {(i, i + 1): {"w": rng.standard_normal(1000).astype(np.float32) * np.float32(10.0 ** rng.integers(-3, 3))}
              for i in range(8)}
    reference = tree_sum(leaves, 0, 8)["w"]
    for workers in (1, 2, 3, 4, 5, 8):
        # Workers sum the nodes of their units' covers; the coordinator sums the rest of the tree.
        units = work_units(8, [1] * workers)[0]
        nodes = {node: tree_sum(leaves, *node) for lo, hi in units for node in cover(lo, hi, 8)}
        assert np.array_equal(tree_sum(nodes, 0, 8)["w"], reference)
    sequential = sum(leaves[(i, i + 1)]["w"] for i in range(8))
    assert not np.array_equal(sequential, reference)  # the order really matters in float32


def test_a_range_is_covered_by_its_largest_nodes():
    assert cover(0, 8, 8) == [(0, 8)]
    assert cover(0, 5, 8) == [(0, 4), (4, 5)]
    assert cover(3, 8, 8) == [(3, 4), (4, 8)]
    assert cover(1, 7, 8) == [(1, 2), (2, 4), (4, 6), (6, 7)]
    assert cover(0, 13, 64) == [(0, 8), (8, 12), (12, 13)]
    assert cover(4, 7, 7) == [(4, 7)] and cover(5, 7, 7) == [(5, 6), (6, 7)]  # 7 shards split at 4, then 6
    for lo in range(13):
        for hi in range(lo + 1, 14):
            nodes = cover(lo, hi, 13)
            assert nodes[0][0] == lo and nodes[-1][1] == hi and all(a[1] == b[0] for a, b in zip(nodes, nodes[1:]))
            assert len(nodes) <= 2 * (13).bit_length()
    with pytest.raises(ValueError, match="not a range"):
        cover(3, 3, 8)


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

"""Shards and units: the arithmetic workers and the reference trainer share, bit for bit."""

import numpy as np
import pytest

from lenet.model import LeNet5
from lenet.reduction import nodes_at_depth
from lenet.shards import mean_gradient, merge_units, split_batch, unit_sums


def test_split_is_fixed_and_independent_of_workers():
    shards = split_batch(np.arange(100), 8)
    assert [len(s) for s in shards] == [13, 13, 13, 13, 12, 12, 12, 12]
    assert np.array_equal(np.concatenate(shards), np.arange(100))
    assert [len(s) for s in split_batch(np.arange(3), 8)] == [1, 1, 1]
    with pytest.raises(ValueError, match="shards must be >= 1, got 0"):
        split_batch(np.arange(4), 0)


@pytest.mark.parametrize("num_shards, n", [(8, 100), (64, 128), (64, 96)])
def test_units_computed_apart_add_up_to_the_whole_batch_bit_for_bit(mnist, num_shards, n):
    """What workers send for any cut of the tree, put together by the coordinator (`mean_gradient`)
    or merged by a relay (`merge_units`), is the trainer's whole batch, bit for bit.

    (64, 128) is the default (global batch 128, shards of 2 samples); 96 is the epoch's
    last batch, whose shards have 1 or 2 samples."""
    model = LeNet5(seed=1)
    pixels, labels = mnist.train_images[:n], mnist.train_labels[:n]
    sizes = [len(s) for s in split_batch(np.arange(n), num_shards)]
    whole = unit_sums(model, pixels, labels, sizes)
    reference = mean_gradient({(0, num_shards): (whole.grads, whole.factors)}, num_shards, n)
    bounds = np.cumsum([0, *sizes])
    depth = 0
    while True:
        cut = nodes_at_depth(num_shards, depth)
        units = {(lo, hi): unit_sums(model, pixels[bounds[lo]:bounds[hi]], labels[bounds[lo]:bounds[hi]],
                                     sizes[lo:hi]) for lo, hi in cut}
        total = mean_gradient({node: (u.grads, u.factors) for node, u in units.items()}, num_shards, n)
        assert all(np.array_equal(total[k], reference[k]) for k in reference), cut
        merged = merge_units(units, 0, num_shards)
        assert all(np.array_equal(merged.grads[k], whole.grads[k]) for k in whole.grads), cut
        assert all(np.array_equal(merged.factors[k], whole.factors[k]) for k in whole.factors), cut
        if len(cut) == num_shards:
            break
        depth += 1
    assert whole.correct == sum(unit_sums(model, pixels[lo:hi], labels[lo:hi], [hi - lo]).correct
                                for lo, hi in zip(bounds[:-1], bounds[1:]))


def test_sizes_must_cover_the_samples(mnist):
    with pytest.raises(ValueError, match="add up to 5, but there are 4 images"):
        unit_sums(LeNet5(), mnist.train_images[:4], mnist.train_labels[:4], [2, 3])

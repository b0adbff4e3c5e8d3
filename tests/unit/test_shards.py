"""Shards and units: the arithmetic workers and the reference trainer share, bit for bit."""

import numpy as np
import pytest

from lenet.model import LeNet5
from lenet.reduction import tree_sum
from lenet.shards import split_batch, unit_sums


def test_split_is_fixed_and_independent_of_workers():
    shards = split_batch(np.arange(100), 8)
    assert [len(s) for s in shards] == [13, 13, 13, 13, 12, 12, 12, 12]
    assert np.array_equal(np.concatenate(shards), np.arange(100))
    assert [len(s) for s in split_batch(np.arange(3), 8)] == [1, 1, 1]
    with pytest.raises(ValueError, match="shards must be >= 1, got 0"):
        split_batch(np.arange(4), 0)


def test_units_computed_apart_add_up_to_the_whole_batch_bit_for_bit(mnist):
    """What workers send for any cut of the tree, added by the coordinator, is the trainer's root sum."""
    model = LeNet5(seed=1)
    pixels, labels = mnist.train_images[:100], mnist.train_labels[:100]
    sizes = [len(s) for s in split_batch(np.arange(100), 8)]
    whole = unit_sums(model, pixels, labels, sizes)
    bounds = np.cumsum([0, *sizes])
    for cut in ([(0, 8)], [(0, 4), (4, 8)], [(0, 2), (2, 4), (4, 6), (6, 8)], [(i, i + 1) for i in range(8)]):
        units = {(lo, hi): unit_sums(model, pixels[bounds[lo]:bounds[hi]], labels[bounds[lo]:bounds[hi]],
                                     sizes[lo:hi]).grads for lo, hi in cut}
        total = tree_sum(units, 0, 8)
        assert all(np.array_equal(total[k], whole.grads[k]) for k in whole.grads), cut
    assert whole.correct == sum(unit_sums(model, pixels[lo:hi], labels[lo:hi], [hi - lo]).correct
                                for lo, hi in zip(bounds[:-1], bounds[1:]))


def test_sizes_must_cover_the_samples(mnist):
    with pytest.raises(ValueError, match="add up to 5, but there are 4 images"):
        unit_sums(LeNet5(), mnist.train_images[:4], mnist.train_labels[:4], [2, 3])

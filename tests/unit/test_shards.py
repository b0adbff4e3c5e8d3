"""Shards and units: the arithmetic workers and the reference trainer share, bit for bit."""

import numpy as np
import pytest

from lenet.model import LeNet5
from coordinator.scheduler import work_units
from lenet.shards import gather, mean_gradient, shard_sizes, summed_loss, unit_sums


def test_split_is_fixed_and_independent_of_workers():
    assert shard_sizes(100, 8) == [13, 13, 13, 13, 12, 12, 12, 12]
    assert shard_sizes(3, 8) == [1, 1, 1]
    with pytest.raises(ValueError, match="shards must be >= 1, got 0"):
        shard_sizes(4, 0)
    with pytest.raises(ValueError, match="at least one sample"):
        shard_sizes(0, 8)


@pytest.mark.parametrize("n", [1, 2, 7, 63, 64, 65, 96, 128, 1000, 60000])
@pytest.mark.parametrize("num_shards", [1, 2, 3, 8, 64, 500])
def test_shards_are_cut_as_numpy_array_split_cuts(n, num_shards):
    """The cut of every run before the arithmetic replaced np.array_split: checkpoints and results stay valid."""
    expected = [len(s) for s in np.array_split(np.arange(n), min(num_shards, n))]
    assert shard_sizes(n, num_shards) == expected


@pytest.mark.parametrize("num_shards, n", [(8, 100), (64, 128), (64, 96)])
def test_units_computed_apart_add_up_to_the_whole_batch_bit_for_bit(mnist, num_shards, n):
    """What workers send for any cut into units, put together by the coordinator (`mean_gradient`)
    or gathered by a relay (`gather`), is the trainer's whole batch, bit for bit.

    (64, 128) is the default (global batch 128, shards of 2 samples); 96 is the epoch's
    last batch, whose shards have 1 or 2 samples."""
    model = LeNet5(seed=1)
    pixels, labels = mnist.train_images[:n], mnist.train_labels[:n]
    sizes = shard_sizes(n, num_shards)
    whole = unit_sums(model, pixels, labels, sizes)
    reference = mean_gradient({(0, num_shards): whole}, num_shards, n)
    bounds = np.cumsum([0, *sizes])
    for members in (1, 2, 3, 5, 7, num_shards):
        cut = work_units(num_shards, [1] * members)[0]
        units = {(lo, hi): unit_sums(model, pixels[bounds[lo]:bounds[hi]], labels[bounds[lo]:bounds[hi]],
                                     sizes[lo:hi], lo, num_shards) for lo, hi in cut}
        total = mean_gradient(units, num_shards, n)
        assert all(np.array_equal(total[k], reference[k]) for k in reference), cut
        gathered = gather([units[u] for u in cut], num_shards)
        assert gathered.nodes == whole.nodes == [(0, num_shards)]
        assert all(np.array_equal(gathered.grads[k], whole.grads[k]) for k in whole.grads), cut
        assert all(np.array_equal(gathered.factors[k], whole.factors[k]) for k in whole.factors), cut
        assert gathered.correct == whole.correct
        assert summed_loss(units.values()) == summed_loss([gathered]) == summed_loss([whole])  # exactly
    assert whole.correct == sum(unit_sums(model, pixels[lo:hi], labels[lo:hi], [hi - lo]).correct
                                for lo, hi in zip(bounds[:-1], bounds[1:]))


def test_a_relay_gathers_part_of_a_batch_into_its_units_cover(mnist):
    """A relay given shards 3-12 of 16 splits them among its workers; its answer is what one worker would send."""
    model = LeNet5(seed=2)
    sizes = [2] * 16
    bounds = np.cumsum([0, *sizes])

    def unit(lo: int, hi: int):
        return unit_sums(model, mnist.train_images[bounds[lo]:bounds[hi]], mnist.train_labels[bounds[lo]:bounds[hi]],
                         sizes[lo:hi], lo, 16)
    alone = unit(3, 13)
    assert alone.nodes == [(3, 4), (4, 8), (8, 12), (12, 13)]
    for pieces in ([(3, 13)], [(3, 8), (8, 13)], [(3, 5), (5, 6), (6, 11), (11, 13)]):
        gathered = gather([unit(lo, hi) for lo, hi in pieces], 16)
        assert gathered.nodes == alone.nodes
        assert all(np.array_equal(gathered.grads[k], alone.grads[k]) for k in alone.grads), pieces
        assert all(np.array_equal(gathered.factors[k], alone.factors[k]) for k in alone.factors), pieces


def test_sizes_must_cover_the_samples(mnist):
    with pytest.raises(ValueError, match="add up to 5, but there are 4 images"):
        unit_sums(LeNet5(), mnist.train_images[:4], mnist.train_labels[:4], [2, 3])

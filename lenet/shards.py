"""A batch cut into shards, and a run of shards computed and added in the tree.

The arithmetic that makes the service bit-identical to the reference trainer is
written here once.  `split_batch` fixes a batch's shards from the batch alone (never
from the number of workers); `unit_sums` computes a run of consecutive shards (a
unit, a subtree of `lenet.reduction`'s tree) and adds their gradients in that
tree.  A worker calls it for the unit it was given; the reference trainer calls it
for the whole batch, the root unit.  The same nodes, the same float32 additions,
the same bits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lenet.data import standardize
from lenet.model import LeNet5, SumLossGrads
from lenet.reduction import stacked_tree_sum


def split_batch(indices: np.ndarray, num_shards: int) -> list[np.ndarray]:
    """Cut a batch into at most `num_shards` contiguous, non-empty shards, sizes differing by <= 1.

    Depends only on the batch and `num_shards`: never on how many workers exist.
    """
    if num_shards < 1:
        raise ValueError(f"number of shards must be >= 1, got {num_shards}")
    return [s for s in np.array_split(indices, min(num_shards, len(indices))) if len(s)]


def unit_sums(model: LeNet5, pixels: np.ndarray, labels: np.ndarray, sizes: Sequence[int]) -> SumLossGrads:
    """Summed loss, correct count and tree-summed gradients of consecutive shards.

    pixels: uint8 (N, 28, 28), labels: (N,), the shards back to back with
    `sizes[i]` samples each (sum(sizes) == N).  The shards' gradients are leaves
    0..len(sizes) of a tree whose split points depend on size only, so this
    subtree's sum is bit for bit the node the full batch's tree holds.  The shards
    are computed in one batched pass and their gradients stay stacked, so that many
    small shards cost few NumPy calls (`stacked_tree_sum` adds a level at a time).
    """
    if sum(sizes) != len(labels) or len(pixels) != len(labels):
        raise ValueError(f"shard sizes add up to {sum(sizes)}, but there are {len(pixels)} images "
                         f"and {len(labels)} labels")
    stacked = model.stacked_shard_sums(standardize(pixels), labels, sizes)
    loss_sum = 0.0
    for part in stacked.loss_sums.tolist():  # in shard order, as every caller has always added them
        loss_sum += part
    return SumLossGrads(loss_sum, int(stacked.correct.sum()), stacked_tree_sum(stacked.grads))

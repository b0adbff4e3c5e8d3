"""A batch cut into shards, a run of shards computed, and a batch's gradient put together.

The arithmetic that makes the service bit-identical to the reference trainer is
written here once.  `split_batch` fixes a batch's shards from the batch alone (never
from the number of workers).  `unit_sums` computes a run of consecutive shards (a
unit, a subtree of `lenet.reduction`'s tree): the convolutions' gradients added in
that tree, the linear layers' per-sample factors in sample order.  `merge` joins
two adjacent units as their parent node would hold them, and `mean_gradient` turns
the units of a whole batch into its mean gradient: the rest of the tree, then one
product per linear layer over the batch's factors.  A worker calls `unit_sums` for
the unit it was given, a relay `merge`s its workers' units, the coordinator calls
`mean_gradient`, and the reference trainer calls both for the whole batch.  The
same nodes, the same float32 operations, the same bits, however the batch was cut
into units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from lenet.data import standardize
from lenet.model import PARAM_SHAPES, Factors, LeNet5, concat_factors, linear_grads
from lenet.params import Params
from lenet.reduction import Node, add, divide, split_point, stacked_tree_sum, tree_sum


# Shards per batch unless told otherwise: up to 64 workers each get a unit of work, and
# a unit's many small shards cost little (lenet.model computes them in one pass, and
# only the convolutions' small gradients are kept per shard).
DEFAULT_SHARDS = 64


class UnitSums(NamedTuple):
    """What a unit of consecutive shards contributes to its batch.

    grads: the tree parameters' (lenet.model.TREE_PARAMS) gradients, summed over
    the unit's shards in the tree; factors: the linear layers' per-sample factors
    (lenet.model.FACTOR_WIDTHS), one row per sample of the unit, in order.
    """

    loss_sum: float
    correct: int
    grads: Params
    factors: Factors

    @property
    def count(self) -> int:
        return len(self.factors["fc3.delta"])


def split_batch(indices: np.ndarray, num_shards: int) -> list[np.ndarray]:
    """Cut a batch into at most `num_shards` contiguous, non-empty shards, sizes differing by <= 1.

    Depends only on the batch and `num_shards`: never on how many workers exist.
    """
    if num_shards < 1:
        raise ValueError(f"number of shards must be >= 1, got {num_shards}")
    return [s for s in np.array_split(indices, min(num_shards, len(indices))) if len(s)]


def unit_sums(model: LeNet5, pixels: np.ndarray, labels: np.ndarray, sizes: Sequence[int]) -> UnitSums:
    """Summed loss, correct count, tree-summed gradients and factors of consecutive shards.

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
    return UnitSums(loss_sum, int(stacked.correct.sum()), stacked_tree_sum(stacked.grads), stacked.factors)


def merge(left: UnitSums, right: UnitSums) -> UnitSums:
    """Two adjacent units (left's shards just before right's) as the node that holds both.

    Only for siblings of the tree: the caller makes sure `left` is [lo, mid) and
    `right` is [mid, hi) with mid = split_point(lo, hi) (see `merge_units`).
    """
    return UnitSums(left.loss_sum + right.loss_sum, left.correct + right.correct, add(left.grads, right.grads),
                    concat_factors([left.factors, right.factors]))


def merge_units(parts: Mapping[Node, UnitSums], lo: int, hi: int) -> UnitSums:
    """Node [lo, hi) of the tree from the units known for it or below it (the units must tile it)."""
    if (lo, hi) in parts:
        return parts[(lo, hi)]
    if hi - lo < 2:
        raise KeyError(f"no result for shard {lo}")
    mid = split_point(lo, hi)
    return merge(merge_units(parts, lo, mid), merge_units(parts, mid, hi))


def mean_gradient(parts: Mapping[Node, tuple[Params, Factors]], num_shards: int, n: int) -> Params:
    """The batch's mean gradient from its units (node -> (tree grads, factors)), which tile [0, num_shards).

    The tree's root for the convolutions; for the linear layers, one product over
    the whole batch's factors, joined in sample order.  Divided by the n samples.
    """
    tree = {node: grads for node, (grads, _) in parts.items()}
    total = dict(tree_sum(tree, 0, num_shards))  # a copy: the root may be one of the inputs
    factors = concat_factors([parts[node][1] for node in sorted(parts)])
    if len(factors["fc3.delta"]) != n:
        raise ValueError(f"factors of {len(factors['fc3.delta'])} samples for a batch of {n}")
    total.update(linear_grads(factors))
    return divide({name: total[name] for name in PARAM_SHAPES}, n)

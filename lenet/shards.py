"""A batch cut into shards, a run of shards computed, and a batch's gradient put together.

The arithmetic that makes the service bit-identical to the reference trainer is
written here once.  `shard_sizes` fixes a batch's shards from the batch size alone (never
from the number of workers).  `unit_sums` computes a unit, any run of consecutive
shards: the tree parameters' gradients summed for each node of its cover in
`lenet.reduction`'s tree, the linear layers' per-sample factors in sample order.
`gather` joins adjacent units into one, `mean_gradient` turns the units of a whole
batch into its mean gradient (the rest of the tree, then one product per linear
layer over the batch's factors), and `summed_loss` adds up their per-sample losses
exactly.  A worker calls `unit_sums` for the unit it
was given, a relay `gather`s its workers' pieces, the coordinator calls
`mean_gradient`, and the reference trainer calls both for the whole batch.  The
same nodes, the same float32 operations, the same bits, however the batch was cut
into units.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple, Protocol

import numpy as np

from lenet.architecture import Factors, Model, concat_factors, linear_grads
from lenet.params import Params
from lenet.reduction import Node, cover, divide, stacked_tree_sum, tree_sum


# Shards per batch unless told otherwise: up to 64 workers each get a unit of work, and
# a unit's many small shards cost little (a model computes them in one pass, and
# only its tree parameters' small gradients are kept per shard).
DEFAULT_SHARDS = 64


class UnitSums(NamedTuple):
    """What a unit, a run of consecutive shards, contributes to its batch.

    losses: each sample's cross-entropy, in order (float32; a batch's sum is
    `math.fsum` of them all: exact, so it does not depend on the grouping either);
    correct: how many samples were classified right; nodes: the unit's cover in the
    tree (`lenet.reduction.cover`); grads: for each of the model's TREE_PARAMS, a
    stack (len(nodes), *shape): row i is node i's gradient sum; factors: the linear
    layers' per-sample factors (the model's FACTOR_WIDTHS), one row per sample of
    the unit, in order.
    A coordinator's Result carries the same fields.
    """

    losses: np.ndarray
    correct: int
    nodes: list[Node]
    grads: Params
    factors: Factors


class Contribution(Protocol):
    """Anything holding a unit's losses, node sums and factors: UnitSums, or a Result off the wire."""

    @property
    def losses(self) -> np.ndarray: ...

    @property
    def grads(self) -> Params: ...

    @property
    def factors(self) -> Factors: ...


def shard_sizes(n: int, num_shards: int) -> list[int]:
    """Sizes of the contiguous shards of an n-sample batch: min(num_shards, n) of them, none empty, differing
    by at most one, the larger first (as `numpy.array_split` cuts).

    Depends only on the batch size and `num_shards`: never on how many workers exist.
    """
    if num_shards < 1:
        raise ValueError(f"number of shards must be >= 1, got {num_shards}")
    if n < 1:
        raise ValueError(f"a batch needs at least one sample, got {n}")
    k = min(num_shards, n)
    q, r = divmod(n, k)
    return [q + 1] * r + [q] * (k - r)


def unit_sums(model: Model, pixels: np.ndarray, labels: np.ndarray, sizes: Sequence[int],
              first: int = 0, num_shards: int | None = None) -> UnitSums:
    """Losses, correct count, node sums and factors of the shards first .. first+len(sizes)-1.

    pixels: uint8 (N, 28, 28), labels: (N,), the shards back to back with
    `sizes[i]` samples each (sum(sizes) == N), in a batch of `num_shards` shards
    (default: these are all of them).  The shards are computed in one batched pass
    and their gradients stay stacked; each node of the unit's cover is then added
    up from its leaves exactly as the tree adds them (`stacked_tree_sum`), so it is
    bit for bit the node the whole batch's tree holds.
    """
    if sum(sizes) != len(labels) or len(pixels) != len(labels):
        raise ValueError(f"shard sizes add up to {sum(sizes)}, but there are {len(pixels)} images "
                         f"and {len(labels)} labels")
    nodes = cover(first, first + len(sizes), first + len(sizes) if num_shards is None else num_shards)
    stacked = model.stacked_shard_sums(model.prepare(pixels), labels, sizes)
    sums = [stacked_tree_sum({k: v[lo - first : hi - first] for k, v in stacked.grads.items()}) for lo, hi in nodes]
    return UnitSums(stacked.losses, int(stacked.correct.sum()), nodes, _stack(sums), stacked.factors)


def _stack(node_sums: Sequence[Params]) -> Params:
    return {k: np.stack([g[k] for g in node_sums]) for k in node_sums[0]}


def node_values(nodes: Sequence[Node], grads: Params) -> dict[Node, Params]:
    """A unit's stacked node sums as node -> gradients."""
    return {node: {k: g[i] for k, g in grads.items()} for i, node in enumerate(nodes)}


def gather(parts: Sequence[UnitSums], num_shards: int) -> UnitSums:
    """Adjacent units, in order, as one unit: its cover's nodes added up from theirs, as the tree adds them.

    What a relay does with the pieces its workers computed of the unit it was given.
    """
    lo, hi = parts[0].nodes[0][0], parts[-1].nodes[-1][1]
    values: dict[Node, Params] = {}
    for part in parts:
        values.update(node_values(part.nodes, part.grads))
    nodes = cover(lo, hi, num_shards)
    return UnitSums(np.concatenate([p.losses for p in parts]), sum(p.correct for p in parts), nodes,
                    _stack([tree_sum(values, a, b) for a, b in nodes]), concat_factors([p.factors for p in parts]))


def summed_loss(units: Iterable[Contribution]) -> float:
    """The units' summed cross-entropy, exactly rounded: the same float however the batch was cut."""
    return math.fsum(np.concatenate([unit.losses for unit in units]).tolist())


def mean_gradient(units: Mapping[Node, Contribution], num_shards: int, n: int) -> Params:
    """The batch's mean gradient from its units (shard range -> contribution), which tile [0, num_shards).

    The tree's root from the units' node sums for the tree parameters; for the
    linear layers, one product over the whole batch's factors, joined in sample
    order.  Divided by the n samples.
    """
    values: dict[Node, Params] = {}
    for (lo, hi), unit in units.items():
        values.update(node_values(cover(lo, hi, num_shards), unit.grads))
    total = tree_sum(values, 0, num_shards)
    factors = concat_factors([units[node].factors for node in sorted(units)])
    rows = {len(f) for f in factors.values()}
    if rows and rows != {n}:
        raise ValueError(f"factors of {sorted(rows)} samples for a batch of {n}")
    return divide({**total, **linear_grads(factors)}, n)

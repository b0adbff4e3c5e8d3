"""How shard gradients add up: one fixed binary tree, whoever does the adding.

A batch is cut into S shards (`lenet.shards.shard_sizes`). Their summed gradients
(of the convolutions; the linear layers' are multiplied out from per-sample factors
at the root, see `lenet.shards.mean_gradient`) are added pairwise in the tree over
the shard range [0, S) in which a node [lo, hi) splits at lo + (largest power of two
below hi - lo). Every node is `left + right`, elementwise in float32, so a node's
value does not depend on where it was computed: a worker may add up the subtree it
was given and send one message, and the coordinator adds the rest of the tree. The
parameters are then bit-identical whether one worker computed everything or S
workers one shard each.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import numpy as np

from lenet.params import Params

Node = tuple[int, int]  # a shard range [lo, hi)


def split_point(lo: int, hi: int) -> int:
    """Where node [lo, hi) splits: depends only on its size, so subtrees agree with the tree."""
    size = hi - lo
    if size < 2:
        raise ValueError(f"a leaf [{lo}, {hi}) has no split point")
    return lo + (1 << ((size - 1).bit_length() - 1))


def cover(lo: int, hi: int, num_shards: int) -> list[Node]:
    """The tree's largest nodes inside the shard range [lo, hi), left to right.

    The one way to write a range as whole nodes: a unit of work may be any
    contiguous run of shards, and its result holds one sum per node of its cover.
    """
    return list(_cover(lo, hi, num_shards))


@lru_cache(maxsize=8192)  # a run asks for the same few thousand ranges every step
def _cover(lo: int, hi: int, num_shards: int) -> tuple[Node, ...]:
    if not 0 <= lo < hi <= num_shards:
        raise ValueError(f"[{lo}, {hi}) is not a range of shards of [0, {num_shards})")
    nodes: list[Node] = []

    def walk(a: int, b: int) -> None:
        if lo <= a and b <= hi:
            nodes.append((a, b))
        elif a < hi and lo < b:
            mid = split_point(a, b)
            walk(a, mid)
            walk(mid, b)

    walk(0, num_shards)
    return tuple(nodes)


def add(a: Params, b: Params) -> Params:
    return {k: a[k] + b[k] for k in a}


def tree_sum(values: Mapping[Node, Params], lo: int, hi: int) -> Params:
    """Sum of node [lo, hi) from the values known for it or for nodes below it."""
    if (lo, hi) in values:
        return values[(lo, hi)]
    if hi - lo < 2:
        raise KeyError(f"no value for shard {lo}")
    mid = split_point(lo, hi)
    return add(tree_sum(values, lo, mid), tree_sum(values, mid, hi))


def stacked_tree_sum(stack: Mapping[str, np.ndarray]) -> Params:
    """The root [0, S) of the tree over S leaves given as stacks (name -> (S, ...) array).

    Bit for bit `tree_sum` of the leaves (every node is the same `left + right`), in
    few NumPy calls: the left child of a node of size s > 1 is a perfect subtree of
    2^k leaves (2^k the largest power of two below s), added up level by level with
    one vectorised add per level (pairs (0,1), (2,3), ... at once); the right
    child, of size s - 2^k, is handled the same way.
    """
    size = len(next(iter(stack.values())))
    if size < 1:
        raise ValueError("no leaves to add")
    if size == 1:
        return {k: v[0] for k, v in stack.items()}
    half = split_point(0, size)
    left = {k: v[:half] for k, v in stack.items()}
    for _ in range(half.bit_length() - 1):
        left = {k: v[0::2] + v[1::2] for k, v in left.items()}
    return add({k: v[0] for k, v in left.items()}, stacked_tree_sum({k: v[half:] for k, v in stack.items()}))


def divide(grads: Params, n: int) -> Params:
    """Summed gradients of n samples -> their mean (one float32 multiplication per element)."""
    if n < 1:
        raise ValueError(f"need at least one sample, got n={n}")
    return {k: g * g.dtype.type(1.0 / n) for k, g in grads.items()}

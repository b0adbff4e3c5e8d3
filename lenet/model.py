"""LeNet-5 (LeCun et al., 1998) in its modern form, forward and backward by hand.

    input (N, 1, 28, 28), zero-padded by 2 to the paper's 32x32
    conv1  6 maps 5x5   -> (N, 6, 28, 28)  -> ReLU -> 2x2 max pool -> (N, 6, 14, 14)
    conv2 16 maps 5x5   -> (N, 16, 10, 10) -> ReLU -> 2x2 max pool -> (N, 16, 5, 5)
    flatten (C-order over (16, 5, 5), as PyTorch) -> (N, 400)
    fc1 400->120 -> ReLU -> fc2 120->84 -> ReLU -> fc3 84->10 -> softmax cross-entropy

ReLU and max pooling commute (max is monotone, and both route the gradient to the
same single element, or to none), so the code pools first and applies ReLU to a
tensor four times smaller.  Image tensors are (N, C, H, W), and every product of a
training pass is one GEMM per sample (see layers.py for why).  The function and
its gradients are exactly those of conv -> ReLU -> pool.

Gradients leave a pass in two forms (see TREE_PARAMS and FACTOR_WIDTHS): the
convolutions' as sums per shard, for the reduction tree; the linear layers' as
per-sample factors, multiplied out once per batch by `linear_grads`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from lenet import layers
from lenet.params import Params
from lenet.reduction import add, divide


# name -> shape, in PyTorch state_dict order and layouts.
PARAM_SHAPES: dict[str, tuple[int, ...]] = {
    "conv1.weight": (6, 1, 5, 5),
    "conv1.bias": (6,),
    "conv2.weight": (16, 6, 5, 5),
    "conv2.bias": (16,),
    "fc1.weight": (120, 400),
    "fc1.bias": (120,),
    "fc2.weight": (84, 120),
    "fc2.bias": (84,),
    "fc3.weight": (10, 84),
    "fc3.bias": (10,),
}

CHUNK = 64  # samples per pass: measured best of 16-256 here (the working set of a pass stays near L2)
LINEAR_LAYERS = ("fc1", "fc2", "fc3")
# Gradients summed per shard and added in lenet.reduction's tree: small, so a shard's
# sum costs little however small the shard.
TREE_PARAMS = ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias")
# The linear layers' gradients are products over the samples, delta^T @ input: each
# sample's factors (its input to the layer and the loss gradient at the layer's
# output) are kept instead, and one product over the whole batch is taken at the
# root (`linear_grads`).  Per-shard sums of fc1's 48,000 weights would cost every
# shard a 190 KB matrix; factors cost 3.3 KB per sample, whatever the shard count.
FACTOR_WIDTHS: dict[str, int] = {
    "fc1.input": 400, "fc1.delta": 120,
    "fc2.input": 120, "fc2.delta": 84,
    "fc3.input": 84, "fc3.delta": 10,
}

# Fan-in of each weight, for initialisation.
_FAN_IN = {"conv1.weight": 25, "conv2.weight": 150, "fc1.weight": 400, "fc2.weight": 120, "fc3.weight": 84}

Factors = dict[str, np.ndarray]  # FACTOR_WIDTHS name -> (N, width), one row per sample in batch order


class SumLossGrads(NamedTuple):
    """Loss and gradients *summed* over a batch: shards of a batch add up exactly."""

    loss_sum: float
    correct: int
    grads: Params


class StackedSums(NamedTuple):
    """Consecutive shards' results: per sample, losses (N,) and correct (N,) bool; grads TREE_PARAMS name
    -> (S, *shape) (row s: shard s); and factors FACTOR_WIDTHS name -> (N, width) (row i: sample i)."""

    losses: np.ndarray
    correct: np.ndarray
    grads: Params
    factors: Factors


def linear_grads(factors: Factors) -> Params:
    """The linear layers' summed gradients from the factors of a batch's samples.

    weight: delta^T @ input (one product over all N samples), bias: delta summed
    over the samples in order.  Computed once, where the whole batch's factors are
    known, so the result depends on the batch and not on who computed which sample.
    """
    grads: Params = {}
    for layer in LINEAR_LAYERS:
        delta, x = factors[f"{layer}.delta"], factors[f"{layer}.input"]
        grads[f"{layer}.weight"] = delta.T @ x
        grads[f"{layer}.bias"] = delta.sum(axis=0)
    return grads


def concat_factors(parts: Sequence[Factors]) -> Factors:
    """Factors of consecutive runs of samples, joined in order (exact: a copy)."""
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in FACTOR_WIDTHS}


def init_params(seed: int, dtype: type = np.float32) -> Params:
    """He-normal weights before a ReLU, LeCun-normal for the output layer, zero biases.

    Drawn from `numpy.random.default_rng(seed)` in PARAM_SHAPES order, so a seed
    fixes every parameter on every machine.
    """
    rng = np.random.default_rng(seed)
    params: Params = {}
    for name, shape in PARAM_SHAPES.items():
        if name.endswith(".bias"):
            params[name] = np.zeros(shape, dtype=dtype)
            continue
        gain = 1.0 if name == "fc3.weight" else 2.0
        std = np.sqrt(gain / _FAN_IN[name])
        params[name] = (rng.standard_normal(shape) * std).astype(dtype)
    return params


class LeNet5:
    """The network, holding its parameters in `params` (float32 unless told otherwise).

    Assign new arrays into `params` to set weights; they must keep the shapes of
    PARAM_SHAPES.
    """

    def __init__(self, seed: int = 0, dtype: type = np.float32) -> None:
        self.dtype = np.dtype(dtype)
        self.params: Params = init_params(seed, dtype)

    # ------------------------------------------------------------------ passes

    def _conv_forward(self, x: np.ndarray) -> tuple[np.ndarray, list]:
        """The convolutional half, one product per sample: x (N, 1, 28, 28) -> (N, 400)."""
        p = self.params
        if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
            raise ValueError(f"expected input of shape (N, 1, 28, 28), got {x.shape}")
        h = np.asarray(x, dtype=self.dtype)
        # conv1 and its pooling fused (see layers.conv_pool_forward): (N, 6, 28, 28) is never laid out as such.
        h, c1 = layers.conv_pool_forward(h, p["conv1.weight"], p["conv1.bias"], pad=2)  # (N, 6, 14, 14)
        h, r1 = layers.relu_forward(h)
        h, c2 = layers.conv_forward(h, p["conv2.weight"], p["conv2.bias"], pad=0)  # (N, 16, 10, 10)
        h, p2 = layers.maxpool_forward(h)  # (N, 16, 5, 5)
        h, r2 = layers.relu_forward(h)
        return h.reshape(len(h), 400), [c1, r1, c2, p2, r2]  # PyTorch's flatten order (C, H, W)

    def _fc_forward(self, h: np.ndarray) -> tuple[np.ndarray, list]:
        """The fully connected half: h (N, 400), or a stack (S, n, 400) of separate products -> logits (..., 10)."""
        p = self.params
        h, f1 = layers.linear_forward(h, p["fc1.weight"], p["fc1.bias"])
        h, r3 = layers.relu_forward(h)
        h, f2 = layers.linear_forward(h, p["fc2.weight"], p["fc2.bias"])
        h, r4 = layers.relu_forward(h)
        logits, f3 = layers.linear_forward(h, p["fc3.weight"], p["fc3.bias"])
        return logits, [f1, r3, f2, r4, f3]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Logits (N, 10) for standardised images x: (N, 1, 28, 28)."""
        h = np.concatenate([self._conv_forward(x[i : i + CHUNK])[0] for i in range(0, max(1, len(x)), CHUNK)])
        return self._fc_forward(h)[0]

    def sum_loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> SumLossGrads:
        """Cross-entropy and gradients summed (not averaged) over the batch, as one shard.

        The distributed service adds these up shard by shard and divides once by the
        batch size.  Batches above CHUNK samples are computed CHUNK at a time: a pass's
        working set (conv1's im2col matrix alone is 80 KB per sample) then stays near
        the L2 cache, and memory stays bounded.
        """
        stacked = self.stacked_shard_sums(x, y, [len(y)])
        grads = {k: g[0] for k, g in stacked.grads.items()}
        grads.update(linear_grads(stacked.factors))
        return SumLossGrads(math.fsum(stacked.losses.tolist()), int(stacked.correct.sum()),
                            {name: grads[name] for name in PARAM_SHAPES})

    def stacked_shard_sums(self, x: np.ndarray, y: np.ndarray, sizes: Sequence[int]) -> StackedSums:
        """The sums of consecutive shards of x (N, 1, 28, 28), `sizes[i]` samples each, as stacks.

        Shard s's tree gradients are row s of every `grads` array, bit for bit what
        the shard alone would give (the reduction tree adds them, and its result
        must not depend on how shards were grouped into calls); sample i's factors
        are row i of every `factors` array, likewise independent of the grouping.
        Consecutive shards are computed together, up to CHUNK samples per pass: the
        layers' products are per sample (see layers.py).  A shard larger than CHUNK
        is computed alone, in CHUNK pieces whose sums are added in order.
        """
        if any(s < 1 for s in sizes) or sum(sizes) != len(y) or len(x) != len(y):
            raise ValueError(f"shard sizes {list(sizes)} do not split {len(x)} images and {len(y)} labels")
        y = np.asarray(y, dtype=np.intp)
        parts: list[StackedSums] = []
        lo = 0
        group: list[int] = []  # sizes of the shards of the pass being gathered, starting at sample lo
        for size in [*sizes, None]:
            if group and (size is None or size > CHUNK or sum(group) + size > CHUNK):
                hi = lo + sum(group)
                parts.append(self._pass(x[lo:hi], y[lo:hi], group))
                lo, group = hi, []
            if size is None:
                break
            if size > CHUNK:
                parts.append(self._large_shard(x[lo : lo + size], y[lo : lo + size]))
                lo += size
            else:
                group.append(size)
        if len(parts) == 1:
            return parts[0]
        return StackedSums(np.concatenate([p.losses for p in parts]), np.concatenate([p.correct for p in parts]),
                           {k: np.concatenate([p.grads[k] for p in parts]) for k in TREE_PARAMS},
                           concat_factors([p.factors for p in parts]))

    def _large_shard(self, x: np.ndarray, y: np.ndarray) -> StackedSums:
        """One shard of more than CHUNK samples, CHUNK at a time: its sums added in order, its samples' results
        joined."""
        pieces = [self._pass(x[i : i + CHUNK], y[i : i + CHUNK], [len(y[i : i + CHUNK])])
                  for i in range(0, len(y), CHUNK)]
        grads = pieces[0].grads
        for piece in pieces[1:]:
            grads = add(grads, piece.grads)
        return StackedSums(np.concatenate([p.losses for p in pieces]), np.concatenate([p.correct for p in pieces]),
                           grads, concat_factors([p.factors for p in pieces]))

    def _pass(self, x: np.ndarray, y: np.ndarray, sizes: Sequence[int]) -> StackedSums:
        """Sums of consecutive shards computed in one pass (at most CHUNK samples).

        The convolutional half runs per sample, its weight and bias gradients added
        up per shard in sample order; the linear layers run per sample too (a stack
        of N one-row products), and leave their factors.
        """
        h, conv_caches = self._conv_forward(x)
        logits, fc_caches = self._fc_forward(h[:, None, :])  # (N, 1, 400): one product per sample
        losses, correct, dlogits = layers.softmax_cross_entropy(logits[:, 0], y)
        dh, factors = self._fc_backward(dlogits[:, None, :], fc_caches)
        grads = self._conv_backward(dh[:, 0], conv_caches, sizes)
        return StackedSums(losses, correct, grads, factors)

    def _fc_backward(self, dlogits: np.ndarray, caches: list) -> tuple[np.ndarray, Factors]:
        """Backward through the linear layers, dlogits (N, 1, 10) -> dh (N, 1, 400) and each layer's factors."""
        f1, r3, f2, r4, f3 = caches
        dh = dlogits
        factors: Factors = {}
        for name, (x, w), relu in (("fc3", f3, r4), ("fc2", f2, r3), ("fc1", f1, None)):
            factors[f"{name}.delta"], factors[f"{name}.input"] = dh[:, 0], x[:, 0]
            dh = dh @ w
            if relu is not None:
                dh = layers.relu_backward(dh, relu)
        return dh, {k: factors[k] for k in FACTOR_WIDTHS}

    def _conv_backward(self, dh: np.ndarray, caches: list, sizes: Sequence[int]) -> Params:
        """Backward through the convolutional half from dh (N, 400): gradients per shard (S, ...)."""
        c1, r1, c2, p2, r2 = caches
        g: Params = {}
        dh = layers.relu_backward(dh.reshape(len(dh), 16, 5, 5), r2)
        dh = layers.maxpool_backward(dh, p2)  # (N, 16, 10, 10)
        dh, g["conv2.weight"], g["conv2.bias"] = layers.conv_backward(dh, c2, sizes)  # (N, 6, 14, 14)
        dh = layers.relu_backward(dh, r1)
        g["conv1.weight"], g["conv1.bias"] = layers.conv_pool_backward(dh, c1, sizes)
        return {name: g[name] for name in TREE_PARAMS}

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, Params]:
        """Mean cross-entropy over the batch and its gradients (same keys as params)."""
        result = self.sum_loss_and_grads(x, y)
        return result.loss_sum / x.shape[0], divide(result.grads, x.shape[0])


def check_params(params: dict[str, np.ndarray], origin: str) -> Params:
    """Validate names, shapes and dtype of a parameter dict (from a file or the wire)."""
    if set(params) != set(PARAM_SHAPES):
        missing, extra = sorted(set(PARAM_SHAPES) - set(params)), sorted(set(params) - set(PARAM_SHAPES))
        raise ValueError(f"{origin}: parameter names do not match LeNet-5: missing {missing}, unexpected {extra}")
    for name, shape in PARAM_SHAPES.items():
        a = params[name]
        if a.shape != shape or a.dtype != np.float32:
            raise ValueError(f"{origin}: {name} is {a.dtype}{a.shape}, expected float32{shape}")
    return {name: params[name] for name in PARAM_SHAPES}

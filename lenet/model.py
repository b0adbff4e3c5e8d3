"""LeNet-5 (LeCun et al., 1998) in its modern form, forward and backward by hand.

    input (N, 1, 28, 28), zero-padded by 2 to the paper's 32x32
    conv1  6 maps 5x5   -> (N, 6, 28, 28)  -> ReLU -> 2x2 max pool -> (N, 6, 14, 14)
    conv2 16 maps 5x5   -> (N, 16, 10, 10) -> ReLU -> 2x2 max pool -> (N, 16, 5, 5)
    flatten (C-order over (16, 5, 5), as PyTorch) -> (N, 400)
    fc1 400->120 -> ReLU -> fc2 120->84 -> ReLU -> fc3 84->10 -> softmax cross-entropy

ReLU and max pooling commute (max is monotone, and both route the gradient to the
same single element, or to none), so the code pools first and applies ReLU to a
tensor four times smaller.  Image tensors are (N, C, H, W), and every product of
the convolutional half is one GEMM per sample (see layers.py for why).  The
function and its gradients are exactly those of conv -> ReLU -> pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from lenet import layers
from lenet.params import Params
from lenet.reduction import add, mean_gradient


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
FC_PARAMS = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias")

# Fan-in of each weight, for initialisation.
_FAN_IN = {"conv1.weight": 25, "conv2.weight": 150, "fc1.weight": 400, "fc2.weight": 120, "fc3.weight": 84}


class SumLossGrads(NamedTuple):
    """Loss and gradients *summed* over a batch: shards of a batch add up exactly."""

    loss_sum: float
    correct: int
    grads: Params


class StackedSums(NamedTuple):
    """SumLossGrads of S shards as stacks: loss_sums (S,) float64, correct (S,) int, grads name -> (S, *shape)."""

    loss_sums: np.ndarray
    correct: np.ndarray
    grads: Params

    def row(self, s: int) -> SumLossGrads:
        """Shard s's sums."""
        return SumLossGrads(float(self.loss_sums[s]), int(self.correct[s]), {k: g[s] for k, g in self.grads.items()})


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
        """The fully connected half: h (N, 400) or a stack of shards (S, N, 400) -> logits (..., 10)."""
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
        """Cross-entropy and gradients summed (not averaged) over the batch.

        The distributed service adds these up shard by shard and divides once by the
        batch size.  Batches above CHUNK samples are computed CHUNK at a time and
        summed in order: a pass's working set (conv1's im2col matrix alone is 80 KB
        per sample) then stays near the L2 cache, and memory stays bounded.
        """
        y = np.asarray(y, dtype=np.intp)
        n = len(y)
        parts = [self._pass(x[i : i + CHUNK], y[i : i + CHUNK], [min(CHUNK, n - i)]).row(0)
                 for i in range(0, max(1, n), CHUNK)]
        if len(parts) == 1:
            return parts[0]
        grads = parts[0].grads
        for part in parts[1:]:
            grads = add(grads, part.grads)
        return SumLossGrads(sum(p.loss_sum for p in parts), sum(p.correct for p in parts), grads)

    def shard_sums(self, x: np.ndarray, y: np.ndarray, sizes: Sequence[int]) -> list[SumLossGrads]:
        """`sum_loss_and_grads` of each of consecutive shards of x (N, 1, 28, 28), `sizes[i]` samples each.

        Each shard's sums are bit for bit what `sum_loss_and_grads` gives for that
        shard alone (the reduction tree adds them, and its result must not depend on
        how shards were grouped into calls), yet consecutive shards are computed
        together (see `stacked_shard_sums`).
        """
        stacked = self.stacked_shard_sums(x, y, sizes)
        return [stacked.row(s) for s in range(len(sizes))]

    def stacked_shard_sums(self, x: np.ndarray, y: np.ndarray, sizes: Sequence[int]) -> StackedSums:
        """`shard_sums` as stacks: shard s's sums are row s of every array.

        Consecutive shards are computed together, up to CHUNK samples per pass: the
        layers' products are per sample or per shard (see layers.py), so a shard's
        numbers do not depend on its neighbours.  A shard larger than CHUNK is
        computed alone, in CHUNK pieces, exactly as `sum_loss_and_grads` does.
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
                alone = self.sum_loss_and_grads(x[lo : lo + size], y[lo : lo + size])
                parts.append(StackedSums(np.array([alone.loss_sum]), np.array([alone.correct]),
                                         {k: g[None] for k, g in alone.grads.items()}))
                lo += size
            else:
                group.append(size)
        if len(parts) == 1:
            return parts[0]
        return StackedSums(np.concatenate([p.loss_sums for p in parts]), np.concatenate([p.correct for p in parts]),
                           {k: np.concatenate([p.grads[k] for p in parts]) for k in PARAM_SHAPES})

    def _pass(self, x: np.ndarray, y: np.ndarray, sizes: Sequence[int]) -> StackedSums:
        """Sums of consecutive shards computed in one pass (at most CHUNK samples).

        The convolutional half runs per sample, its weight and bias gradients added
        up per shard in sample order; the linear layers run per shard, shards of
        equal size stacked into one call (see layers.py).
        """
        n = len(y)
        h, conv_caches = self._conv_forward(x)
        dh = np.empty_like(h)
        grads: dict[str, list[np.ndarray]] = {name: [] for name in FC_PARAMS}  # run by run
        losses, correct = np.empty(n, dtype=np.float64), np.empty(n, dtype=bool)
        for lo, count, size in layers.runs(sizes):
            hi = lo + count * size
            logits, caches = self._fc_forward(h[lo:hi].reshape(count, size, 400))
            losses[lo:hi], correct[lo:hi], dlogits = layers.softmax_cross_entropy(logits.reshape(-1, 10), y[lo:hi])
            dh[lo:hi] = self._fc_backward(dlogits.reshape(count, size, 10), caches, grads).reshape(-1, 400)
        per_shard: Params = {name: parts[0] if len(parts) == 1 else np.concatenate(parts)
                             for name, parts in grads.items()}
        per_shard.update(self._conv_backward(dh, conv_caches, sizes))
        return StackedSums(layers.segment_sums(losses, sizes), layers.segment_sums(correct.astype(np.intp), sizes),
                           {name: per_shard[name] for name in PARAM_SHAPES})

    def _fc_backward(self, dlogits: np.ndarray, caches: list, g: dict[str, list[np.ndarray]]) -> np.ndarray:
        """Backward through the linear layers of a stack of shards; appends each shard's gradients to g."""
        f1, r3, f2, r4, f3 = caches
        dh = dlogits
        for name, layer, relu in (("fc3", f3, r4), ("fc2", f2, r3), ("fc1", f1, None)):
            dh, dw, db = layers.linear_backward(dh, layer)
            g[f"{name}.weight"].append(dw)
            g[f"{name}.bias"].append(db)
            if relu is not None:
                dh = layers.relu_backward(dh, relu)
        return dh

    def _conv_backward(self, dh: np.ndarray, caches: list, sizes: Sequence[int]) -> Params:
        """Backward through the convolutional half from dh (N, 400): gradients per shard (S, ...)."""
        c1, r1, c2, p2, r2 = caches
        g: Params = {}
        dh = layers.relu_backward(dh.reshape(len(dh), 16, 5, 5), r2)
        dh = layers.maxpool_backward(dh, p2)  # (N, 16, 10, 10)
        dh, g["conv2.weight"], g["conv2.bias"] = layers.conv_backward(dh, c2, sizes)  # (N, 6, 14, 14)
        dh = layers.relu_backward(dh, r1)
        g["conv1.weight"], g["conv1.bias"] = layers.conv_pool_backward(dh, c1, sizes)
        return g

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, Params]:
        """Mean cross-entropy over the batch and its gradients (same keys as params)."""
        result = self.sum_loss_and_grads(x, y)
        return result.loss_sum / x.shape[0], mean_gradient({(0, 1): result.grads}, 1, x.shape[0])


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

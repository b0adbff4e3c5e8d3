"""LeNet-5 (LeCun et al., 1998) in its modern form, forward and backward by hand.

    input (N, 1, 28, 28), zero-padded by 2 to the paper's 32x32
    conv1  6 maps 5x5   -> (N, 6, 28, 28)  -> ReLU -> 2x2 max pool -> (N, 6, 14, 14)
    conv2 16 maps 5x5   -> (N, 16, 10, 10) -> ReLU -> 2x2 max pool -> (N, 16, 5, 5)
    flatten (C-order over (16, 5, 5), as PyTorch) -> (N, 400)
    fc1 400->120 -> ReLU -> fc2 120->84 -> ReLU -> fc3 84->10 -> softmax cross-entropy

ReLU and max pooling commute (max is monotone, and both route the gradient to the
same single element, or to none), so the code pools first and applies ReLU to a
tensor four times smaller.  Inside, image tensors are laid out (C, N, H, W)
(see layers.py for why).  The function and its gradients are exactly those of
conv -> ReLU -> pool.
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

CHUNK = 256  # largest batch computed in one pass (see sum_loss_and_grads)

# Fan-in of each weight, for initialisation.
_FAN_IN = {"conv1.weight": 25, "conv2.weight": 150, "fc1.weight": 400, "fc2.weight": 120, "fc3.weight": 84}


class SumLossGrads(NamedTuple):
    """Loss and gradients *summed* over a batch: shards of a batch add up exactly."""

    loss_sum: float
    correct: int
    grads: Params


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

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, list]:
        """Logits and the caches the backward pass needs.  x: (N, 1, 28, 28)."""
        p = self.params
        if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
            raise ValueError(f"expected input of shape (N, 1, 28, 28), got {x.shape}")
        n = x.shape[0]
        h = np.ascontiguousarray(x.transpose(1, 0, 2, 3), dtype=self.dtype)  # (1, N, 28, 28)
        h, c1 = layers.conv_forward(h, p["conv1.weight"], p["conv1.bias"], pad=2)  # (6, N, 28, 28)
        h, p1 = layers.maxpool_forward(h)  # (6, N, 14, 14)
        h, r1 = layers.relu_forward(h)
        h, c2 = layers.conv_forward(h, p["conv2.weight"], p["conv2.bias"], pad=0)  # (16, N, 10, 10)
        h, p2 = layers.maxpool_forward(h)  # (16, N, 5, 5)
        h, r2 = layers.relu_forward(h)
        h = h.transpose(1, 0, 2, 3).reshape(n, 400)  # PyTorch flatten order (C, H, W) per sample
        h, f1 = layers.linear_forward(h, p["fc1.weight"], p["fc1.bias"])  # (N, 120)
        h, r3 = layers.relu_forward(h)
        h, f2 = layers.linear_forward(h, p["fc2.weight"], p["fc2.bias"])  # (N, 84)
        h, r4 = layers.relu_forward(h)
        logits, f3 = layers.linear_forward(h, p["fc3.weight"], p["fc3.bias"])  # (N, 10)
        return logits, [c1, p1, r1, c2, p2, r2, f1, r3, f2, r4, f3]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Logits (N, 10) for standardised images x: (N, 1, 28, 28)."""
        return self._forward(x)[0]

    def _backward(self, dlogits: np.ndarray, caches: list) -> Params:
        c1, p1, r1, c2, p2, r2, f1, r3, f2, r4, f3 = caches
        g: Params = {}
        dh, g["fc3.weight"], g["fc3.bias"] = layers.linear_backward(dlogits, f3)
        dh = layers.relu_backward(dh, r4)
        dh, g["fc2.weight"], g["fc2.bias"] = layers.linear_backward(dh, f2)
        dh = layers.relu_backward(dh, r3)
        dh, g["fc1.weight"], g["fc1.bias"] = layers.linear_backward(dh, f1)
        n = dh.shape[0]
        dh = dh.reshape(n, 16, 5, 5).transpose(1, 0, 2, 3)  # (16, N, 5, 5)
        dh = layers.relu_backward(dh, r2)
        dh = layers.maxpool_backward(dh, p2)  # (16, N, 10, 10)
        dh, g["conv2.weight"], g["conv2.bias"] = layers.conv_backward(dh, c2)  # (6, N, 14, 14)
        dh = layers.relu_backward(dh, r1)
        dh = layers.maxpool_backward(dh, p1)  # (6, N, 28, 28)
        _, g["conv1.weight"], g["conv1.bias"] = layers.conv_backward(dh, c1, need_dx=False)
        return {name: g[name] for name in PARAM_SHAPES}

    def sum_loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> SumLossGrads:
        """Cross-entropy and gradients summed (not averaged) over the batch.

        The distributed service adds these up shard by shard and divides once by the
        batch size.  Batches above CHUNK samples are computed CHUNK at a time and
        summed in order: conv1's im2col matrix takes 78 KB per sample, and past
        glibc's mmap threshold every step would page-fault it afresh.
        """
        y = np.asarray(y, dtype=np.intp)
        parts = [self._chunk_sums(x[i : i + CHUNK], y[i : i + CHUNK]) for i in range(0, max(1, len(y)), CHUNK)]
        if len(parts) == 1:
            return parts[0]
        grads = parts[0].grads
        for part in parts[1:]:
            grads = add(grads, part.grads)
        return SumLossGrads(sum(p.loss_sum for p in parts), sum(p.correct for p in parts), grads)

    def shard_sums(self, x: np.ndarray, y: np.ndarray, sizes: Sequence[int]) -> list[SumLossGrads]:
        """`sum_loss_and_grads` of each of consecutive shards of x (N, 1, 28, 28), `sizes[i]` samples each.

        Each shard's sums are exactly what `sum_loss_and_grads` gives for that shard
        alone: the reduction tree adds them, and its result must not depend on how
        shards were grouped into calls.
        """
        bounds = np.cumsum([0, *sizes])
        return [self.sum_loss_and_grads(x[lo:hi], y[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]

    def _chunk_sums(self, x: np.ndarray, y: np.ndarray) -> SumLossGrads:
        logits, caches = self._forward(x)
        loss_sum, correct, dlogits = layers.softmax_cross_entropy(logits, y)
        grads = self._backward(dlogits, caches)
        return SumLossGrads(float(loss_sum), int(correct.sum()), grads)

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

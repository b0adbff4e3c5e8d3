"""LeNet-5 (LeCun et al., 1998) in its modern form, forward and backward by hand: the model "lenet5".

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
per-sample factors, multiplied out once per batch by `linear_grads`.  The
interface every model offers is lenet/architecture.py's `Model`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lenet import layers
from lenet.architecture import Factors, Model, StackedSums, SumLossGrads, concat_factors, linear_grads
from lenet.bounds import MAX_PIXEL, in_grad_bound, out_bound
from lenet.data import MEAN, STD, standardize
from lenet.params import Params

__all__ = ["CHUNK", "FACTOR_WIDTHS", "Factors", "LINEAR_LAYERS", "LeNet5", "PARAM_SHAPES", "StackedSums",
           "SumLossGrads", "TREE_PARAMS", "check_params", "concat_factors", "init_params", "linear_grads"]


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
OUTCOME_MARGIN = 1e-3  # of a loss, in `outcome_problem`: float32 rounding of a loss is below 1e-6
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


class LeNet5(Model):
    """The network, holding its parameters in `params` (float32 unless told otherwise).

    Assign new arrays into `params` to set weights; they must keep the shapes of
    PARAM_SHAPES.
    """

    name = "lenet5"
    TITLE = "LeNet-5"
    DESCRIPTION = "LeNet-5 (conv5x5x6-pool-conv5x5x16-pool-fc120-fc84-fc10, ReLU, max pool)"
    PARAM_SHAPES = PARAM_SHAPES
    TREE_PARAMS = TREE_PARAMS
    LINEAR_LAYERS = LINEAR_LAYERS
    FACTOR_WIDTHS = FACTOR_WIDTHS
    NONNEGATIVE_FACTORS = frozenset(f"{layer}.input" for layer in LINEAR_LAYERS)  # ReLU outputs, or pooled ones
    INPUT_SHAPE = (1, 28, 28)
    CHUNK = CHUNK
    ONNX_PROPS = {"standardize_mean": str(MEAN), "standardize_std": str(STD)}
    INPUT_DOC = f"float32 (N, 1, 28, 28), pixels standardised as (p/255 - {MEAN}) / {STD}, white digit on black"
    OUTPUT_DOC = "logits (N, 10) for digits 0-9"

    init_params = staticmethod(init_params)
    prepare = staticmethod(standardize)

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
        for name, cache, relu in (("fc3", f3, r4), ("fc2", f2, r3), ("fc1", f1, None)):
            factors[f"{name}.delta"], factors[f"{name}.input"] = dh[:, 0], cache[0][:, 0]
            dh = layers.linear_input_grad(dh, cache)
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

    @classmethod
    def per_sample_bounds(cls, params: Params) -> dict[str, float]:
        """The largest |element| one sample can give: for every parameter's gradient and every factor
        (the reasoning is lenet/bounds.py's)."""
        p = params
        a0 = MAX_PIXEL
        a1 = out_bound(p["conv1.weight"], p["conv1.bias"], a0)  # (after pool, ReLU: not larger)
        a2 = out_bound(p["conv2.weight"], p["conv2.bias"], a1)
        a3 = out_bound(p["fc1.weight"], p["fc1.bias"], a2)
        a4 = out_bound(p["fc2.weight"], p["fc2.bias"], a3)
        d5 = 1.0  # softmax(logits) - onehot
        d4 = in_grad_bound(p["fc3.weight"], d5)
        d3 = in_grad_bound(p["fc2.weight"], d4)
        d2 = in_grad_bound(p["fc1.weight"], d3)
        d1 = in_grad_bound(p["conv2.weight"], d2)
        conv1_positions, conv2_positions = 28 * 28, 10 * 10
        return {
            "conv1.weight": conv1_positions * d1 * a0, "conv1.bias": conv1_positions * d1,
            "conv2.weight": conv2_positions * d2 * a1, "conv2.bias": conv2_positions * d2,
            "fc1.weight": d3 * a2, "fc1.bias": d3,
            "fc2.weight": d4 * a3, "fc2.bias": d4,
            "fc3.weight": d5 * a4, "fc3.bias": d5,
            "fc1.input": a2, "fc1.delta": d3,
            "fc2.input": a3, "fc2.delta": d4,
            "fc3.input": a4, "fc3.delta": d5,
        }

    @classmethod
    def outcome_problem(cls, losses: np.ndarray, correct: int) -> str | None:
        """Softmax cross-entropy ties the losses to the right answers: a sample with loss below ln 2 has
        p(label) > 1/2, so its label is the argmax (right); a right one has p(label) >= 1/10, so a loss of at
        most ln 10.  The margin (1e-3) is far above float32 rounding.  An answer of all-zero losses with no
        right answer (what a lazy liar sends) fails it."""
        sure = int(np.count_nonzero(losses < math.log(2) - OUTCOME_MARGIN))
        possible = int(np.count_nonzero(losses <= math.log(10) + OUTCOME_MARGIN))
        if not sure <= correct <= possible:
            return (f"{correct} right answers, but {sure} losses below ln 2 (each a right answer) and "
                    f"{possible} at most ln 10 (the most there can be)")
        return None

    @classmethod
    def onnx_nodes(cls, helper: Any, input: str, output: str) -> list[Any]:
        """ReLU before pooling, as the standard form (equal to this file's pool-then-ReLU)."""
        return [
            helper.make_node("Conv", [input, "conv1.weight", "conv1.bias"], ["conv1"], kernel_shape=[5, 5],
                             pads=[2, 2, 2, 2]),
            helper.make_node("Relu", ["conv1"], ["relu1"]),
            helper.make_node("MaxPool", ["relu1"], ["pool1"], kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("Conv", ["pool1", "conv2.weight", "conv2.bias"], ["conv2"], kernel_shape=[5, 5]),
            helper.make_node("Relu", ["conv2"], ["relu2"]),
            helper.make_node("MaxPool", ["relu2"], ["pool2"], kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("Flatten", ["pool2"], ["flat"], axis=1),  # C-order over (16, 5, 5), as the model
            helper.make_node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["fc1"], transB=1),
            helper.make_node("Relu", ["fc1"], ["relu3"]),
            helper.make_node("Gemm", ["relu3", "fc2.weight", "fc2.bias"], ["fc2"], transB=1),
            helper.make_node("Relu", ["fc2"], ["relu4"]),
            helper.make_node("Gemm", ["relu4", "fc3.weight", "fc3.bias"], [output], transB=1),
        ]


# The module-level names the tests and tools have always imported: LeNet-5's.
check_params = LeNet5.check_params

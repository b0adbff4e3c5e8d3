"""How large an honest gradient can be: a bound that follows from the parameters alone.

A worker could return finite poison (every gradient 1e30) that no NaN check
catches.  This module bounds, for given parameters, every element of the summed
gradient of `count` samples, from the network's structure: standardised pixels
are at most `MAX_PIXEL` in magnitude; a linear or convolution layer's outputs are
at most (sum of |weights| of one output) x (largest input) + |bias|; ReLU and max
pooling never enlarge a value; the softmax cross-entropy's gradient is within
[-1, 1] per logit; going back, a layer's input gradient is at most (sum of
|weights| reaching one input) x (largest output gradient); max pooling routes
each gradient to one input.  A weight gradient is then at most (positions the
kernel visits) x (largest output gradient) x (largest input).  The linear layers'
per-sample factors (lenet.model.FACTOR_WIDTHS) are bounded directly: an input is
a ReLU's output, so within [0, largest activation]; a delta is at most the largest
output gradient.  Every honest
result is within the bound (the rule never refuses one: `tests/unit/test_bounds.py`
checks it on real data and trained parameters); the bound is loose, so it stops
gross poison only; subtle lies are for verification by recomputation.
"""

from __future__ import annotations

import numpy as np

from lenet.data import MEAN, STD
from lenet.model import Factors
from lenet.params import Params

MAX_PIXEL = max(abs((0.0 - MEAN) / STD), abs((1.0 - MEAN) / STD))
# float32 rounding in the real sums can exceed the exact bound by a relative ~1e-6
# per addition; a factor of 2 covers that with room to spare.
SAFETY = 2.0


def _out_bound(w: np.ndarray, b: np.ndarray, x: float) -> float:
    """Largest |output| of a layer whose inputs are at most x: per output, sum|w| * x + |b|."""
    w64 = np.abs(w.astype(np.float64)).reshape(w.shape[0], -1)
    return float((w64.sum(axis=1) * x + np.abs(b.astype(np.float64))).max())


def _in_grad_bound(w: np.ndarray, d: float) -> float:
    """Largest |input gradient| when output gradients are at most d: per input, sum of |w| reaching it."""
    w64 = np.abs(w.astype(np.float64))
    reaching = w64.sum(axis=0) if w.ndim == 2 else w64.sum(axis=(0, 2, 3))  # conv: any of F*KH*KW taps
    return float(reaching.max() * d)


def per_sample_bounds(params: Params) -> dict[str, float]:
    """The largest |element| one sample can give: for every parameter's gradient and every factor."""
    p = params
    a0 = MAX_PIXEL
    a1 = _out_bound(p["conv1.weight"], p["conv1.bias"], a0)  # (after pool, ReLU: not larger)
    a2 = _out_bound(p["conv2.weight"], p["conv2.bias"], a1)
    a3 = _out_bound(p["fc1.weight"], p["fc1.bias"], a2)
    a4 = _out_bound(p["fc2.weight"], p["fc2.bias"], a3)
    d5 = 1.0  # softmax(logits) - onehot
    d4 = _in_grad_bound(p["fc3.weight"], d5)
    d3 = _in_grad_bound(p["fc2.weight"], d4)
    d2 = _in_grad_bound(p["fc1.weight"], d3)
    d1 = _in_grad_bound(p["conv2.weight"], d2)
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


def implausible(grads: Params, factors: Factors, count: int, bounds: dict[str, float]) -> str | None:
    """The first array of a unit of `count` samples that no honest computation gives, or None.

    grads: summed gradients (any subset of the parameters), each within `count`
    samples' bound; factors: per-sample rows, each element within one sample's
    bound, and the inputs (ReLU outputs) not negative.
    """
    for name, g in grads.items():
        largest, bound = float(np.abs(g).max()), SAFETY * count * bounds[name]
        if not largest <= bound:  # also true for NaN
            return f"{name}: |gradient| {largest:.3g} > {bound:.3g} possible for {count} samples"
    for name, f in factors.items():
        if not f.size:
            continue
        largest, bound = float(np.abs(f).max()), SAFETY * bounds[name]
        if not largest <= bound:
            return f"{name}: |factor| {largest:.3g} > {bound:.3g} possible for one sample"
        if name.endswith(".input") and not float(f.min()) >= 0:
            return f"{name}: a negative input {float(f.min()):.3g}, but inputs are ReLU outputs"
    return None

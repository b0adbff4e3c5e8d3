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
per-sample factors (the model's FACTOR_WIDTHS) are bounded directly: an input that
is a ReLU's output (the model's NONNEGATIVE_FACTORS) is within [0, largest
activation]; a delta is at most the largest output gradient.  Each model applies
these rules to its own layers (`Model.per_sample_bounds`, e.g. lenet/model.py's);
this module holds the rules and the check.  Every honest
result is within the bound (the rule never refuses one: `tests/unit/test_bounds.py`
checks it on real data and trained parameters); the bound is loose, so it stops
gross poison only; subtle lies are for verification by recomputation.
"""

from __future__ import annotations

import numpy as np

from typing import TYPE_CHECKING

from lenet.architecture import Factors
from lenet.data import MEAN, STD
from lenet.params import Params

if TYPE_CHECKING:
    from lenet.architecture import Model

MAX_PIXEL = max(abs((0.0 - MEAN) / STD), abs((1.0 - MEAN) / STD))
# float32 rounding in the real sums can exceed the exact bound by a relative ~1e-6
# per addition; a factor of 2 covers that with room to spare.
SAFETY = 2.0


# |w| is exact in float32, so the sums are taken in float64 without a float64 copy of the weights: the same
# bounds, and LeNet-5's take 0.09 ms instead of 0.37 ms (timed alone); the coordinator computes them every step.


def out_bound(w: np.ndarray, b: np.ndarray, x: float) -> float:
    """Largest |output| of a layer whose inputs are at most x: per output, sum|w| * x + |b|."""
    sums = np.abs(w).reshape(w.shape[0], -1).sum(axis=1, dtype=np.float64)
    return float((sums * x + np.abs(b.astype(np.float64))).max())


def in_grad_bound(w: np.ndarray, d: float) -> float:
    """Largest |input gradient| when output gradients are at most d: per input, sum of |w| reaching it."""
    aw = np.abs(w)
    reaching = aw.sum(axis=0, dtype=np.float64) if w.ndim == 2 else aw.sum(axis=(0, 2, 3), dtype=np.float64)
    return float(reaching.max() * d)  # conv: any of F*KH*KW taps


def per_sample_bounds(params: Params, model: type[Model] | None = None) -> dict[str, float]:
    """The largest |element| one sample can give, for every gradient and factor of `model` (default: the
    default model) with these parameters."""
    from lenet.models import get_model, DEFAULT_MODEL

    return (model or get_model(DEFAULT_MODEL)).per_sample_bounds(params)


def implausible(grads: Params, factors: Factors, count: int, bounds: dict[str, float],
                model: type[Model] | None = None) -> str | None:
    """The first array of a unit of `count` samples that no honest computation gives, or None.

    grads: summed gradients (any subset of the parameters), each within `count`
    samples' bound; factors: per-sample rows, each element within one sample's
    bound, and those of `model`'s NONNEGATIVE_FACTORS (ReLU outputs) not negative.
    """
    from lenet.models import get_model, DEFAULT_MODEL

    nonnegative = (model or get_model(DEFAULT_MODEL)).NONNEGATIVE_FACTORS
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
        if name in nonnegative and not float(f.min()) >= 0:
            return f"{name}: a negative input {float(f.min()):.3g}, but it is a ReLU output"
    return None

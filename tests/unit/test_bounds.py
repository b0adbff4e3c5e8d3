"""The plausibility rule for gradients: never refuses an honest result, always refuses gross poison."""

import numpy as np
import pytest

from lenet.bounds import implausible, per_sample_bounds
from lenet.config import TrainConfig
from lenet.data import standardize
from lenet.model import PARAM_SHAPES, LeNet5
from lenet.train import train


@pytest.fixture(scope="module")
def trained(mnist):
    """Parameters after a short run with a high learning rate: larger weights than at the start."""
    import dataclasses

    small = dataclasses.replace(mnist, train_images=mnist.train_images[:3000], train_labels=mnist.train_labels[:3000])
    return train(TrainConfig(epochs=1, batch_size=32, lr=0.2), small, log=lambda s: None).params


@pytest.mark.parametrize("which", ["initial", "trained"])
def test_every_honest_sample_is_within_the_bound(mnist, trained, which):
    model = LeNet5(seed=3)
    if which == "trained":
        model.params = trained
    bounds = per_sample_bounds(model.params)
    images, labels = mnist.train_images[:300], mnist.train_labels[:300]
    worst = {k: 0.0 for k in PARAM_SHAPES}
    for i in range(len(labels)):  # one sample at a time: the tightest case for the per-sample bound
        g = model.sum_loss_and_grads(standardize(images[i : i + 1]), labels[i : i + 1]).grads
        worst = {k: max(worst[k], float(np.abs(g[k]).max())) for k in g}
        assert implausible(g, 1, bounds) is None
    assert all(worst[k] <= bounds[k] for k in bounds)  # the exact bound holds, before any safety factor
    batch = model.sum_loss_and_grads(standardize(images), labels).grads
    assert implausible(batch, len(labels), bounds) is None


def test_poison_is_refused(mnist):
    params = LeNet5(seed=3).params
    bounds = per_sample_bounds(params)
    honest = LeNet5(seed=3).sum_loss_and_grads(standardize(mnist.train_images[:16]), mnist.train_labels[:16]).grads
    for name in PARAM_SHAPES:
        poisoned = {**honest, name: np.full(PARAM_SHAPES[name], 1e30, np.float32)}
        assert name in implausible(poisoned, 16, bounds)
    nan = {**honest, "fc1.bias": np.full(PARAM_SHAPES["fc1.bias"], np.nan, np.float32)}
    assert "fc1.bias" in implausible(nan, 16, bounds)

"""The plausibility rule for gradients: never refuses an honest result, always refuses gross poison."""

import numpy as np
import pytest

from lenet.bounds import implausible, per_sample_bounds
from lenet.config import TrainConfig
from lenet.data import standardize
from lenet.model import FACTOR_WIDTHS, PARAM_SHAPES, TREE_PARAMS, LeNet5
from lenet.shards import unit_sums
from lenet.train import train


@pytest.fixture(scope="module")
def trained(mnist):
    """Parameters after a short run with a high learning rate: larger weights than at the start."""
    import dataclasses

    small = dataclasses.replace(mnist, train_images=mnist.train_images[:3000], train_labels=mnist.train_labels[:3000])
    return train(TrainConfig(epochs=1, batch_size=32, lr=0.2), small, log=lambda s: None).params


@pytest.fixture(scope="module")
def well_trained(mnist):
    """Parameters that classify most samples with near certainty: losses near 0."""
    import dataclasses

    small = dataclasses.replace(mnist, train_images=mnist.train_images[:6000], train_labels=mnist.train_labels[:6000])
    return train(TrainConfig(epochs=3, batch_size=64), small, log=lambda s: None).params


@pytest.mark.parametrize("which", ["initial", "trained"])
def test_every_honest_sample_is_within_the_bound(mnist, trained, which):
    model = LeNet5(seed=3)
    if which == "trained":
        model.params = trained
    bounds = per_sample_bounds(model.params)
    images, labels = mnist.train_images[:300], mnist.train_labels[:300]
    worst = {k: 0.0 for k in bounds}
    for i in range(len(labels)):  # one sample at a time: the tightest case for the per-sample bound
        g = model.sum_loss_and_grads(standardize(images[i : i + 1]), labels[i : i + 1]).grads
        unit = unit_sums(model, images[i : i + 1], labels[i : i + 1], [1])
        worst = {k: max(worst[k], float(np.abs({**g, **unit.factors}[k]).max())) for k in worst}
        assert implausible(g, {}, 1, bounds) is None
        assert implausible(unit.grads, unit.factors, 1, bounds) is None
    assert all(worst[k] <= bounds[k] for k in bounds)  # the exact bound holds, before any safety factor
    batch = unit_sums(model, images, labels, [len(labels)])
    assert implausible(batch.grads, batch.factors, len(labels), bounds) is None


def test_poison_is_refused(mnist):
    params = LeNet5(seed=3).params
    bounds = per_sample_bounds(params)
    honest = unit_sums(LeNet5(seed=3), mnist.train_images[:16], mnist.train_labels[:16], [16])
    assert implausible(honest.grads, honest.factors, 16, bounds) is None
    for name in TREE_PARAMS:
        poisoned = {**honest.grads, name: np.full(PARAM_SHAPES[name], 1e30, np.float32)}
        assert name in implausible(poisoned, honest.factors, 16, bounds)
    for name in FACTOR_WIDTHS:
        poisoned = {**honest.factors, name: np.full_like(honest.factors[name], 1e30)}
        assert name in implausible(honest.grads, poisoned, 16, bounds)
    nan = {**honest.grads, "conv1.bias": np.full(PARAM_SHAPES["conv1.bias"], np.nan, np.float32)}
    assert "conv1.bias" in implausible(nan, honest.factors, 16, bounds)
    negative = {**honest.factors, "fc2.input": -honest.factors["fc2.input"] - 1}
    assert "negative input" in implausible(honest.grads, negative, 16, bounds)


@pytest.mark.parametrize("which", ["initial", "trained", "well trained"])
def test_honest_losses_and_right_answers_always_agree(mnist, trained, well_trained, which):
    """Per sample, a loss below ln 2 is a right answer and a right answer has a loss of at most ln 10: whatever
    the parameters, an honest unit's losses and count of right answers pass `outcome_problem`."""
    model = LeNet5(seed=3)
    model.params = {"initial": model.params, "trained": trained, "well trained": well_trained}[which]
    images, labels = mnist.train_images[:2000], mnist.train_labels[:2000]
    for start in range(0, 1984, 64):
        unit = unit_sums(model, images[start:start + 64], labels[start:start + 64], [32, 32])
        assert LeNet5.outcome_problem(unit.losses, unit.correct) is None
        # ... and exactly: each sample's own loss against its own answer
        for i in range(start, start + 64, 16):
            one = unit_sums(model, images[i:i + 1], labels[i:i + 1], [1])
            assert LeNet5.outcome_problem(one.losses, one.correct) is None


def test_losses_that_contradict_the_right_answers_are_refused():
    zeros = np.zeros(64, np.float32)
    assert "0 right answers, but 64 losses below ln 2" in LeNet5.outcome_problem(zeros, 0)  # the lazy liar
    assert LeNet5.outcome_problem(zeros, 64) is None  # every sample certain and right: possible
    assert "at most ln 10" in LeNet5.outcome_problem(np.full(64, 3.0, np.float32), 1)  # p(label) < 1/10: wrong
    assert LeNet5.outcome_problem(np.full(64, 1.0, np.float32), 30) is None  # between: either

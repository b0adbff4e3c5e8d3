"""The step under way (coordinator/step.py): what its results are checked against is computed once, from the
step's own parameters, whenever it is first asked for."""

from __future__ import annotations

from coordinator.step import Step
from coordinator.training import Training
from lenet.config import TrainConfig
from lenet.model import LeNet5


class CountingLeNet5(LeNet5):
    """LeNet-5 that counts how often its bounds are computed."""

    computed = 0

    @classmethod
    def per_sample_bounds(cls, params):
        cls.computed += 1
        return super().per_sample_bounds(params)


def test_a_step_s_bounds_are_computed_once_from_its_parameters_when_first_prepared(mnist):
    training = Training(TrainConfig(epochs=1, batch_size=64, train_subset=128, seed=3), 4, mnist)
    plan = training.plan(0, (1,))
    params = {k: v * 2 for k, v in training.params.items()}  # not the run's: the step's own
    CountingLeNet5.computed = 0
    step = Step.start(plan, params, 10.0, 0.0, CountingLeNet5)
    assert CountingLeNet5.computed == 0  # not on the way out: the start of a step is on the critical path

    prepared = step.prepare_checks()  # what the loop asks for while the workers compute
    assert prepared == LeNet5.per_sample_bounds(params) != LeNet5.per_sample_bounds(training.params)
    assert step.bounds is prepared and step.prepare_checks() is prepared
    assert CountingLeNet5.computed == 1

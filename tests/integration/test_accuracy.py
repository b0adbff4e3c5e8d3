"""The promise of the reference trainer: default hyper-parameters reach 99% in 5 epochs."""

import pytest

from lenet.config import TrainConfig
from lenet.train import train


@pytest.mark.slow
def test_default_hyperparameters_reach_99_percent_in_5_epochs(mnist):
    result = train(TrainConfig(), mnist, log=print)
    assert len(result.history) == 5
    assert result.history[-1].test_accuracy >= 0.99

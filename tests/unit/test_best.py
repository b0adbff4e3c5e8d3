"""--keep-best: which epoch wins, and what a resumed run finds in its model file."""

import numpy as np

from lenet.best import BestEpoch, resumed_best

CONFIG = {"epochs": 3, "max_steps": None, "seed": 0}


def params(v: float) -> dict:
    return {"w": np.full(3, v, dtype=np.float32)}


def test_the_best_test_epoch_wins_and_a_tie_keeps_the_earlier():
    best = BestEpoch()
    p = params(1.0)
    assert best.offer(1, 10, 0.90, p)
    p["w"][:] = 2.0  # the trainer goes on changing its arrays: the best keeps its own copy
    assert best.offer(2, 20, 0.95, p) and not best.offer(3, 30, 0.95, params(3.0))
    assert not best.offer(4, 40, 0.80, params(4.0))
    assert (best.epoch, best.step, best.test_accuracy) == (2, 20, 0.95)
    p["w"][:] = 9.0
    assert (best.params["w"] == 2.0).all()
    assert best.summary(4) == "kept the parameters of epoch 2 (test acc 95.00%), the best test epoch of 4"


HISTORY = [{"epoch": 1, "step": 10, "test_accuracy": 0.9}, {"epoch": 2, "step": 20, "test_accuracy": 0.95},
           {"epoch": 3, "step": 30, "test_accuracy": 0.93}]


def test_a_resume_takes_the_best_from_the_model_file_when_it_holds_that_epoch():
    meta = {"best_epoch": 2, "step": 20, "test_accuracy": 0.95, "config": {**CONFIG, "epochs": 2, "max_steps": 25}}
    best, lost = resumed_best(HISTORY, (params(2.0), meta), CONFIG)
    assert lost is None and (best.epoch, best.step, best.test_accuracy) == (2, 20, 0.95)
    assert (best.params["w"] == 2.0).all()
    assert not best.offer(4, 40, 0.94, params(4.0))  # later epochs must beat it
    # A shorter run that ended mid-epoch saved its end, better than its epochs: that is the best so far.
    meta = {"best_epoch": 2.5, "step": 25, "test_accuracy": 0.96, "config": {**CONFIG, "max_steps": 25}}
    best, lost = resumed_best(HISTORY, (params(2.5), meta), CONFIG)
    assert lost is None and (best.epoch, best.step, best.test_accuracy) == (2.5, 25, 0.96)


def test_a_resume_says_when_the_best_epochs_parameters_are_not_there():
    for saved, why in [(None, "missing or unreadable: epoch 2's parameters are lost"),
                       ((params(1.0), {"best_epoch": 1, "step": 10, "test_accuracy": 0.9, "config": CONFIG}),
                        "holds epoch 1"),
                       ((params(2.0), {"best_epoch": 2, "step": 20, "test_accuracy": 0.95,
                                       "config": {**CONFIG, "seed": 1}}), "does not hold this run's best epoch 2"),
                       ((params(2.0), {"epoch": 3, "test_accuracy": 0.95, "config": CONFIG}), "holds epoch 3"),
                       ((params(2.0), {"best_epoch": 2, "test_accuracy": 0.95, "config": "junk"}), "epoch 2")]:
        best, lost = resumed_best(HISTORY, saved, CONFIG)
        assert best.epoch is None and why in lost
    assert resumed_best([], None, CONFIG) == (BestEpoch(), None)

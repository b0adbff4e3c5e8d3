"""`--gradient-delay 1`: each step's gradient is computed with the parameters before the previous update.

The rules, where each lives: the trainer's arithmetic (lenet/train.py), the
coordinator's run state (`Training.lagged`, coordinator/training.py), what a
checkpoint holds (coordinator/checkpoint.py), the run's identity
(coordinator/runs.py), the wire (`Params.lag`) and the dispatch of a step handed
out early (coordinator/dispatch.py).
"""

import dataclasses

import msgpack
import numpy as np
import pytest

from coordinator import checkpoint as ckpt
from coordinator import protocol as P
from coordinator import runs
from coordinator.dispatch import plan_gives
from coordinator.scheduler import DeadlinePolicy, StepScheduler
from coordinator.training import Training
from lenet.config import TrainConfig, make_schedule
from lenet.data import epoch_batches
from lenet.model import LeNet5
from lenet.shards import mean_gradient, unit_sums
from lenet.train import train
from test_training import run_steps

PLAIN = TrainConfig(epochs=1, batch_size=32, momentum=0.0, nesterov=False, weight_decay=0.0, seed=2, max_steps=3,
                    warmup_steps=0)


@pytest.fixture(scope="module")
def small(mnist):
    return dataclasses.replace(mnist, train_images=mnist.train_images[:256], train_labels=mnist.train_labels[:256])


def same(a, b) -> bool:
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def gradient(params, data, idx):
    """The mean gradient of the samples `idx` at `params`, as the trainer computes it in one shard."""
    net = LeNet5()
    net.params = params
    sums = unit_sums(net, data.train_images[idx], data.train_labels[idx], [len(idx)])
    return mean_gradient({(0, 1): sums}, 1, len(idx))


# --------------------------------------------------------------------------- the trainer's arithmetic


def test_the_first_step_is_the_synchronous_one_and_then_the_runs_part(small):
    one = dataclasses.replace(PLAIN, max_steps=1)
    assert same(train(dataclasses.replace(one, gradient_delay=1), small, log=lambda s: None, shards=1).params,
                train(one, small, log=lambda s: None, shards=1).params)
    assert not same(train(dataclasses.replace(PLAIN, gradient_delay=1), small, log=lambda s: None, shards=1).params,
                    train(PLAIN, small, log=lambda s: None, shards=1).params)


def test_each_update_is_the_gradient_at_the_parameters_one_step_before(small):
    """Plain SGD, so an update is -lr x gradient: p3 - p2 is the gradient of batch 2 at p1."""
    delayed = dataclasses.replace(PLAIN, gradient_delay=1)
    p = [train(dataclasses.replace(delayed, max_steps=k), small, log=lambda s: None, shards=1).params
         for k in (1, 2, 3)]
    batch = epoch_batches(PLAIN.seed, 0, 256, PLAIN.batch_size)[2]
    lr = make_schedule(PLAIN, 256 // PLAIN.batch_size)(2)
    g = gradient(p[0], small, batch)
    for k in p[2]:
        np.testing.assert_allclose(p[2][k] - p[1][k], -lr * g[k], rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------- the coordinator's run state


def test_the_run_keeps_the_parameters_before_the_last_update_and_computes_with_them(mnist):
    training = Training(TrainConfig(epochs=1, batch_size=64, train_subset=256, seed=3, gradient_delay=1), 4, mnist)
    assert training.pipelined and training.gradient_params is training.params  # the first step: its own
    before = {k: v.copy() for k, v in training.params.items()}
    run_steps(training, 1)
    assert same(training.gradient_params, before) and not same(training.params, before)
    synchronous = Training(TrainConfig(epochs=1, batch_size=64, train_subset=256, seed=3), 4, mnist)
    run_steps(synchronous, 1)
    assert not synchronous.pipelined and synchronous.gradient_params is synchronous.params


def test_a_snapshot_and_a_rewind_carry_the_lagged_parameters(mnist):
    training = Training(TrainConfig(epochs=1, batch_size=64, train_subset=256, seed=3, gradient_delay=1), 4, mnist)
    run_steps(training, 1)
    snap = training.snapshot()
    lagged = {k: v.copy() for k, v in training.gradient_params.items()}
    run_steps(training, 2)
    assert not same(training.gradient_params, lagged)
    training.rewind(snap)
    assert same(training.gradient_params, lagged) and training.state.step == 1


def test_steps_done_again_are_numbered_above_the_next_step_already_out(mnist):
    """Rewound while step 2 is under way and step 3 is out: the replay's numbers are new to every member (one
    that held a number again would not be sent that step's parameters)."""
    training = Training(TrainConfig(epochs=1, batch_size=64, train_subset=512, seed=3, gradient_delay=1), 4, mnist)
    snapshot = training.snapshot()
    run_steps(training, 2)
    out = [training.plan(step, (1,)).wire for step in (2, 3)]  # the step under way and the one out early
    training.rewind(snapshot)
    assert training.plan(0, (1,)).wire > max(out)


def test_a_checkpoint_holds_the_lagged_parameters_and_restores_them(mnist, tmp_path):
    config = TrainConfig(epochs=1, batch_size=64, train_subset=256, seed=3, gradient_delay=1)
    training = Training(config, 4, mnist)
    run_steps(training, 2)
    identity = runs.identity(config, 4, training.data.checksums)
    path = ckpt.save(tmp_path, ckpt.snapshot(training, identity))
    loaded = ckpt.load(path)
    again = Training(config, 4, mnist)
    ckpt.restore(again, loaded)
    assert same(again.gradient_params, training.gradient_params) and same(again.params, training.params)


def test_a_checkpoint_whose_lagged_parameters_disagree_with_its_config_is_refused(mnist, tmp_path):
    config = TrainConfig(epochs=1, batch_size=64, train_subset=256, seed=3, gradient_delay=1)
    training = Training(config, 4, mnist)
    run_steps(training, 1)
    c = ckpt.snapshot(training, runs.identity(config, 4, training.data.checksums))
    without = ckpt.save(tmp_path, dataclasses.replace(c, lagged=None))
    with pytest.raises(ckpt.StorageError, match="gradient delay 1, but the lagged parameters are missing"):
        ckpt.load(without)
    plain = dataclasses.replace(c, meta={**c.meta, "config": {**c.meta["config"], "gradient_delay": 0}})
    (tmp_path / "plain").mkdir()
    with pytest.raises(ckpt.StorageError, match="gradient delay 0, but the lagged parameters are there"):
        ckpt.load(ckpt.save(tmp_path / "plain", plain))


def test_older_runs_keep_their_identity_and_checkpoints_load():
    """Written before the flag existed: no gradient_delay in the config, read as 0, same identity."""
    config = TrainConfig(epochs=2, train_subset=1280)
    older = {k: v for k, v in config.to_dict().items() if k != "gradient_delay"}
    assert runs._settings(older) == runs._settings(config.to_dict())
    assert runs.identity(dataclasses.replace(config, gradient_delay=1), 8, {}).run_id != \
        runs.identity(config, 8, {}).run_id


def test_only_a_delay_of_0_or_1_is_accepted():
    with pytest.raises(ValueError, match="gradient delay must be 0 or 1"):
        TrainConfig(gradient_delay=2)


# --------------------------------------------------------------------------- the wire and the dispatch


def test_params_say_how_many_steps_before_theirs_are_still_open():
    params = LeNet5().params
    frame = P.encode(P.Params(step=4, params=params, lag=1))
    assert P.decode(frame).lag == 1
    body = msgpack.unpackb(frame, raw=False)
    for lag in (2, -1, True):
        with pytest.raises(P.ProtocolError):
            P.decode(msgpack.packb({**body, "lag": lag}, use_bin_type=True))
    with pytest.raises(P.ProtocolError, match="lag 1 must be at most 0"):  # no step before the first
        P.decode(msgpack.packb({**body, "step": 0}, use_bin_type=True))


def test_answered_units_waiting_to_be_judged_do_not_count_as_held():
    """A member that answered both units of the step handed out early is free for a second opinion now."""
    now, step = StepScheduler(0, [(0, 1)], [8], task_timeout=30.0), StepScheduler(1, [(0, 1), (1, 2)], [8, 8],
                                                                                    task_timeout=30.0)
    deadlines = DeadlinePolicy(cap=30.0)
    plan_gives([step], [("a", 1)], now=0.0, deadlines=deadlines, prefetch=2)  # "a" holds both
    assert plan_gives([now, step], [("a", 1)], now=0.0, deadlines=deadlines, prefetch=2) == []
    gives = plan_gives([now, step], [("a", 1)], now=0.0, deadlines=deadlines, prefetch=2, answered={"a": 2})
    assert [(g.member, g.batch, g.unit) for g in gives] == [("a", 0, 0)]

"""Optimizers against their textbook update rules; state round trips; the schedule."""

import math

import numpy as np
import pytest

from lenet.optim import SGD, Adam, LRSchedule


def params_and_grads(seed=0):
    rng = np.random.default_rng(seed)
    p = {"a": rng.standard_normal((3, 2)).astype(np.float32), "b": rng.standard_normal(4).astype(np.float32)}
    g = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in p.items()}
    return p, g


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_matches_reference_formula(nesterov):
    p, g = params_and_grads()
    ref = {k: v.astype(np.float64) for k, v in p.items()}
    vel = {k: np.zeros_like(v) for k, v in ref.items()}
    opt = SGD(p, momentum=0.9, nesterov=nesterov, weight_decay=0.01)
    for step in range(3):
        opt.step(p, g, lr=0.1)
        for k in ref:
            d = g[k] + 0.01 * ref[k]
            vel[k] = 0.9 * vel[k] + d
            ref[k] -= 0.1 * (d + 0.9 * vel[k] if nesterov else vel[k])
    for k in p:
        assert p[k].dtype == np.float32
        np.testing.assert_allclose(p[k], ref[k], rtol=1e-5)


def test_adam_matches_reference_formula():
    p, g = params_and_grads()
    ref = {k: v.astype(np.float64) for k, v in p.items()}
    m = {k: np.zeros_like(v) for k, v in ref.items()}
    v = {k: np.zeros_like(x) for k, x in ref.items()}
    opt = Adam(p)
    for t in range(1, 4):
        opt.step(p, g, lr=0.01)
        for k in ref:
            m[k] = 0.9 * m[k] + 0.1 * g[k]
            v[k] = 0.999 * v[k] + 0.001 * g[k] ** 2
            ref[k] -= 0.01 * (m[k] / (1 - 0.9**t)) / (np.sqrt(v[k] / (1 - 0.999**t)) + 1e-8)
    for k in p:
        np.testing.assert_allclose(p[k], ref[k], rtol=1e-4)


@pytest.mark.parametrize("cls", [SGD, Adam])
def test_state_round_trip_continues_bit_identically(cls):
    p1, g = params_and_grads()
    p2 = {k: v.copy() for k, v in p1.items()}
    a = cls(p1)
    a.step(p1, g, 0.1)
    state = a.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    b = cls(p2)
    b.step(p2, g, 0.1)
    b = cls(p2)  # a fresh optimizer, restored from plain arrays
    b.load_state_dict(state)
    a.step(p1, g, 0.05)
    b.step(p2, g, 0.05)
    assert all(np.array_equal(p1[k], p2[k]) for k in p1)


def test_state_with_wrong_keys_or_shapes_is_refused():
    p, _ = params_and_grads()
    opt = SGD(p)
    state = opt.state_dict()
    with pytest.raises(ValueError, match="missing"):
        opt.load_state_dict({k: v for k, v in list(state.items())[:1]})
    state["velocity/a"] = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="velocity/a"):
        opt.load_state_dict(state)


def test_schedule_warmup_then_cosine():
    s = LRSchedule(base_lr=0.1, total_steps=110, warmup_steps=10)
    assert s(0) == pytest.approx(0.01)
    assert s(9) == pytest.approx(0.1)
    assert s(10) == pytest.approx(0.1)
    assert s(60) == pytest.approx(0.05)
    assert s(110) == pytest.approx(0.0, abs=1e-12)
    assert all(s(i) >= s(i + 1) for i in range(10, 110))


def test_schedule_step_decay():
    s = LRSchedule(base_lr=1.0, total_steps=100, kind="step", gamma=0.5, step_every=10)
    assert [s(0), s(9), s(10), s(25)] == [1.0, 1.0, 0.5, 0.25]


@pytest.mark.parametrize("kwargs, msg", [
    ({"kind": "linear"}, "schedule"), ({"base_lr": -1.0}, "learning rate"), ({"base_lr": math.nan}, "learning rate"),
    ({"total_steps": 0}, "total steps"), ({"warmup_steps": -1}, "warm-up"),
])
def test_schedule_rejects_bad_values(kwargs, msg):
    args = {"base_lr": 0.1, "total_steps": 10, **kwargs}
    with pytest.raises(ValueError, match=msg):
        LRSchedule(**args)


def test_optimizers_reject_bad_hyperparameters():
    p, _ = params_and_grads()
    with pytest.raises(ValueError, match="momentum"):
        SGD(p, momentum=1.5)
    with pytest.raises(ValueError, match="weight decay"):
        Adam(p, weight_decay=-1)


def test_schedule_paper_steps_per_pass():
    """The 1998 paper's rates 0.0005 (2 passes), 0.0002 (3), 0.0001 (3), 0.00005 (4), then 0.00001."""
    s = LRSchedule(base_lr=0.0005, total_steps=2000, kind="paper", step_every=100)
    rates = [s(100 * epoch + 50) for epoch in range(20)]
    assert rates == pytest.approx([5e-4] * 2 + [2e-4] * 3 + [1e-4] * 3 + [5e-5] * 4 + [1e-5] * 8)
    assert s(99) == s(0) and s(200) < s(199)


def test_schedule_paper_passes_count_from_the_first_step_whatever_the_warm_up():
    s = LRSchedule(base_lr=1.0, total_steps=2000, warmup_steps=50, kind="paper", step_every=100)
    assert s(0) == pytest.approx(1 / 50) and s(49) == 1.0 and s(199) == 1.0 and s(200) == pytest.approx(0.4)

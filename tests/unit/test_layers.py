"""Every layer's backward pass against float64 finite differences."""

import numpy as np
import pytest

from gradcheck import numerical_grad, rel_error
from lenet import layers

rng = np.random.default_rng(0)


def check(forward, backward, inputs: dict, wrt: list[str], tol=1e-6):
    """Compare backward's gradients of sum(out * dout) w.r.t. `wrt` to numerical ones."""
    out, cache = forward(**inputs)
    dout = rng.standard_normal(out.shape)
    grads = backward(dout, cache)
    for name, analytic in zip(wrt, grads):
        num = numerical_grad(lambda: float((forward(**inputs)[0] * dout).sum()), inputs[name])
        assert rel_error(num, analytic) < tol, name


@pytest.mark.parametrize("pad", [0, 2])
def test_conv_backward(pad):
    x = rng.standard_normal((2, 3, 7, 7))  # (N, C, H, W)
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    check(lambda x, w, b: layers.conv_forward(x, w, b, pad), layers.conv_backward, {"x": x, "w": w, "b": b},
          ["x", "w", "b"])


def test_conv_matches_direct_cross_correlation():
    x = rng.standard_normal((3, 2, 6, 6))  # (N, C, H, W)
    w = rng.standard_normal((5, 2, 3, 3))
    b = rng.standard_normal(5)
    out, _ = layers.conv_forward(x, w, b, pad=1)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    direct = np.zeros((3, 5, 6, 6))
    for n in range(3):
        for f in range(5):
            for i in range(6):
                for j in range(6):
                    direct[n, f, i, j] = (xp[n, :, i : i + 3, j : j + 3] * w[f]).sum() + b[f]
    np.testing.assert_allclose(out, direct, rtol=1e-12, atol=1e-12)


def test_conv_first_layer_skips_input_gradient():
    x = rng.standard_normal((2, 1, 8, 8))
    out, cache = layers.conv_forward(x, rng.standard_normal((2, 1, 5, 5)), np.zeros(2), pad=2)
    dx, dw, db = layers.conv_backward(np.ones_like(out), cache, need_dx=False)
    assert dx is None and dw.shape == (2, 1, 5, 5) and db.shape == (2,)


def test_conv_segment_gradients_are_exactly_each_segment_alone():
    """With `sizes`, one (dw, db) per segment, bit for bit the segment computed on its own."""
    x = rng.standard_normal((7, 2, 6, 6)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    out, cache = layers.conv_forward(x, w, b, pad=1)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dx, dw, db = layers.conv_backward(dout, cache, [1, 3, 3])
    assert dw.shape == (3, 3, 2, 3, 3) and db.shape == (3, 3)
    for s, (lo, hi) in enumerate([(0, 1), (1, 4), (4, 7)]):
        out_s, cache_s = layers.conv_forward(x[lo:hi], w, b, pad=1)
        assert np.array_equal(out_s, out[lo:hi])
        dx_s, dw_s, db_s = layers.conv_backward(dout[lo:hi], cache_s)
        assert np.array_equal(dx_s, dx[lo:hi]) and np.array_equal(dw_s, dw[s]) and np.array_equal(db_s, db[s])


def test_linear_stack_is_one_product_per_entry():
    x = rng.standard_normal((3, 4, 6)).astype(np.float32)  # 3 shards of 4 samples
    w, b = rng.standard_normal((5, 6)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    out, cache = layers.linear_forward(x, w, b)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dx, dw, db = layers.linear_backward(dout, cache)
    assert dw.shape == (3, 5, 6) and db.shape == (3, 5)
    for s in range(3):
        out_s, cache_s = layers.linear_forward(x[s], w, b)
        assert np.array_equal(out_s, out[s])
        for stacked, alone in zip((dx[s], dw[s], db[s]), layers.linear_backward(dout[s], cache_s)):
            assert np.array_equal(stacked, alone)


def test_maxpool_backward_numerical():
    x = rng.standard_normal((2, 3, 6, 8))  # distinct values: the gradient is defined
    check(lambda x: layers.maxpool_forward(x), lambda d, c: (layers.maxpool_backward(d, c),), {"x": x}, ["x"])


def test_maxpool_tie_routes_to_one_element():
    x = np.zeros((1, 1, 2, 4))
    x[0, 0, :, 2:] = [[5.0, 5.0], [5.0, 1.0]]  # left window: 4-way tie; right: 3-way tie
    out, cache = layers.maxpool_forward(x)
    dx = layers.maxpool_backward(np.array([[[[1.0, 2.0]]]]), cache)
    expected = np.zeros_like(x)
    expected[0, 0, 0, 0] = 1.0  # first element of the tie, in row-major order
    expected[0, 0, 0, 2] = 2.0
    np.testing.assert_array_equal(dx, expected)
    assert dx.sum() == 3.0  # the gradient is not multiplied by the number of ties


def test_maxpool_rejects_odd_size():
    with pytest.raises(ValueError, match="even"):
        layers.maxpool_forward(np.zeros((1, 1, 5, 4)))


def test_relu_backward():
    x = rng.standard_normal((4, 5))
    check(lambda x: layers.relu_forward(x), lambda d, c: (layers.relu_backward(d, c),), {"x": x}, ["x"])


def test_linear_backward():
    inputs = {"x": rng.standard_normal((4, 6)), "w": rng.standard_normal((3, 6)), "b": rng.standard_normal(3)}
    check(layers.linear_forward, layers.linear_backward, inputs, ["x", "w", "b"])


def test_softmax_cross_entropy_gradient_and_stability():
    logits = rng.standard_normal((5, 10))
    y = rng.integers(0, 10, 5)
    losses, correct, dlogits = layers.softmax_cross_entropy(logits, y)
    num = numerical_grad(lambda: float(layers.softmax_cross_entropy(logits, y)[0].sum()), logits)
    assert rel_error(num, dlogits) < 1e-6
    assert losses.shape == (5,) and losses.dtype == np.float64 and (losses > 0).all()
    assert correct.tolist() == (logits.argmax(1) == y).tolist()
    huge = np.array([[1000.0, 0.0], [-1000.0, 1000.0]], dtype=np.float32)
    losses, _, d = layers.softmax_cross_entropy(huge, np.array([0, 0]))
    assert np.isfinite(losses).all() and np.isfinite(d).all()
    assert losses.tolist() == pytest.approx([0.0, 2000.0])

"""Every layer's backward pass against float64 finite differences."""

import numpy as np
import pytest

from gradcheck import numerical_grad, rel_error
from lenet import layers
from lenet.architecture import linear_grads

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
    dx = layers.linear_input_grad(dout, cache)
    assert dx.shape == (3, 4, 6)
    for s in range(3):
        out_s, cache_s = layers.linear_forward(x[s], w, b)
        assert np.array_equal(out_s, out[s])
        assert np.array_equal(dx[s], layers.linear_input_grad(dout[s], cache_s))


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


def _linear_backward(dout, cache):
    """The training path: the input gradient, and the weight and bias gradients from the factors."""
    grads = linear_grads({"fc.delta": dout, "fc.input": cache[0]})
    return layers.linear_input_grad(dout, cache), grads["fc.weight"], grads["fc.bias"]


def test_linear_backward():
    inputs = {"x": rng.standard_normal((4, 6)), "w": rng.standard_normal((3, 6)), "b": rng.standard_normal(3)}
    check(layers.linear_forward, _linear_backward, inputs, ["x", "w", "b"])


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


@pytest.mark.parametrize("pad", [0, 1])
def test_conv_pool_backward(pad):
    x = rng.standard_normal((2, 2, 6, 6))  # continuous values: no ties, the gradient is defined
    w = rng.standard_normal((3, 2, 3, 3))
    b = rng.standard_normal(3)
    check(lambda x, w, b: layers.conv_pool_forward(x, w, b, pad), layers.conv_pool_backward,
          {"x": x, "w": w, "b": b}, ["w", "b"])


def test_conv_pool_is_conv_then_pool_with_first_maximum_ties():
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    x[:, :, :4] = 0.25  # a flat region: every window of it is a 4-way tie
    w = rng.standard_normal((2, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(2).astype(np.float32)
    out, cache = layers.conv_pool_forward(x, w, b, pad=1)
    conv, conv_cache = layers.conv_forward(x, w, b, pad=1)
    pooled, pool_cache = layers.maxpool_forward(conv)
    np.testing.assert_allclose(out, pooled, rtol=1e-5, atol=1e-5)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dw, db = layers.conv_pool_backward(dout, cache)
    # Route with the fused layer's own forward values, so that ties are the same ties.
    fused_conv = cache[2].reshape(3, 2, 2, 2, 4, 4).transpose(0, 1, 4, 2, 5, 3).reshape(conv.shape)
    dconv = layers.maxpool_backward(dout, (fused_conv, out))
    _, dw_ref, db_ref = layers.conv_backward(dconv, conv_cache)
    for got, want in ((dw, dw_ref), (db, db_ref)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

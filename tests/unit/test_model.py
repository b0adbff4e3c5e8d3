"""The LeNet5 public API and the whole model's gradients."""

import numpy as np
import pytest

from gradcheck import rel_error
from lenet import LeNet5
from lenet.data import standardize
from lenet.model import FACTOR_WIDTHS, PARAM_SHAPES, TREE_PARAMS, check_params, init_params, linear_grads
from lenet.reduction import divide, tree_sum


def mean_loss_and_grads(model, x, y):
    """Mean cross-entropy over the batch and its gradients, from the summed ones the product uses."""
    result = model.sum_loss_and_grads(x, y)
    return result.loss_sum / x.shape[0], divide(result.grads, x.shape[0])


def test_params_follow_pytorch_names_shapes_and_float32():
    model = LeNet5(seed=0)
    assert list(model.params) == list(PARAM_SHAPES)
    for name, shape in PARAM_SHAPES.items():
        assert model.params[name].shape == shape
        assert model.params[name].dtype == np.float32


def test_seed_fixes_parameters():
    a, b, c = init_params(3), init_params(3), init_params(4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv1.weight"], c["conv1.weight"])


def test_forward_and_grads_shapes_dtypes():
    model = LeNet5(seed=0)
    x = np.random.default_rng(0).standard_normal((5, 1, 28, 28)).astype(np.float32)
    y = np.arange(5)
    assert model.forward(x).shape == (5, 10) and model.forward(x).dtype == np.float32
    loss, grads = mean_loss_and_grads(model, x, y)
    assert np.isfinite(loss) and loss > 0
    assert set(grads) == set(model.params)
    for k, g in grads.items():
        assert g.shape == model.params[k].shape and g.dtype == np.float32


def test_rejects_wrong_input_shape():
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        LeNet5().forward(np.zeros((2, 28, 28), dtype=np.float32))


def test_whole_model_gradient_check_every_parameter():
    """Every parameter of every layer against centred differences in float64."""
    model = LeNet5(seed=1, dtype=np.float64)
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((4, 1, 28, 28)), rng.integers(0, 10, 4)
    _, grads = mean_loss_and_grads(model, x, y)
    h = 1e-6
    for name, p in model.params.items():
        flat = p.reshape(-1)
        idx = rng.choice(flat.size, size=min(flat.size, 12), replace=False)
        num = np.empty(len(idx))
        for n, i in enumerate(idx):
            old = flat[i]
            flat[i] = old + h
            plus = mean_loss_and_grads(model, x, y)[0]
            flat[i] = old - h
            minus = mean_loss_and_grads(model, x, y)[0]
            flat[i] = old
            num[n] = (plus - minus) / (2 * h)
        assert rel_error(num, grads[name].reshape(-1)[idx]) < 1e-5, name


def test_matches_pytorch_reference_semantics():
    """conv -> ReLU -> pool with a first-maximum tie rule, computed the slow obvious way."""
    model = LeNet5(seed=5, dtype=np.float64)
    p = model.params
    x = np.random.default_rng(1).standard_normal((2, 1, 28, 28))

    def conv(a, w, b):  # a: (N, C, H, W)
        f, c, k, _ = w.shape
        n, _, h, wd = a.shape
        out = np.zeros((n, f, h - k + 1, wd - k + 1))
        for i in range(h - k + 1):
            for j in range(wd - k + 1):
                out[:, :, i, j] = np.tensordot(a[:, :, i : i + k, j : j + k], w, axes=([1, 2, 3], [1, 2, 3])) + b
        return out

    def pool(a):
        n, c, h, w = a.shape
        return a.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))

    h = pool(np.maximum(conv(np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2))), p["conv1.weight"], p["conv1.bias"]), 0))
    h = pool(np.maximum(conv(h, p["conv2.weight"], p["conv2.bias"]), 0)).reshape(2, 400)
    h = np.maximum(h @ p["fc1.weight"].T + p["fc1.bias"], 0)
    h = np.maximum(h @ p["fc2.weight"].T + p["fc2.bias"], 0)
    np.testing.assert_allclose(model.forward(x), h @ p["fc3.weight"].T + p["fc3.bias"], rtol=1e-10)


def test_sum_of_shards_equals_batch_gradient():
    model = LeNet5(seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((12, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 12)
    _, full = mean_loss_and_grads(model, x, y)
    shards = {(i, i + 1): model.sum_loss_and_grads(x[4 * i : 4 * i + 4], y[4 * i : 4 * i + 4]).grads for i in range(3)}
    averaged = divide(tree_sum(shards, 0, 3), 12)
    for k in full:
        np.testing.assert_allclose(averaged[k], full[k], rtol=1e-4, atol=1e-6)


def test_assigning_params_changes_the_model():
    model = LeNet5(seed=0)
    x = np.zeros((1, 1, 28, 28), dtype=np.float32)
    model.params["fc3.bias"] = np.arange(10, dtype=np.float32)
    model.params["fc3.weight"] = np.zeros((10, 84), dtype=np.float32)
    assert model.forward(x).argmax() == 9


def test_check_params_names_the_problem():
    params = init_params(0)
    params["fc1.weight"] = params["fc1.weight"].astype(np.float64)
    with pytest.raises(ValueError, match="fc1.weight is float64"):
        check_params(params, "file.npz")
    del params["fc2.bias"]
    with pytest.raises(ValueError, match=r"missing \['fc2.bias'\]"):
        check_params(params, "file.npz")


def test_large_batches_are_computed_in_chunks_with_the_same_result():
    from lenet import model as model_module

    model = LeNet5(seed=0, dtype=np.float64)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((10, 1, 28, 28)), rng.integers(0, 10, 10)
    whole = model.sum_loss_and_grads(x, y)
    original = model_module.CHUNK
    model_module.CHUNK = 4  # 10 samples: chunks of 4, 4 and 2
    try:
        chunked = model.sum_loss_and_grads(x, y)
    finally:
        model_module.CHUNK = original
    assert chunked.correct == whole.correct
    assert chunked.loss_sum == pytest.approx(whole.loss_sum, rel=1e-12)
    for k in whole.grads:
        np.testing.assert_allclose(chunked.grads[k], whole.grads[k], rtol=1e-10, atol=1e-12)


def _rows_equal(batched, s: int, lo: int, alone) -> bool:
    """Shard s of a batched pass (samples from lo) against the same shard computed alone."""
    n = len(alone.factors["fc3.delta"])
    return (np.array_equal(batched.losses[lo : lo + n], alone.losses)
            and np.array_equal(batched.correct[lo : lo + n], alone.correct)
            and all(np.array_equal(batched.grads[k][s], alone.grads[k][0]) for k in TREE_PARAMS)
            and all(np.array_equal(batched.factors[k][lo : lo + n], alone.factors[k]) for k in FACTOR_WIDTHS))


@pytest.mark.parametrize("seed", range(6))
def test_each_shard_of_a_batched_pass_is_bit_identical_to_the_shard_alone(mnist, seed):
    """The property the service's determinism rests on: a shard's sums and its samples'
    factors do not depend on which shards shared its call.  Random groupings of real
    images, with shards of 1 and 2 samples and sizes around the BLAS small-matrix and SIMD
    thresholds, and around CHUNK (so passes group shards in every way, and large shards
    are chunked)."""
    from lenet import model as model_module

    rng = np.random.default_rng(seed)
    model = LeNet5(seed=seed)
    n = 300
    x, y = standardize(mnist.train_images[:n]), mnist.train_labels[:n]
    choices = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 128, 255, 256, 257]
    assert {model_module.CHUNK - 1, model_module.CHUNK, model_module.CHUNK + 1} <= set(choices)
    sizes: list[int] = []
    while sum(sizes) < n:
        sizes.append(min(int(rng.choice(choices)), n - sum(sizes)))
    batched = model.stacked_shard_sums(x, y, sizes)
    assert len(batched.grads["conv1.bias"]) == len(sizes)
    assert len(batched.losses) == len(batched.factors["fc1.input"]) == n
    lo = 0
    for s, size in enumerate(sizes):
        alone = model.stacked_shard_sums(x[lo : lo + size], y[lo : lo + size], [size])
        assert _rows_equal(batched, s, lo, alone), (sizes, lo, size)
        lo += size


def test_equal_shards_in_one_pass_are_bit_identical_to_each_alone(mnist):
    """The service's default case: many small shards of one size in one pass."""
    model = LeNet5(seed=7)
    for size, count in [(1, 40), (2, 64), (3, 9), (16, 4)]:
        x, y = standardize(mnist.train_images[: size * count]), mnist.train_labels[: size * count]
        batched = model.stacked_shard_sums(x, y, [size] * count)
        for i in range(count):
            lo = i * size
            alone = model.stacked_shard_sums(x[lo : lo + size], y[lo : lo + size], [size])
            assert _rows_equal(batched, i, lo, alone), (size, i)


def test_linear_gradients_from_factors_are_the_products_over_the_samples(mnist):
    """linear_grads multiplies out what a pass keeps: equal to the per-sample outer products added up."""
    model = LeNet5(seed=2, dtype=np.float64)
    x, y = standardize(mnist.train_images[:5]).astype(np.float64), mnist.train_labels[:5]
    factors = model.stacked_shard_sums(x, y, [5]).factors
    grads = linear_grads(factors)
    for layer in ("fc1", "fc2", "fc3"):
        d, inp = factors[f"{layer}.delta"], factors[f"{layer}.input"]
        np.testing.assert_allclose(grads[f"{layer}.weight"], sum(np.outer(d[i], inp[i]) for i in range(5)), rtol=1e-12)
        np.testing.assert_allclose(grads[f"{layer}.bias"], d.sum(axis=0), rtol=1e-12)
        assert grads[f"{layer}.weight"].shape == PARAM_SHAPES[f"{layer}.weight"]


def test_shard_sums_rejects_sizes_that_do_not_cover_the_batch():
    model = LeNet5()
    x, y = np.zeros((4, 1, 28, 28), dtype=np.float32), np.zeros(4, dtype=int)
    for sizes in ([2, 3], [4, 0], [5, -1]):
        with pytest.raises(ValueError, match="do not split 4 images"):
            model.stacked_shard_sums(x, y, sizes)

"""The 1998 LeNet-5: its layers' and the whole model's gradients, a forward reference, the paper's counts and
Table I, the plausibility bounds on real data, and shards that add up bit for bit."""

import numpy as np
import pytest

from gradcheck import numerical_grad, rel_error
from lenet import lenet1998 as m98
from lenet.architecture import linear_grads
from lenet.bounds import implausible
from lenet.config import TrainConfig
from lenet.lenet1998 import (C3_TABLE, FACTOR_WIDTHS, LINEAR_LAYERS, PARAM_SHAPES, RBF_CENTRES, TREE_PARAMS,
                             LeNet5_1998)
from lenet.models import get_model
from lenet.optim import SGD
from lenet.reduction import divide, stacked_tree_sum
from lenet.shards import gather, mean_gradient, shard_sizes, unit_sums

rng = np.random.default_rng(0)



def mean_loss_and_grads(model, x, y):
    """Mean eq. 9 loss and its gradients, through the model's own per-batch sums (what the trainer uses)."""
    result = model.sum_loss_and_grads(x, y)
    return result.loss_sum / len(x), divide(result.grads, len(x))

def check(forward, backward, inputs: dict, wrt: list[str], tol=1e-6):
    """backward's gradients of sum(out * dout) w.r.t. `wrt` against centred differences (float64)."""
    out, cache = forward(**inputs)
    dout = rng.standard_normal(out.shape)
    grads = backward(dout, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    for name, analytic in zip(wrt, grads):
        num = numerical_grad(lambda: float((forward(**inputs)[0] * dout).sum()), inputs[name])
        assert rel_error(num, analytic) < tol, name


# --------------------------------------------------------------------------- the paper's numbers


def test_registered_as_lenet5_1998():
    assert get_model("lenet5-1998") is LeNet5_1998


def test_exactly_60000_trainable_parameters_layer_by_layer():
    params = LeNet5_1998(seed=0).params
    assert list(params) == list(PARAM_SHAPES)
    assert sum(p.size for p in params.values()) == 60_000
    per_layer = {}
    for name, p in params.items():
        per_layer[name.split(".")[0]] = per_layer.get(name.split(".")[0], 0) + p.size
    assert per_layer == {"c1": 156, "s2": 12, "c3": 1_516, "s4": 32, "c5": 48_120, "f6": 10_164}
    assert all(p.dtype == np.float32 for p in params.values())
    assert set(TREE_PARAMS) | {f"{layer}.{k}" for layer in LINEAR_LAYERS for k in ("weight", "bias")} == set(params)
    assert LeNet5_1998.NONNEGATIVE_FACTORS == frozenset()  # squashed inputs to C5 and F6 can be negative


def test_c3_connections_are_the_papers_table_1():
    # Table I as printed: rows are S2's maps, columns C3's maps, X = connected.
    table = ["X...XXX..XXXX.XX",
             "XX...XXX..XXXX.X",
             "XXX...XXX..X.XXX",
             ".XXX..XXXX..X.XX",
             "..XXX..XXXX.XX.X",
             "...XXX..XXXX.XXX"]
    for c3_map, inputs in enumerate(C3_TABLE):
        assert inputs == tuple(s2 for s2 in range(6) if table[s2][c3_map] == "X"), c3_map
    assert sum(len(t) for t in C3_TABLE) * 25 + 16 == 1_516


def test_a_c3_map_sees_only_the_s2_maps_table_1_gives_it():
    model = LeNet5_1998(seed=1, dtype=np.float64)
    x = rng.standard_normal((1, 6, 14, 14))
    base, _ = m98.table_conv_forward(x, model.params["c3.weight"], model.params["c3.bias"], m98.C3_CONNECTIONS, 16)
    for s2_map in range(6):
        changed = x.copy()
        changed[:, s2_map] += 1.0
        out, _ = m98.table_conv_forward(changed, model.params["c3.weight"], model.params["c3.bias"],
                                        m98.C3_CONNECTIONS, 16)
        moved = {f for f in range(16) if not np.array_equal(out[:, f], base[:, f])}
        assert moved == {f for f, inputs in enumerate(C3_TABLE) if s2_map in inputs}


def test_rbf_centres_are_fixed_distinct_plus_minus_one_codes_not_parameters():
    assert RBF_CENTRES.shape == (10, 84) and set(np.unique(RBF_CENTRES)) == {-1.0, 1.0}
    hamming = (RBF_CENTRES[:, None] != RBF_CENTRES[None]).sum(axis=2)
    assert hamming[~np.eye(10, dtype=bool)].min() >= 7
    assert not any(p.shape == (10, 84) for p in LeNet5_1998().params.values())


def test_prepare_pads_to_32x32_background_minus_0_1_ink_1_175():
    pixels = np.zeros((2, 28, 28), dtype=np.uint8)
    pixels[0, 0, 0], pixels[1, 27, 27] = 255, 51
    x = LeNet5_1998.prepare(pixels)
    assert x.shape == (2, 1, 32, 32) and x.dtype == np.float32
    assert x[0, 0, 2, 2] == np.float32(1.175) and x[1, 0, 29, 29] == pytest.approx(-0.1 + 0.2 * 1.275, abs=1e-6)
    assert np.count_nonzero(x != np.float32(-0.1)) == 2  # the border and the blank pixels are background
    with pytest.raises(ValueError, match="uint8"):
        LeNet5_1998.prepare(pixels.astype(np.float32))


def test_init_is_uniform_within_2_4_over_fan_in_and_fixed_by_the_seed():
    a, b, c = m98.init_params(3), m98.init_params(3), m98.init_params(4)
    assert all(np.array_equal(a[k], b[k]) for k in a) and not np.array_equal(a["c1.weight"], c["c1.weight"])
    limits = {"c1.weight": 2.4 / 25, "s2.weight": 2.4 / 4, "s4.bias": 2.4 / 4, "c5.weight": 2.4 / 400,
              "f6.weight": 2.4 / 120}
    for name, limit in limits.items():
        assert np.abs(a[name]).max() <= limit and np.abs(a[name]).max() > 0.9 * limit, name
    c3_limit = np.array([2.4 / (25 * len(C3_TABLE[f])) for f, _ in m98.C3_CONNECTIONS])
    assert (np.abs(a["c3.weight"]).max(axis=(1, 2)) <= c3_limit).all()


# --------------------------------------------------------------------------- layers


def test_squash_is_a_tanh_scaled_and_its_gradient():
    out, _ = m98.squash_forward(np.array([0.0, 1.5, -30.0]))
    np.testing.assert_allclose(out, [0.0, 1.7159 * np.tanh(1.0), -1.7159], rtol=1e-12)
    check(lambda a: m98.squash_forward(a), m98.squash_backward, {"a": rng.standard_normal((3, 4, 5))}, ["a"])


def test_subsample_hand_computed_and_gradient():
    x = np.arange(16.0).reshape(1, 1, 4, 4)  # windows sum to 0+1+4+5=10, 18, 42, 50
    out, _ = m98.subsample_forward(x, np.array([0.5]), np.array([-1.0]))
    np.testing.assert_array_equal(out[0, 0], [[4.0, 8.0], [20.0, 24.0]])
    check(m98.subsample_forward, m98.subsample_backward,
          {"x": rng.standard_normal((2, 3, 6, 4)), "w": rng.standard_normal(3), "b": rng.standard_normal(3)},
          ["x", "w", "b"])


def test_table_conv_gradient():
    table = ((0, 0), (0, 2), (1, 1), (2, 0), (2, 1), (2, 2))
    check(lambda x, w, b: m98.table_conv_forward(x, w, b, table, 3), m98.table_conv_backward,
          {"x": rng.standard_normal((2, 3, 7, 7)), "w": rng.standard_normal((6, 3, 3)), "b": rng.standard_normal(3)},
          ["x", "w", "b"], tol=1e-5)


def test_conv_param_grads_are_conv_backwards_bit_for_bit():
    x, w, b = rng.standard_normal((5, 1, 8, 8)), rng.standard_normal((3, 1, 5, 5)), rng.standard_normal(3)
    out, cache = m98.layers.conv_forward(x, w, b, pad=0)
    dout = rng.standard_normal(out.shape)
    for sizes in (None, [2, 3]):
        _, dw, db = m98.layers.conv_backward(dout, cache, sizes)
        dw1, db1 = m98.conv_param_grads(dout, cache, sizes)
        assert np.array_equal(dw, dw1) and np.array_equal(db, db1)


def test_rbf_hand_computed_and_gradient():
    centres = np.array([[1.0, -1.0], [-1.0, -1.0]])
    out, _ = m98.rbf_forward(np.array([[0.5, 0.0]]), centres)
    np.testing.assert_allclose(out, [[0.25 + 1.0, 2.25 + 1.0]])
    check(lambda x: m98.rbf_forward(x, RBF_CENTRES), m98.rbf_backward, {"x": rng.standard_normal((3, 84))}, ["x"], tol=1e-5)


def test_eq_9_loss_hand_computed_and_gradient():
    penalties = np.array([[1.0, 3.0, 2.0]])
    losses, correct, _ = m98.rbf_loss(penalties, np.array([2]), j=4.0)
    assert losses[0] == pytest.approx(2.0 + np.log(np.exp(-4.0) + np.exp(-1.0) + np.exp(-3.0) + np.exp(-2.0)))
    assert not correct[0]  # class 0 has the smallest penalty
    # Far above j, penalties no longer matter: the loss tends to penalty_right - j.
    far, _, dfar = m98.rbf_loss(np.array([[500.0, 600.0]]), np.array([0]), j=10.0)
    assert far[0] == pytest.approx(490.0) and abs(dfar[0, 1]) < 1e-40
    p = rng.uniform(0, 20, (5, 10))
    y = rng.integers(0, 10, 5)
    _, _, dpen = m98.rbf_loss(p, y)
    num = numerical_grad(lambda: float(m98.rbf_loss(p, y)[0].sum()), p)
    np.testing.assert_allclose(dpen, num, atol=1e-8)


# --------------------------------------------------------------------------- the whole model


def test_whole_model_gradient_check_every_parameter():
    rng = np.random.default_rng(1)
    model = LeNet5_1998(seed=1, dtype=np.float64)
    for name in model.params:  # larger weights than the paper's init: every layer's gradient well above noise
        model.params[name] = model.params[name] * 8
    x = LeNet5_1998.prepare(rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)).astype(np.float64)
    y = rng.integers(0, 10, 3)
    _, grads = mean_loss_and_grads(model, x, y)
    h = 1e-6
    for name, p in model.params.items():
        flat = p.reshape(-1)
        idx = rng.choice(flat.size, size=min(flat.size, 10), replace=False)
        num = np.empty(len(idx))
        for n, i in enumerate(idx):
            old = flat[i]
            flat[i] = old + h
            plus = mean_loss_and_grads(model, x, y)[0]
            flat[i] = old - h
            minus = mean_loss_and_grads(model, x, y)[0]
            flat[i] = old
            num[n] = (plus - minus) / (2 * h)
        # Relative to 1e-5, or absolute 1e-7 for gradients that small (the differences' noise: the loss is ~80).
        np.testing.assert_allclose(grads[name].reshape(-1)[idx], num, rtol=1e-5, atol=1e-7, err_msg=name)


def test_forward_matches_the_network_computed_the_slow_obvious_way():
    model = LeNet5_1998(seed=5, dtype=np.float64)
    p = model.params
    x = LeNet5_1998.prepare(rng.integers(0, 256, (2, 28, 28), dtype=np.uint8)).astype(np.float64)

    def f(a):
        return 1.7159 * np.tanh(2.0 / 3.0 * a)

    def conv(a, kernels):  # a: (C, H, W); kernels: {(out map, in map): 5x5}
        maps = 1 + max(o for o, _ in kernels)
        out = np.zeros((maps, a.shape[1] - 4, a.shape[2] - 4))
        for (o, c), k in kernels.items():
            for i in range(out.shape[1]):
                for j in range(out.shape[2]):
                    out[o, i, j] += (a[c, i : i + 5, j : j + 5] * k).sum()
        return out

    def subsample(a, w, b):
        return np.array([[[w[c] * a[c, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].sum() + b[c]
                           for j in range(a.shape[2] // 2)] for i in range(a.shape[1] // 2)] for c in range(len(a))])

    expected = []
    for img in x:
        h = f(conv(img, {(o, 0): p["c1.weight"][o, 0] for o in range(6)}) + p["c1.bias"][:, None, None])
        h = f(subsample(h, p["s2.weight"], p["s2.bias"]))
        k3 = dict(zip(m98.C3_CONNECTIONS, p["c3.weight"]))
        h = f(conv(h, k3) + p["c3.bias"][:, None, None])
        h = f(subsample(h, p["s4.weight"], p["s4.bias"]))
        h = f(p["c5.weight"].reshape(120, 16, 5, 5).reshape(120, -1) @ h.reshape(-1) + p["c5.bias"])
        h = f(p["f6.weight"] @ h + p["f6.bias"])
        expected.append([((h - RBF_CENTRES[i]) ** 2).sum() for i in range(10)])
    np.testing.assert_allclose(model.forward(x), expected, rtol=1e-10)
    assert np.array_equal(LeNet5_1998.scores(model.forward(x)).argmax(axis=1), model.forward(x).argmin(axis=1))


def test_rejects_the_modern_models_input_shape():
    with pytest.raises(ValueError, match=r"\(N, 1, 32, 32\)"):
        LeNet5_1998().forward(np.zeros((2, 1, 28, 28), dtype=np.float32))


def test_check_params_names_the_model_and_the_problem():
    params = m98.init_params(0)
    params["c3.weight"] = np.zeros((16, 6, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"c3.weight is float32\(16, 6, 5, 5\)"):
        LeNet5_1998.check_params(params, "file.npz")
    del params["s2.bias"]
    with pytest.raises(ValueError, match=r"LeNet-5 \(1998\): missing \['s2.bias'\]"):
        LeNet5_1998.check_params(params, "file.npz")


# --------------------------------------------------------------------------- shards and bounds


def _unit(model, x, y, sizes):
    """A unit of consecutive shards as the service computes it: tree nodes added up from the stack."""
    stacked = model.stacked_shard_sums(x, y, sizes)
    return stacked, stacked_tree_sum(stacked.grads)


@pytest.mark.parametrize("seed", range(3))
def test_shard_cuts_add_up_bit_identically_to_one_pass(mnist, seed):
    """Random groupings of real images into shards and passes: each shard's sums and each sample's factors are
    those of the shard alone, so the tree's root is the same bits however the batch was cut into units."""
    r = np.random.default_rng(seed)
    model = LeNet5_1998(seed=seed)
    n = 160
    x, y = LeNet5_1998.prepare(mnist.train_images[:n]), mnist.train_labels[:n]
    sizes: list[int] = []
    while sum(sizes) < n:
        sizes.append(min(int(r.choice([1, 2, 3, 5, 16, 31, 63, 64, 65, 100])), n - sum(sizes)))
    batched, root = _unit(model, x, y, sizes)
    lo = 0
    for s, size in enumerate(sizes):
        alone = model.stacked_shard_sums(x[lo : lo + size], y[lo : lo + size], [size])
        assert np.array_equal(batched.losses[lo : lo + size], alone.losses)
        assert all(np.array_equal(batched.grads[k][s], alone.grads[k][0]) for k in TREE_PARAMS), (sizes, s)
        assert all(np.array_equal(batched.factors[k][lo : lo + size], alone.factors[k]) for k in FACTOR_WIDTHS)
        lo += size
    one_by_one = [model.stacked_shard_sums(x[i : i + 1], y[i : i + 1], [1]) for i in range(n)]
    assert np.array_equal(stacked_tree_sum({k: np.concatenate([u.grads[k] for u in one_by_one])
                                            for k in TREE_PARAMS})["c1.weight"],
                          stacked_tree_sum(model.stacked_shard_sums(x, y, [1] * n).grads)["c1.weight"])
    assert set(root) == set(TREE_PARAMS)


def test_linear_gradients_from_factors_are_the_per_sample_outer_products(mnist):
    model = LeNet5_1998(seed=2, dtype=np.float64)
    x, y = LeNet5_1998.prepare(mnist.train_images[:5]).astype(np.float64), mnist.train_labels[:5]
    factors = model.stacked_shard_sums(x, y, [5]).factors
    grads = linear_grads(factors)
    for layer in LINEAR_LAYERS:
        d, inp = factors[f"{layer}.delta"], factors[f"{layer}.input"]
        np.testing.assert_allclose(grads[f"{layer}.weight"], sum(np.outer(d[i], inp[i]) for i in range(5)), rtol=1e-10, atol=1e-15)
        assert grads[f"{layer}.weight"].shape == PARAM_SHAPES[f"{layer}.weight"]
    assert (factors["c5.input"] < 0).any()  # why NONNEGATIVE_FACTORS is empty


@pytest.fixture(scope="module")
def trained_1998(mnist):
    """Parameters after 150 steps of the recipe's SGD on 4,800 images (about 90 % test accuracy)."""
    model = LeNet5_1998(seed=4)
    opt = SGD(model.params, momentum=0.9)
    for step in range(150):
        i = slice(32 * step, 32 * step + 32)
        x, y = LeNet5_1998.prepare(mnist.train_images[i]), mnist.train_labels[i]
        opt.step(model.params, mean_loss_and_grads(model, x, y)[1], 0.003)
    return model.params


@pytest.mark.parametrize("which", ["initial", "trained"])
def test_every_honest_sample_is_within_the_bound(mnist, trained_1998, which):
    model = LeNet5_1998(seed=3)
    if which == "trained":
        model.params = trained_1998
    bounds = LeNet5_1998.per_sample_bounds(model.params)
    assert set(bounds) == set(PARAM_SHAPES) | set(FACTOR_WIDTHS)
    x, y = LeNet5_1998.prepare(mnist.train_images[:200]), mnist.train_labels[:200]
    per_sample = model.stacked_shard_sums(x, y, [1] * 200)  # one sample per shard: the per-sample bound's case
    worst = {k: float(np.abs(g).max()) for k, g in per_sample.grads.items()}
    worst.update({k: float(np.abs(f).max()) for k, f in per_sample.factors.items()})
    for i in range(0, 200, 20):
        one = {**model.sum_loss_and_grads(x[i : i + 1], y[i : i + 1]).grads}
        worst.update({k: max(worst.get(k, 0.0), float(np.abs(one[k]).max())) for k in ("c5.weight", "f6.weight",
                                                                                       "c5.bias", "f6.bias")})
    assert all(0 < worst[k] <= bounds[k] for k in bounds), {k: (worst[k], bounds[k]) for k in bounds}


def test_units_over_any_cut_of_the_batch_give_the_bits_of_one_pass(mnist):
    """unit_sums over different cuts of a batch into units (and relays gathering them) give the mean gradient
    of the whole batch computed as one unit, bit for bit."""
    model = LeNet5_1998(seed=0)
    idx = np.arange(128)
    pixels, labels = mnist.train_images[idx], mnist.train_labels[idx]
    sizes = shard_sizes(len(idx), 64)
    reference = mean_gradient({(0, 64): unit_sums(model, pixels, labels, sizes)}, 64, 128)
    r = np.random.default_rng(0)
    for _ in range(3):
        edges = [0, *sorted(r.choice(np.arange(1, 64), size=int(r.integers(1, 12)), replace=False)), 64]
        units = {}
        for lo, hi in zip(edges, edges[1:]):
            a, b = sum(sizes[:lo]), sum(sizes[:hi])
            units[(lo, hi)] = unit_sums(model, pixels[a:b], labels[a:b], sizes[lo:hi], first=lo, num_shards=64)
        got = mean_gradient(units, 64, 128)
        assert all(np.array_equal(got[k], reference[k]) for k in PARAM_SHAPES), edges
        relayed = gather([units[(lo, hi)] for lo, hi in zip(edges, edges[1:])], 64)
        again = mean_gradient({(0, 64): relayed}, 64, 128)
        assert all(np.array_equal(again[k], reference[k]) for k in PARAM_SHAPES)


def test_honest_units_pass_the_plausibility_rule_and_poison_does_not(mnist):
    model = LeNet5_1998(seed=3)
    bounds = LeNet5_1998.per_sample_bounds(model.params)
    unit = unit_sums(model, mnist.train_images[:32], mnist.train_labels[:32], [8] * 4)
    assert implausible(unit.grads, unit.factors, 32, bounds, model=LeNet5_1998) is None  # negative inputs: fine
    for name in TREE_PARAMS:
        poisoned = {**unit.grads, name: np.full_like(unit.grads[name], 1e30)}
        assert name in implausible(poisoned, unit.factors, 32, bounds, model=LeNet5_1998)
    for name in FACTOR_WIDTHS:
        poisoned = {**unit.factors, name: np.full_like(unit.factors[name], 1e30)}
        assert name in implausible(unit.grads, poisoned, 32, bounds, model=LeNet5_1998)


def test_the_reference_trainer_trains_it_with_the_paper_schedule(mnist):
    from lenet.train import train

    config = TrainConfig(model="lenet5-1998", epochs=1, max_steps=40, schedule="paper", lr=0.003, nesterov=False,
                         weight_decay=0.0, warmup_steps=0)
    result = train(config, mnist, log=lambda s: None)
    assert set(result.params) == set(PARAM_SHAPES) and result.steps == 40
    assert result.history[-1].test_accuracy > 0.3  # chance is 0.1


@pytest.fixture(scope="module")
def model_file_1998(tmp_path_factory, trained_1998):
    from lenet.train import save_model

    path = tmp_path_factory.mktemp("m98") / "lenet5-1998.npz"
    save_model(path, trained_1998, {"step": 200}, model=LeNet5_1998)
    return path


def test_model_file_names_the_model_and_a_lenet5_run_refuses_it(model_file_1998):
    from lenet.train import load_model
    from lenet.status import UsageError

    params, meta = load_model(model_file_1998)
    assert meta["model"] == "lenet5-1998" and set(params) == set(PARAM_SHAPES)
    with pytest.raises(UsageError, match="holds 'lenet5-1998', this run trains lenet5"):
        load_model(model_file_1998, expected="lenet5")


def test_onnx_export_agrees_with_forward_under_onnxruntime(model_file_1998, mnist, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from lenet.export import main
    from lenet.train import load_model

    assert main([str(model_file_1998), str(tmp_path / "m.onnx")]) == 0
    model = LeNet5_1998()
    model.params = load_model(model_file_1998)[0]
    x = LeNet5_1998.prepare(mnist.test_images[:2000])
    ours = model.forward(x)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.shape[1:] == [1, 32, 32]
    theirs = session.run(None, {inp.name: x})[0]
    assert np.abs(theirs - ours).max() <= 1e-4 * np.abs(ours).max()
    assert np.array_equal(theirs.argmin(axis=1), ours.argmin(axis=1))
    assert (ours.argmin(axis=1) == mnist.test_labels[:2000]).mean() > 0.8  # a model that tells digits apart


def test_predict_gives_the_smallest_penalty_as_the_digit(model_file_1998, mnist):
    from lenet.predict import predict
    from lenet.train import load_model

    params, meta = load_model(model_file_1998)
    model = LeNet5_1998()
    model.params = params
    probabilities = predict(params, mnist.test_images[:100], model=meta["model"])
    assert np.array_equal(probabilities.argmax(axis=1), model.forward(LeNet5_1998.prepare(mnist.test_images[:100]))
                          .argmin(axis=1))

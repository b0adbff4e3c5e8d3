"""The model registry and the Model interface: a second model is its own class plus one registration.

`Toy` below is such a second model, written here and registered for a test only:
it goes through the shards, the bounds, the probe, the wire, model files,
checkpoints and the trainer without any other file knowing it.
"""

import numpy as np
import pytest

from coordinator import checkpoint as ckpt
from coordinator import runs
from coordinator import protocol as P
from coordinator.membership import door_refusal
from coordinator.refusals import Reason
from coordinator.training import Training
from lenet import layers
from lenet.architecture import Model, StackedSums
from lenet.bounds import implausible, in_grad_bound
from lenet.config import TrainConfig
from lenet.model import LeNet5
from lenet.models import DEFAULT_MODEL, MODELS, get_model
from lenet.probe import probe_digest
from lenet.shards import gather, mean_gradient, shard_sizes, unit_sums
from lenet.status import UsageError
from lenet.train import load_model, save_model, train


class Toy(Model):
    """logits = (x + shift) @ W^T + b on 784 raw pixels: one tree parameter, one linear layer."""

    name = "toy"
    TITLE = "Toy"
    DESCRIPTION = "a shifted linear classifier"
    PARAM_SHAPES = {"shift.bias": (784,), "fc.weight": (10, 784), "fc.bias": (10,)}
    TREE_PARAMS = ("shift.bias",)
    LINEAR_LAYERS = ("fc",)
    FACTOR_WIDTHS = {"fc.input": 784, "fc.delta": 10}
    INPUT_SHAPE = (784,)
    INPUT_DOC = "float32 (N, 784), pixels / 255"

    @classmethod
    def init_params(cls, seed, dtype=np.float32):
        rng = np.random.default_rng(seed)
        return {"shift.bias": np.zeros(784, dtype), "fc.weight": (rng.standard_normal((10, 784)) * 0.03).astype(dtype),
                "fc.bias": np.zeros(10, dtype)}

    @staticmethod
    def prepare(pixels):
        return pixels.reshape(len(pixels), 784).astype(np.float32) / 255

    def forward(self, x):
        p = self.params
        return (x + p["shift.bias"]) @ p["fc.weight"].T + p["fc.bias"]

    def stacked_shard_sums(self, x, y, sizes):
        p = self.params
        h = np.asarray(x, self.dtype) + p["shift.bias"]
        logits = (h[:, None, :] @ p["fc.weight"].T)[:, 0] + p["fc.bias"]  # one product per sample
        losses, correct, dlogits = layers.softmax_cross_entropy(logits, np.asarray(y, np.intp))
        dshift = layers.segment_sums((dlogits[:, None, :] @ p["fc.weight"])[:, 0], sizes)
        return StackedSums(losses, correct, {"shift.bias": dshift}, {"fc.input": h, "fc.delta": dlogits})

    @classmethod
    def per_sample_bounds(cls, params):
        a = 1.0 + float(np.abs(params["shift.bias"]).max())
        return {"shift.bias": in_grad_bound(params["fc.weight"], 1.0), "fc.weight": a, "fc.bias": 1.0,
                "fc.input": a, "fc.delta": 1.0}

    @classmethod
    def onnx_nodes(cls, helper, input, output):
        return [helper.make_node("Add", [input, "shift.bias"], ["h"]),
                helper.make_node("Gemm", ["h", "fc.weight", "fc.bias"], [output], transB=1)]


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(MODELS, "toy", Toy)  # the one line a new model adds to lenet/models.py
    return Toy


def test_the_registry_holds_lenet5_as_the_default():
    assert get_model("lenet5") is LeNet5 and DEFAULT_MODEL == "lenet5" and LeNet5.name == "lenet5"
    assert TrainConfig().model == "lenet5"


def test_an_unknown_model_is_one_line_naming_the_choices():
    with pytest.raises(ValueError, match=r"^unknown model 'lenet7': choose one of lenet5") as err:
        get_model("lenet7")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unknown model"):
        TrainConfig(model="lenet7")
    from lenet.train import main

    with pytest.raises(UsageError, match="unknown model 'lenet7'"):
        main(["--model", "lenet7"])


@pytest.mark.parametrize("model", [LeNet5, Toy])
def test_a_model_keeps_the_interface_invariants(model):
    linear = {f"{layer}.{kind}" for layer in model.LINEAR_LAYERS for kind in ("weight", "bias")}
    assert set(model.TREE_PARAMS) | linear == set(model.PARAM_SHAPES) and not set(model.TREE_PARAMS) & linear
    assert set(model.FACTOR_WIDTHS) == {f"{layer}.{kind}" for layer in model.LINEAR_LAYERS for kind in ("input", "delta")}
    assert model.NONNEGATIVE_FACTORS <= set(model.FACTOR_WIDTHS)
    a, b = model.init_params(7), model.init_params(7)
    assert list(a) == list(model.PARAM_SHAPES) and all(np.array_equal(a[k], b[k]) for k in a)
    assert all(a[k].shape == s and a[k].dtype == np.float32 for k, s in model.PARAM_SHAPES.items())
    assert set(model.per_sample_bounds(a)) == set(model.PARAM_SHAPES) | set(model.FACTOR_WIDTHS)
    assert model.check_params(a, "x") == a


def test_a_second_model_goes_through_units_bounds_and_probe(mnist, toy):
    model = toy(seed=1)
    n, num_shards = 40, 8
    pixels, labels = mnist.train_images[:n], mnist.train_labels[:n]
    sizes = shard_sizes(n, num_shards)
    whole = unit_sums(model, pixels, labels, sizes)
    reference = mean_gradient({(0, num_shards): whole}, num_shards, n)
    bounds = np.cumsum([0, *sizes])
    cut = [(0, 3), (3, 4), (4, 8)]
    units = {(lo, hi): unit_sums(model, pixels[bounds[lo]:bounds[hi]], labels[bounds[lo]:bounds[hi]], sizes[lo:hi],
                                 lo, num_shards) for lo, hi in cut}
    total = mean_gradient(units, num_shards, n)
    assert list(total) == ["shift.bias", "fc.weight", "fc.bias"]
    assert all(np.array_equal(total[k], reference[k]) for k in reference)  # bit for bit, however cut
    gathered = gather([units[u] for u in cut], num_shards)
    assert all(np.array_equal(gathered.grads[k], whole.grads[k]) for k in whole.grads)
    # The gradient itself is right: against the obvious float64 computation.
    x = toy.prepare(pixels).astype(np.float64)
    p = {k: v.astype(np.float64) for k, v in model.params.items()}
    logits = (x + p["shift.bias"]) @ p["fc.weight"].T + p["fc.bias"]
    d = np.exp(logits - logits.max(axis=1, keepdims=True))
    d /= d.sum(axis=1, keepdims=True)
    d[np.arange(n), labels] -= 1
    np.testing.assert_allclose(total["fc.weight"], d.T @ (x + p["shift.bias"]) / n, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(total["shift.bias"], (d @ p["fc.weight"]).sum(axis=0) / n, rtol=1e-4, atol=1e-6)
    # Bounds: the honest unit passes, poison does not.
    limits = toy.per_sample_bounds(model.params)
    assert implausible(whole.grads, whole.factors, n, limits, toy) is None
    poisoned = {**whole.grads, "shift.bias": np.full((1, 784), 1e30, np.float32)}
    assert "shift.bias" in implausible(poisoned, whole.factors, n, limits, toy)
    negative = {**whole.factors, "fc.input": -whole.factors["fc.input"] - 1}  # allowed: not a ReLU output
    assert implausible(whole.grads, negative, n, limits, toy) is None
    # The probe: a digest per model.
    assert probe_digest(toy) == probe_digest(toy) != probe_digest(LeNet5)


def test_the_wire_carries_and_checks_the_model(toy):
    params = toy.init_params(0)
    frame = P.encode(P.Params(step=2, params=params, model="toy"))
    got = P.decode(frame, toy)
    assert got.model == "toy" and all(np.array_equal(got.params[k], params[k]) for k in params)
    with pytest.raises(P.ProtocolError) as err:
        P.decode(frame, LeNet5)
    assert err.value.reason is Reason.WRONG_MODEL and "this side computes lenet5" in err.value.detail
    sums = unit_sums(toy(seed=0), np.zeros((3, 28, 28), np.uint8), np.zeros(3, np.uint8), [1, 2])
    result = P.decode(P.encode(P.result_of(2, sums, 0.1)), toy)
    assert result.grads["shift.bias"].shape == (1, 784) and result.factors["fc.delta"].shape == (3, 10)
    with pytest.raises(P.ProtocolError, match="gradients"):
        P.decode(P.encode(P.result_of(2, sums, 0.1)), LeNet5)
    assert P.decode(P.encode(P.Register(name="w", pid=1, probe="ab", capacity=1, model="toy"))).model == "toy"
    reason, text = door_refusal("w", "ab", "ab", "coordinator", "toy", "lenet5")
    assert reason is Reason.WRONG_MODEL and text == "it computes model 'toy', this run trains lenet5 (--model)"


def test_model_files_name_their_model(tmp_path, toy):
    path = tmp_path / "toy.npz"
    params = toy.init_params(3)
    save_model(path, params, {"step": 1}, toy)
    got, meta = load_model(path)
    assert meta["model"] == "toy" and meta["architecture"] == toy.DESCRIPTION
    assert all(np.array_equal(got[k], params[k]) for k in params)
    with pytest.raises(UsageError, match=r"toy.npz holds 'toy', this run trains lenet5$"):
        load_model(path, expected="lenet5")


def test_a_checkpoint_of_another_model_is_refused_in_one_line(tmp_path, mnist, toy):
    run = Training(TrainConfig(model="toy", epochs=1), 4, mnist)
    assert isinstance(run.model, toy)
    path = ckpt.save(tmp_path, ckpt.snapshot(run, runs.identity(run.config, run.num_shards, run.data.checksums)))
    loaded = ckpt.load(path)
    assert loaded.meta["config"]["model"] == "toy" and set(loaded.params) == set(toy.PARAM_SHAPES)
    ckpt.restore(Training(TrainConfig(model="toy", epochs=1), 4, mnist), loaded)
    with pytest.raises(UsageError, match=r"^checkpoint holds toy, this run trains lenet5 \(--model\)$"):
        ckpt.restore(Training(TrainConfig(epochs=1), 4, mnist), loaded)


def test_the_trainer_trains_a_second_model(mnist, toy):
    config = TrainConfig(model="toy", epochs=1, batch_size=64, train_subset=2048, lr=0.5)
    result = train(config, mnist, log=lambda s: None, shards=4)
    assert set(result.params) == set(toy.PARAM_SHAPES)
    assert result.history[-1].test_accuracy > 0.5  # a linear classifier learns MNIST quickly


def test_a_second_model_exports_to_onnx(tmp_path, toy):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from lenet.export import write_onnx

    model = toy(seed=4)
    model.params["shift.bias"] = np.linspace(-0.1, 0.1, 784, dtype=np.float32)
    path = write_onnx(tmp_path / "toy.onnx", model.params, {"model": "toy"})
    x = toy.prepare(np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["logits"], {"input": x})[0], model.forward(x), rtol=1e-5, atol=1e-5)

"""The reference trainer: reproducible, learning, and its command's errors."""

import dataclasses
import json

import numpy as np
import pytest

from lenet.config import TrainConfig
from lenet.train import evaluate, load_model, main, save_model, train


@pytest.fixture(scope="module")
def small(mnist):
    """2,000 training and 500 test images: enough to see learning in seconds."""
    return dataclasses.replace(mnist, train_images=mnist.train_images[:2000], train_labels=mnist.train_labels[:2000],
                               test_images=mnist.test_images[:500], test_labels=mnist.test_labels[:500])


def test_same_seed_gives_bit_identical_parameters(small):
    config = TrainConfig(epochs=1, batch_size=64, max_steps=8, seed=3)
    a = train(config, small, log=lambda s: None)
    b = train(config, small, log=lambda s: None)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    c = train(dataclasses.replace(config, seed=4), small, log=lambda s: None)
    assert not np.array_equal(a.params["fc3.weight"], c.params["fc3.weight"])


def test_learns_on_a_small_subset(small):
    result = train(TrainConfig(epochs=2, batch_size=32), small, log=lambda s: None)
    assert result.history[0].loss > result.history[1].loss
    assert result.history[-1].test_accuracy > 0.85
    assert result.steps == 2 * 63  # ceil(2000 / 32): the partial last batch is a step
    assert result.history[0].samples == 2000


def test_model_file_round_trip(tmp_path, small):
    result = train(TrainConfig(epochs=1, max_steps=2), small, log=lambda s: None)
    save_model(tmp_path / "m.npz", result.params, {"epoch": 1})
    params, meta = load_model(tmp_path / "m.npz")
    assert meta["epoch"] == 1 and "LeNet-5" in meta["architecture"]
    assert evaluate(params, small.test_images, small.test_labels) == evaluate(
        result.params, small.test_images, small.test_labels)


@pytest.mark.parametrize("argv, status, message", [
    (["--epochs", "0"], 2, "epochs must be >= 1, got 0"),
    (["--optimizer", "rmsprop"], 2, "optimizer must be 'sgd' or 'adam'"),
    (["--data-dir", "/nonexistent/mnist"], 3, "/nonexistent/mnist: not a directory"),
])
def test_cli_errors_are_one_line_with_status(argv, status, message, capsys):
    from lenet.status import run_main

    code = run_main(lambda _: main(argv), "lenet.train")
    err = capsys.readouterr().err
    assert code == status
    assert message in err and "Traceback" not in err


def test_bad_environment_value_is_named(monkeypatch, capsys):
    from lenet.status import run_main

    monkeypatch.setenv("LENET_BATCH_SIZE", "lots")
    assert run_main(lambda _: main([]), "lenet.train") == 2
    assert "LENET_BATCH_SIZE='lots'" in capsys.readouterr().err


def test_main_writes_the_curves_next_to_the_model(mnist_dir, tmp_path, capsys):
    out = tmp_path / "m.npz"
    assert main(["--data-dir", str(mnist_dir), "--train-subset", "640", "--epochs", "2", "--batch-size", "64",
                 "--output", str(out)]) == 0
    svg = (tmp_path / "m.svg").read_text()
    assert f"curves to {tmp_path / 'm.svg'}" in capsys.readouterr().out
    assert svg.count("<polyline") == 4 and svg.count("<circle") == 6  # per-step loss; 3 series x 2 epochs


def test_main_writes_a_run_log_of_steps_and_epochs(mnist_dir, tmp_path, capsys):
    out = tmp_path / "m.npz"
    assert main(["--data-dir", str(mnist_dir), "--train-subset", "640", "--epochs", "2", "--batch-size", "64",
                 "--output", str(out)]) == 0
    assert f"run log to {tmp_path / 'm.jsonl'}" in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records if r["kind"] != "step"] == ["start", "epoch", "epoch", "end"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [(r["epoch"], r["step"], r["samples"]) for r in epochs] == [(1, 10, 640), (2, 20, 640)]
    for r in epochs:
        assert r["samples_per_second"] == pytest.approx(r["samples"] / r["seconds"])
        assert 0 < r["loss"] and 0 <= r["train_accuracy"] <= 1 and 0 <= r["test_accuracy"] <= 1
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 21))  # 10 steps an epoch: every step recorded
    # The epoch's mean loss is the mean of its steps' (equal batches here).
    assert np.mean([r["loss"] for r in steps[:10]]) == pytest.approx(epochs[0]["loss"], rel=1e-6)
    _, meta = load_model(out)
    assert meta["test_accuracy"] == epochs[-1]["test_accuracy"] == records[-1]["test_accuracy"]


def test_keep_best_saves_the_best_test_epoch_and_says_which(mnist_dir, tmp_path, capsys, monkeypatch):
    import lenet.train as T

    accuracies = iter([0.5, 0.9, 0.7])  # epoch 2 is the best: its parameters must be the ones saved
    snapshots = []
    real = T.evaluate

    def fake_evaluate(params, images, labels, batch_size=1000, model=None):
        real(params, images[:10], labels[:10], model=model)
        snapshots.append({k: v.copy() for k, v in params.items()})
        return next(accuracies)

    monkeypatch.setattr(T, "evaluate", fake_evaluate)
    out = tmp_path / "m.npz"
    assert main(["--data-dir", str(mnist_dir), "--train-subset", "640", "--epochs", "3", "--batch-size", "64",
                 "--output", str(out), "--keep-best"]) == 0
    assert "kept the parameters of epoch 2 (test acc 90.00%), the best test epoch of 3" in capsys.readouterr().out
    params, meta = load_model(out)
    assert all(np.array_equal(params[k], snapshots[1][k]) for k in params)
    assert not all(np.array_equal(params[k], snapshots[2][k]) for k in params)
    assert (meta["epoch"], meta["best_epoch"], meta["step"], meta["test_accuracy"]) == (2, 2, 20, 0.9)
    records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r for r in records if r["kind"] == "best"] == [{"kind": "best", "epoch": 2, "step": 20,
                                                            "test_accuracy": 0.9}]


def test_an_epochs_rate_counts_only_the_samples_of_its_timed_part():
    from lenet.train import EpochStats

    whole = EpochStats(epoch=2, steps=20, samples=1280, loss=0.1, train_accuracy=0.9, test_accuracy=0.9, seconds=2.0)
    resumed = dataclasses.replace(whole, seconds=0.5, timed_samples=320)  # resumed with 3/4 of the epoch done
    assert whole.samples_per_second == 640 and resumed.samples_per_second == 640
    assert resumed.record()["samples"] == 1280 and resumed.record()["samples_per_second"] == 640

"""The coordinator's run log and --keep-best, across a resume: one consistent run, honest samples/s."""

import json

import numpy as np

from lenet.train import evaluate, load_model
from procs import coordinator

# 1,280 images in batches of 128: 10 steps an epoch, one step record each.
ARGS = ("--workers", "1", "--train-subset", "1280", "--epochs", "3", "--checkpoint-every", "0", "--keep-best")


def records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_log_and_best_model_survive_a_resume(tmp_path, procs, mnist):
    out, ckpt = tmp_path / "m.npz", tmp_path / "ckpt"
    first = coordinator(tmp_path, *ARGS, "--max-steps", "15", "--checkpoint-dir", str(ckpt), "--output", str(out),
                        log_name="first.log")
    procs.append(first)
    assert first.wait() == 0, first.log()
    assert f"run log to {tmp_path / 'm.jsonl'}" in first.log()
    assert "000000015.npz" in [p.name.rsplit("-", 1)[1] for p in ckpt.glob("ckpt-*.npz")]  # ckpt-<run>-<step>
    with open(tmp_path / "m.jsonl", "a") as f:  # as if the run had gone on past its checkpoint, then died
        f.write(json.dumps({"kind": "epoch", "epoch": 2, "step": 20}) + "\n")
    second = coordinator(tmp_path, *ARGS, "--max-steps", "30", "--checkpoint-dir", str(ckpt), "--resume",
                         "--output", str(out), log_name="second.log")
    procs.append(second)
    assert second.wait() == 0, second.log()
    log = records(tmp_path / "m.jsonl")
    epochs = [r for r in log if r["kind"] == "epoch"]
    assert [(r["epoch"], r["step"], r["samples"]) for r in epochs] == [(1, 10, 1280), (2, 20, 1280), (3, 30, 1280)]
    assert [r["step"] for r in log if r["kind"] == "step"] == list(range(1, 31))
    assert [r["kind"] for r in log if r["kind"] not in ("step", "epoch")] == ["start", "start", "best", "end"]
    # Epoch 2 was resumed at step 15: its rate counts the 5 steps trained after the resume, not all 10.
    assert abs(epochs[1]["samples_per_second"] * epochs[1]["seconds"] - 640) < 1e-6
    assert abs(epochs[2]["samples_per_second"] * epochs[2]["seconds"] - 1280) < 1e-6
    # The saved model is the best test epoch's, across both parts of the run, and scores what the log says.
    top = max(epochs, key=lambda r: r["test_accuracy"])
    params, meta = load_model(out)
    assert (meta["best_epoch"], meta["step"], meta["test_accuracy"]) == (top["epoch"], top["step"],
                                                                       top["test_accuracy"])
    assert log[-2] == {"kind": "best", "epoch": top["epoch"], "step": top["step"], "test_accuracy":
                       top["test_accuracy"]}
    assert evaluate(params, mnist.test_images, mnist.test_labels) == top["test_accuracy"]
    assert f"kept the parameters of epoch {top['epoch']} (test acc {100 * top['test_accuracy']:.2f}%)" \
        in second.log()
    assert "--keep-best:" not in second.log()  # the first part's best was found in the model file
    svg = (tmp_path / "m.svg").read_text()
    assert 'data-series="step_loss"' in svg and np.isfinite(meta["test_accuracy"])

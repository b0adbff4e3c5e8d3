"""`python -m lenet.evaluate`: the run's own test accuracy, per class, a confusion matrix, and one-line errors."""

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest

from lenet.train import evaluate, load_model
from procs import env


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lenet.evaluate", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=env())


def idx_images(images: np.ndarray) -> bytes:
    return b"\0\0\x08\x03" + b"".join(int(n).to_bytes(4, "big") for n in images.shape) + images.tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return b"\0\0\x08\x01" + len(labels).to_bytes(4, "big") + labels.astype(np.uint8).tobytes()


def test_test_set_accuracy_is_the_figure_the_run_recorded(trained_model, mnist):
    proc = run(trained_model, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    recorded = load_model(trained_model)[1]["test_accuracy"]
    assert out["accuracy"] == recorded == out["recorded_test_accuracy"]
    assert out["count"] == 10000 and out["correct"] == round(recorded * 10000)
    matrix = np.array(out["confusion"])
    assert matrix.shape == (10, 10) and matrix.sum(axis=1).tolist() == np.bincount(mnist.test_labels).tolist()
    assert [c["accuracy"] for c in out["per_class"]] == pytest.approx(np.diag(matrix) / matrix.sum(axis=1))
    text = run(trained_model)
    assert text.returncode == 0 and f"accuracy {recorded:.2%} ({out['correct']} correct); the run recorded " \
        f"{recorded:.2%}" in text.stdout
    rows = text.stdout.splitlines()
    assert rows[1].startswith("digit  images  accuracy") and len(rows) == 1 + 11 + 1 + 1 + 10
    assert [int(n) for n in rows[-10].split()[1:]] == matrix[0].tolist()


def test_given_images_and_labels_gzipped_or_not(trained_model, mnist, tmp_path):
    images, labels = mnist.test_images[:300], mnist.test_labels[:300].copy()
    labels[:5] = (labels[:5] + 1) % 10  # wrong labels count as errors: the score is of these labels
    (tmp_path / "img-idx3-ubyte.gz").write_bytes(gzip.compress(idx_images(images)))
    (tmp_path / "lab-idx1-ubyte").write_bytes(idx_labels(labels))
    proc = run(trained_model, tmp_path / "img-idx3-ubyte.gz", tmp_path / "lab-idx1-ubyte", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    params = load_model(trained_model)[0]
    assert out["accuracy"] == evaluate(params, images, labels) and out["count"] == 300
    assert out["recorded_test_accuracy"] is None  # not the test set: no comparison with the run


def test_errors_are_one_line_with_their_status(trained_model, mnist, tmp_path):
    (tmp_path / "img").write_bytes(idx_images(mnist.test_images[:10]))
    (tmp_path / "lab").write_bytes(idx_labels(mnist.test_labels[:9]))
    from lenet.npzfile import write_npz

    params = load_model(trained_model)[0]
    write_npz(tmp_path / "ckpt-000000010.npz", {f"params/{k}": v for k, v in params.items()},
              {"kind": "lenet5-checkpoint", "step": 10})
    for args, status, message in [
        ([tmp_path / "img", tmp_path / "lab"], 3, "holds 10 images, "),
        ([tmp_path / "img"], 2, "IMAGES needs LABELS"),
        ([tmp_path / "img", tmp_path / "img"], 3, "not an IDX label file"),
        ([tmp_path / "img", tmp_path / "absent"], 4, "absent: no such file"),
    ]:
        proc = run(trained_model, *args)
        assert (proc.returncode, proc.stderr.count("\n"), proc.stdout) == (status, 1, ""), proc.stderr
        assert message in proc.stderr
    proc = run(tmp_path / "ckpt-000000010.npz")
    assert proc.returncode == 2 and "this is a checkpoint, not a model" in proc.stderr
    assert proc.stderr.count("\n") == 1


"""lenet.evaluate's pure parts: the confusion matrix, the summary and tables, the label reader."""

import gzip

import numpy as np
import pytest

from lenet.evaluate import confusion_matrix, read_labels, report, summary
from lenet.status import DataError


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    m = confusion_matrix(np.array([0, 0, 1, 9]), np.array([0, 9, 1, 0]))
    assert m[0, 0] == 1 and m[0, 9] == 1 and m[1, 1] == 1 and m[9, 0] == 1 and m.sum() == 4


def test_summary_and_tables():
    s = summary(confusion_matrix(np.array([0, 0, 1, 1, 1]), np.array([0, 7, 1, 1, 1])))
    assert (s["count"], s["correct"], s["accuracy"]) == (5, 4, 0.8)
    assert s["per_class"][0] == {"digit": 0, "count": 2, "accuracy": 0.5}
    assert s["per_class"][2]["accuracy"] is None  # no image of a 2: no accuracy, not a division by zero
    lines = report(s)
    assert lines[1].split() == ["0", "2", "50.00%", "7", "(1", "times)"] and lines[3].split()[2:] == ["-", "-"]


def test_labels_gzipped_or_not_and_refusals(tmp_path):
    raw = b"\0\0\x08\x01" + (3).to_bytes(4, "big") + bytes([7, 2, 1])
    (tmp_path / "a").write_bytes(raw)
    (tmp_path / "b.gz").write_bytes(gzip.compress(raw))
    assert read_labels(tmp_path / "a").tolist() == read_labels(tmp_path / "b.gz").tolist() == [7, 2, 1]
    for content, message in [(raw[:-1], "10 bytes, expected 11 for 3 labels"),
                             (raw[:-1] + b"\x0c", "label 12 out of range 0-9"),
                             (b"\0\0\x08\x03" + raw[4:], "not an IDX label file")]:
        (tmp_path / "bad").write_bytes(content)
        with pytest.raises(DataError, match=message):
            read_labels(tmp_path / "bad")


def test_the_model_the_file_names_is_the_one_asked(trained_model, mnist, tmp_path, monkeypatch, capsys):
    """A file of another registered model is scored by that model's own scores, not LeNet-5's."""
    from lenet import models
    from lenet.evaluate import main
    from lenet.model import LeNet5
    from lenet.train import load_model, save_model

    class Contrary(LeNet5):  # the same parameters, the opposite opinion: least likely first
        name = "contrary"

        @staticmethod
        def scores(outputs):
            return -outputs

    monkeypatch.setitem(models.MODELS, "contrary", Contrary)
    params = load_model(trained_model)[0]
    save_model(tmp_path / "c.npz", params, {"test_accuracy": 0.0}, Contrary)
    images, labels = tmp_path / "img", tmp_path / "lab"
    images.write_bytes(b"\0\0\x08\x03" + b"".join(int(n).to_bytes(4, "big") for n in (200, 28, 28))
                       + mnist.test_images[:200].tobytes())
    labels.write_bytes(b"\0\0\x08\x01" + (200).to_bytes(4, "big") + mnist.test_labels[:200].tobytes())
    assert main([str(trained_model), str(images), str(labels), "--json"]) == 0
    assert '"model": "lenet5"' in capsys.readouterr().out
    assert main([str(tmp_path / "c.npz"), str(images), str(labels)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{tmp_path / 'c.npz'} (contrary) on {images} (200 images): accuracy 0.00%")

"""ONNX export: onnxruntime on the exported graph agrees with the project's own forward on the MNIST test set."""

import sys

import numpy as np
import pytest

from lenet.data import standardize
from lenet.export import main, write_onnx
from lenet.model import LeNet5
from lenet.status import StorageError, UsageError
from lenet.train import load_model

onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx package: pip install -e '.[test]'")
ort = pytest.importorskip("onnxruntime", reason="checking the export needs onnxruntime: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def exported(trained_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "lenet5.onnx"
    assert main([str(trained_model), str(path)]) == 0
    return path


def test_runtime_logits_match_forward_on_the_test_set(exported, trained_model, mnist):
    params, meta = load_model(trained_model)
    model = LeNet5()
    model.params = params
    x = standardize(mnist.test_images)
    ours = np.concatenate([model.forward(x[i : i + 1000]) for i in range(0, len(x), 1000)])
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    theirs = session.run(["logits"], {"input": x})[0]
    assert theirs.shape == (10000, 10) and theirs.dtype == np.float32
    assert np.abs(theirs - ours).max() <= 1e-4
    assert np.array_equal(theirs.argmax(axis=1), ours.argmax(axis=1))
    assert (theirs.argmax(axis=1) == mnist.test_labels).mean() == pytest.approx(meta["test_accuracy"])


def test_graph_declares_the_forward_signature(exported):
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("input", "tensor(float)", [1, 28, 28])
    assert (out.name, out.type, out.shape[1:]) == ("logits", "tensor(float)", [10])
    model = onnx.load(str(exported))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["standardize_mean"] == "0.1307" and props["standardize_std"] == "0.3081"


def test_missing_model_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError, match="no such file"):
        main([str(tmp_path / "absent.npz"), str(tmp_path / "m.onnx")])


def test_unwritable_output_is_a_storage_error(trained_model, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(StorageError, match="cannot write"):
        write_onnx(tmp_path / "file" / "m.onnx", load_model(trained_model)[0])


def test_without_onnx_the_error_names_the_extra(trained_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # what `import onnx` meets when it is not installed
    with pytest.raises(UsageError, match=r"pip install -e '\.\[export\]'"):
        main([str(trained_model), str(tmp_path / "m.onnx")])
    assert not (tmp_path / "m.onnx").exists()

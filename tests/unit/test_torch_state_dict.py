"""The README's PyTorch snippet, run as written: the .npz loads into a state_dict and gives the same logits."""

import re
import shutil

import numpy as np
import pytest

from lenet.data import standardize
from lenet.model import LeNet5
from lenet.train import load_model
from procs import ROOT

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch): the snippet needs it")


def readme_snippet() -> str:
    section = ROOT.joinpath("README.md").read_text().split("### Loading into PyTorch", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_snippet_loads_the_model_into_pytorch(trained_model, mnist, tmp_path, monkeypatch):
    shutil.copy(trained_model, tmp_path / "lenet5.npz")  # the file name the snippet uses
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_snippet(), "README.md", "exec"), namespace)
    model = namespace["model"]
    assert isinstance(model, torch.nn.Module) and not model.training
    ours = LeNet5()
    ours.params = load_model(trained_model)[0]
    x = standardize(mnist.test_images[:2000])
    with torch.no_grad():
        theirs = model(torch.from_numpy(x)).numpy()
    expected = ours.forward(x)
    assert np.abs(theirs - expected).max() <= 1e-4
    assert np.array_equal(theirs.argmax(axis=1), expected.argmax(axis=1))

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The shared MNIST copy: $MNIST_DIR, else ../shared/mnist beside the checkout."""
    path = Path(os.environ.get("MNIST_DIR") or ROOT.parent / "shared" / "mnist")
    if not path.is_dir():
        pytest.skip(f"MNIST not found at {path}: set MNIST_DIR")
    return path


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    from lenet.data import load_mnist

    return load_mnist(mnist_dir)

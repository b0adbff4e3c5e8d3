import os

from lenet.runtime import pin_blas_threads

pin_blas_threads()  # as every entry point does: bit-exact comparisons need it

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """MNIST for the tests: $MNIST_DIR, else ../shared/mnist beside the checkout, else
    the per-user cache (downloaded once from the public mirrors)."""
    from lenet.data import resolve_data_dir

    shared = ROOT.parent / "shared" / "mnist"
    path = resolve_data_dir(os.environ.get("MNIST_DIR") or (shared if shared.is_dir() else None))
    os.environ["MNIST_DIR"] = str(path)  # inherited by the processes tests start
    return path


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    from lenet.data import load_mnist

    return load_mnist(mnist_dir)


@pytest.fixture
def procs(mnist_dir):
    """Processes started by a test (with MNIST_DIR set for them); all killed at its end, whatever happens."""
    started = []
    yield started
    for p in started:
        p.stop()


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, mnist) -> Path:
    """A model file trained for 300 steps (about 95 % test accuracy): for export, prediction and PyTorch tests."""
    from lenet.config import TrainConfig
    from lenet.train import save_model, train

    result = train(TrainConfig(epochs=1, max_steps=300), mnist, log=lambda s: None)
    path = tmp_path_factory.mktemp("trained") / "lenet5.npz"
    save_model(path, result.params, {"step": result.steps, "test_accuracy": result.history[-1].test_accuracy})
    return path

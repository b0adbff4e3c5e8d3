"""Downloading MNIST from mirrors, against real HTTP servers on loopback."""

import functools
import http.server
import threading

import pytest

from lenet import data
from lenet.status import DataError


@pytest.fixture
def serve():
    servers = []

    def start(directory):
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
        handler.log_message = lambda *a: None
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_downloads_into_cache_and_verifies(mnist_dir, tmp_path, serve, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.delenv("MNIST_DIR", raising=False)
    monkeypatch.setenv("LENET_CACHE_DIR", str(cache))
    # The first mirror refuses connections: the next one is tried.
    monkeypatch.setenv("MNIST_MIRRORS", f"http://127.0.0.1:9/,{serve(mnist_dir)}")
    monkeypatch.setattr(data.time, "sleep", lambda s: None)
    assert data.resolve_data_dir(None) == cache
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for n in data.FILES)
    assert data.load_mnist(None).train_images.shape == (60000, 28, 28)


def test_corrupt_mirror_leaves_nothing_in_cache(mnist_dir, tmp_path, serve, monkeypatch):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in data.FILES:
        blob = (mnist_dir / f"{name}.gz").read_bytes()
        (bad / f"{name}.gz").write_bytes(blob[: len(blob) // 2])
    cache = tmp_path / "cache"
    monkeypatch.delenv("MNIST_DIR", raising=False)
    monkeypatch.setenv("LENET_CACHE_DIR", str(cache))
    monkeypatch.setenv("MNIST_MIRRORS", serve(bad))
    with pytest.raises(DataError, match="could not download train-images-idx3-ubyte"):
        data.resolve_data_dir(None)
    assert not cache.exists() or list(cache.iterdir()) == []

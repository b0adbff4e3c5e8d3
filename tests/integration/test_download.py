"""Downloading MNIST from mirrors, against real HTTP servers on loopback."""

import functools
import gzip
import http.server
import os
import threading
import tracemalloc

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


def test_built_in_mirrors_are_https_only():
    assert data.DEFAULT_MIRRORS and all(m.startswith("https://") for m in data.DEFAULT_MIRRORS)


@pytest.fixture
def endless():
    """A loopback server answering every GET with an endless body and no Content-Length."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            try:
                while True:
                    self.wfile.write(bytes(1 << 16))
            except OSError:
                pass  # the client hung up: what the test wants

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_an_endless_body_is_cut_off_at_the_known_size(tmp_path, endless, monkeypatch):
    monkeypatch.setenv("MNIST_MIRRORS", endless)
    with pytest.raises(DataError, match=f"more than the {data.max_stored_size('t10k-labels-idx1-ubyte')} bytes"):
        data.download(tmp_path, "t10k-labels-idx1-ubyte", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_an_oversized_announced_body_is_refused_unread(tmp_path, serve, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(200_000))
    monkeypatch.setenv("MNIST_MIRRORS", serve(mirror))
    with pytest.raises(DataError, match="announces 200000 bytes"):
        data.download(tmp_path / "cache", "t10k-labels-idx1-ubyte", progress=False)


def test_a_gzip_bomb_is_refused_while_inflating(tmp_path, serve, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    bomb = gzip.compress(bytes(64 << 20), compresslevel=9)  # 64 MiB of zeros in about 64 KB
    assert len(bomb) <= data.max_stored_size("t10k-labels-idx1-ubyte")
    (mirror / "t10k-labels-idx1-ubyte.gz").write_bytes(bomb)
    monkeypatch.setenv("MNIST_MIRRORS", serve(mirror))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="inflates to more than the 10008 bytes expected"):
            data.download(tmp_path / "cache", "t10k-labels-idx1-ubyte", progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_stale_temporaries_in_the_cache_are_swept(mnist_dir, tmp_path, serve, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    stale = cache / ".train-images-idx3-ubyte.gz.4242.tmp"  # a download killed long ago
    stale.write_bytes(b"half")
    os.utime(stale, (0, 0))
    monkeypatch.delenv("MNIST_DIR", raising=False)
    monkeypatch.setenv("LENET_CACHE_DIR", str(cache))
    monkeypatch.setenv("MNIST_MIRRORS", serve(mnist_dir))
    data.resolve_data_dir(None)
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for n in data.FILES)

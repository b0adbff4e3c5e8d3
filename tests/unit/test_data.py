"""MNIST files: parsing, validation, every kind of damage, locating, shuffling."""

import gzip
import hashlib

import numpy as np
import pytest

from lenet import data
from lenet.status import DataError


def labels_file(labels: bytes) -> bytes:
    return (2049).to_bytes(4, "big") + len(labels).to_bytes(4, "big") + labels


def test_parse_rejects_wrong_magic_count_size_and_checksum(monkeypatch):
    name = "t10k-labels-idx1-ubyte"
    good = labels_file(bytes(range(10)) * 1000)
    monkeypatch.setitem(data.FILES, name, (hashlib.sha256(good).hexdigest(), 2049, 10000))
    assert data.parse_idx(good, name).shape == (10000,)
    with pytest.raises(DataError, match="bad magic number 2051"):
        data.parse_idx((2051).to_bytes(4, "big") + good[4:], name)
    with pytest.raises(DataError, match="holds 9999 items"):
        data.parse_idx(good[:4] + (9999).to_bytes(4, "big") + good[8:], name)
    with pytest.raises(DataError, match="truncated"):
        data.parse_idx(good[:-5], name)
    with pytest.raises(DataError, match="shorter than the IDX header"):
        data.parse_idx(good[:3], name)
    flipped = good[:-1] + bytes([good[-1] ^ 1])
    with pytest.raises(DataError, match="SHA-256"):
        data.parse_idx(flipped, name)


def copy_mnist(src, dst):
    dst.mkdir(exist_ok=True)
    for name in data.FILES:
        (dst / f"{name}.gz").write_bytes((src / f"{name}.gz").read_bytes())


def test_loads_the_real_files(mnist):
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.train_images.dtype == np.uint8
    assert mnist.test_labels.shape == (10000,) and set(np.unique(mnist.test_labels)) == set(range(10))


def test_raw_and_gzipped_files_are_both_read(mnist_dir, tmp_path):
    name = "t10k-labels-idx1-ubyte"
    (tmp_path / name).write_bytes(gzip.decompress((mnist_dir / f"{name}.gz").read_bytes()))
    assert data.read_file(tmp_path, name).shape == (10000,)


def test_truncated_gzip_names_the_file(mnist_dir, tmp_path):
    copy_mnist(mnist_dir, tmp_path)
    target = tmp_path / "t10k-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[:5000])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: corrupt gzip"):
        data.load_mnist(tmp_path)


def test_missing_file_in_explicit_dir_is_an_error_not_a_download(mnist_dir, tmp_path, monkeypatch):
    copy_mnist(mnist_dir, tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("MNIST_MIRRORS", "http://127.0.0.1:9/")  # would fail loudly if used
    with pytest.raises(DataError, match="missing train-labels-idx1-ubyte"):
        data.resolve_data_dir(tmp_path)


def test_mnist_dir_environment_variable(mnist_dir, monkeypatch):
    monkeypatch.setenv("MNIST_DIR", str(mnist_dir))
    assert data.resolve_data_dir(None) == mnist_dir


def test_not_a_directory(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        data.resolve_data_dir(tmp_path / "nope")


def test_standardize_values_and_shape():
    x = data.standardize(np.array([[[0, 255]]], dtype=np.uint8))
    assert x.shape == (1, 1, 1, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x.ravel(), [(0 - 0.1307) / 0.3081, (1 - 0.1307) / 0.3081], rtol=1e-6)


def test_epoch_batches_cover_every_sample_once_and_are_pure():
    batches = data.epoch_batches(seed=1, epoch=2, n=1000, batch_size=128)
    assert [len(b) for b in batches] == [128] * 7 + [104]
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    again = data.epoch_batches(seed=1, epoch=2, n=1000, batch_size=128)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    other = data.epoch_batches(seed=1, epoch=3, n=1000, batch_size=128)
    assert not np.array_equal(batches[0], other[0])
    assert data.steps_per_epoch(1000, 128) == 8

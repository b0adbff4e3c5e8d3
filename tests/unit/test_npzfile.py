"""Checksummed, atomic .npz files: round trip, damage detection, no pickle."""

import numpy as np
import pytest

from lenet.npzfile import read_npz, write_npz
from lenet.status import StorageError


def test_round_trip_and_plain_numpy_loading(tmp_path):
    path = tmp_path / "m.npz"
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.array(7)}
    write_npz(path, arrays, {"epoch": 3, "note": "x"})
    got, meta = read_npz(path)
    assert meta == {"epoch": 3, "note": "x"}
    assert all(np.array_equal(got[k], arrays[k]) and got[k].dtype == arrays[k].dtype for k in arrays)
    with np.load(path, allow_pickle=False) as npz:
        assert np.array_equal(npz["w"], arrays["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # no temporary left behind


def test_flipped_byte_is_detected(tmp_path):
    path = tmp_path / "m.npz"
    write_npz(path, {"w": np.zeros(1000, dtype=np.float32)}, {})
    blob = bytearray(path.read_bytes())
    # Corrupt array data in the middle of the archive (stored uncompressed).
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(StorageError, match="m.npz"):
        read_npz(path)


def test_truncated_file_is_detected(tmp_path):
    path = tmp_path / "m.npz"
    write_npz(path, {"w": np.zeros(1000, dtype=np.float32)}, {})
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(StorageError, match="not a readable .npz"):
        read_npz(path)


def test_tampered_array_with_valid_zip_fails_checksum(tmp_path):
    path = tmp_path / "m.npz"
    write_npz(path, {"w": np.zeros(3, dtype=np.float32)}, {"a": 1})
    with np.load(path) as npz:
        entries = {k: npz[k] for k in npz.files}
    entries["w"] = np.ones(3, dtype=np.float32)
    np.savez(path, **entries)
    with pytest.raises(StorageError, match="checksum mismatch"):
        read_npz(path)


def test_unwritable_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="cannot write"):
        write_npz(blocker / "m.npz", {"w": np.zeros(1)}, {})


def test_object_arrays_are_never_loaded(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, w=np.array([{"a": 1}], dtype=object), __meta__=np.array("{}"), __sha256__=np.array("0"))
    with pytest.raises(StorageError):
        read_npz(path)

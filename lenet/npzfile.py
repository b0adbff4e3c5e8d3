"""Checksummed `.npz` files, written atomically: models and checkpoints.

A file holds named arrays plus two entries: `__meta__` (a JSON string, as a 0-d
unicode array) and `__sha256__`, a digest over the metadata and every array's name,
dtype, shape and bytes.  Nothing is pickled: `np.load(path, allow_pickle=False)`
opens it, and `read_npz` refuses a file whose digest does not match (a torn write,
a flipped bit, a hand-edited file).

Writes go to a temporary file in the same directory, are fsynced, renamed over the
target, and the directory is fsynced: a reader sees the old file or the new one,
never a mixture, even if the process or machine dies mid-write.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from lenet.status import StorageError

META_KEY = "__meta__"
DIGEST_KEY = "__sha256__"


def digest(arrays: dict[str, np.ndarray], meta_json: str) -> str:
    h = hashlib.sha256(meta_json.encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"\0{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Atomically write `arrays` and `meta` (JSON-serialisable) to `path`."""
    path = Path(path)
    for reserved in (META_KEY, DIGEST_KEY):
        if reserved in arrays:
            raise ValueError(f"array name {reserved} is reserved")
    meta_json = json.dumps(meta, sort_keys=True)
    entries = dict(arrays)
    entries[META_KEY] = np.array(meta_json)
    entries[DIGEST_KEY] = np.array(digest(arrays, meta_json))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **entries)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as err:
        raise StorageError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the directory itself is unusable: the error above says so


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` as `write_npz` writes (temporary file, fsync, rename, directory fsync)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as err:
        raise StorageError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the directory itself is unusable: the error above says so
    return path


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_npz(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and metadata of a file written by `write_npz`, verified by its digest."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            entries = {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise StorageError(f"{path}: no such file") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        raise StorageError(f"{path}: not a readable .npz file ({err})") from None
    if META_KEY not in entries or DIGEST_KEY not in entries:
        raise StorageError(f"{path}: no {META_KEY}/{DIGEST_KEY} entries: not written by this program")
    meta_json, stored = str(entries.pop(META_KEY)), str(entries.pop(DIGEST_KEY))
    if digest(entries, meta_json) != stored:
        raise StorageError(f"{path}: checksum mismatch: the file is damaged")
    try:
        meta = json.loads(meta_json)
    except ValueError as err:
        raise StorageError(f"{path}: bad metadata ({err})") from None
    return entries, meta

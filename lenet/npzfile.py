"""Checksummed `.npz` files, written atomically and read within bounds: models and checkpoints.

A file holds named arrays plus two or three entries: `__meta__` (a JSON object, as
a 0-d unicode array), `__sha256__`, a digest over the metadata and every array's
name, dtype, shape and bytes, and, when written with a key, `__hmac__`, an
HMAC-SHA256 with that key over the same input.  Nothing is pickled:
`np.load(path, allow_pickle=False)` opens it.

What the checks protect: the SHA-256 detects damage (a torn write, a flipped bit,
a truncated copy); it does not detect tampering, since anyone who can edit the
file can recompute it.  Only the HMAC, checked when a key is given, shows that
the file was written by a holder of the key; with a key, an unsigned or wrongly
signed file is refused.

Reading opens regular files only (a FIFO, a device such as /dev/zero or a
directory under a file's name is refused without waiting or reading), takes the
size from the opened file, and never trusts the file's own size claims: the zip directory (names,
sizes, compression) and each `.npy` header (dtype, shape) are checked against
the caller's expectations and a total size cap before any data is read, and
decompression stops at the declared size.  A damaged or crafted file is one
`StorageError`, and memory stays bounded by the cap.

Writes go to an exclusively created temporary file in the same directory, are
fsynced, renamed over the target, and the directory is fsynced: a reader sees the
old file or the new one, never a mixture, even if the process or machine dies
mid-write.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import stat
import tokenize
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from lenet.status import StorageError, UsageError
from lenet.tempfiles import create_beside

META_KEY = "__meta__"
DIGEST_KEY = "__sha256__"
HMAC_KEY = "__hmac__"
RESERVED = (META_KEY, DIGEST_KEY, HMAC_KEY)

MAX_BYTES = 64 << 20  # total array bytes a file may declare: LeNet-5 with Adam state needs under 1 MiB
MAX_ENTRIES = 256
MAX_HEADER_BYTES = 10_000  # numpy's own default limit for a .npy header
MIN_KEY_BYTES = 32
# Array kinds a file may hold: bool, integers, floats; unicode only in the reserved string entries.
_DATA_KINDS = frozenset("biuf")

_ZIP_ENCRYPTED, _ZIP_PATCHED = 0x1, 0x20  # zip general-purpose flag bits numpy never writes

# name -> (shape, dtype), from the headers, before any data is read
Layout = dict[str, tuple[tuple[int, ...], np.dtype]]


def _feed(h: Any, arrays: Mapping[str, np.ndarray], meta_json: str) -> None:
    h.update(meta_json.encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"\0{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())


def digest(arrays: Mapping[str, np.ndarray], meta_json: str) -> str:
    h = hashlib.sha256()
    _feed(h, arrays, meta_json)
    return h.hexdigest()


def signature(key: bytes, arrays: Mapping[str, np.ndarray], meta_json: str) -> str:
    """HMAC-SHA256 with `key` over what `digest` covers."""
    h = hmac.new(key, digestmod=hashlib.sha256)
    _feed(h, arrays, meta_json)
    return h.hexdigest()


def load_key(path: str | os.PathLike) -> bytes:
    """A checkpoint key file (`python -m coordinator.keys --checkpoint-key FILE`): its bytes, surrounding whitespace stripped."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as err:
        raise UsageError(f"cannot read checkpoint key {path}: {err.strerror or err}") from None
    if len(key) < MIN_KEY_BYTES:
        raise UsageError(f"checkpoint key {path} is {len(key)} bytes: at least {MIN_KEY_BYTES} are needed")
    return key


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict[str, Any],
              key: bytes | None = None, mode: int = 0o600) -> None:
    """Atomically write `arrays` and `meta` (JSON-serialisable) to `path`, signed if `key` is given.

    `mode`: the file's permissions (default 0600, private; `user_file_mode()` for a file meant to be shared).
    """
    path = Path(path)
    for reserved in RESERVED:
        if reserved in arrays:
            raise ValueError(f"array name {reserved} is reserved")
    meta_json = json.dumps(meta, sort_keys=True)
    entries = dict(arrays)
    entries[META_KEY] = np.array(meta_json)
    entries[DIGEST_KEY] = np.array(digest(arrays, meta_json))
    if key is not None:
        entries[HMAC_KEY] = np.array(signature(key, arrays, meta_json))
    _write_atomic(path, lambda f: np.savez(f, **entries), mode)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` as `write_npz` writes (exclusive temporary file, fsync, rename, directory fsync)."""
    return _write_atomic(path, lambda f: f.write(data))


def user_file_mode() -> int:
    """The mode an ordinary new file gets here: 0666 less the umask (0644 under the usual 022)."""
    umask = os.umask(0o077)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def _write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object], mode: int = 0o600) -> Path:
    """`write(f)` into a temporary file created exclusively beside `path` (then given `mode`), fsync, rename,
    fsync the directory."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = create_beside(path)
        if mode != 0o600:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as err:
        raise StorageError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        try:
            if tmp is not None:
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


def _header(fp: Any, label: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, data bytes) from a .npy header; nothing after it is read."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp, max_header_size=MAX_HEADER_BYTES)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp, max_header_size=MAX_HEADER_BYTES)
    else:
        raise ValueError(f"{label}: .npy format version {version} not accepted")
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise ValueError(f"{label}: dtype {dtype} not accepted (objects and records are never read)")
    if dtype.kind not in _DATA_KINDS and not (label in RESERVED and dtype.kind == "U" and shape == ()):
        raise ValueError(f"{label}: dtype {dtype} not accepted")
    if any(not isinstance(n, int) or n < 0 for n in shape):
        raise ValueError(f"{label}: bad shape {shape}")
    return shape, fortran, dtype, math.prod(shape) * dtype.itemsize  # Python ints: no overflow


def _check_directory(zf: zipfile.ZipFile, path: Path, max_bytes: int) -> dict[str, zipfile.ZipInfo]:
    infos = zf.infolist()
    if len(infos) > MAX_ENTRIES:
        raise StorageError(f"{path}: {len(infos)} entries, more than {MAX_ENTRIES}")
    entries: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        if not info.filename.endswith(".npy") or info.filename[:-4] in entries:
            raise StorageError(f"{path}: unexpected or repeated entry {info.filename!r}")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise StorageError(f"{path}: entry {info.filename!r} uses an unsupported compression")
        if info.flag_bits & (_ZIP_ENCRYPTED | _ZIP_PATCHED):
            raise StorageError(f"{path}: entry {info.filename!r} is encrypted or patched: not written by this program")
        total += info.file_size
        if total > max_bytes + len(infos) * MAX_HEADER_BYTES:
            raise StorageError(f"{path}: entries declare more than {max_bytes} bytes: refused before reading")
        entries[info.filename[:-4]] = info
    return entries


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading if it is a regular file (symlinks to one are followed); StorageError if not.

    O_NONBLOCK: opening a FIFO must not wait for a writer; the type is then checked on
    the opened descriptor, so nothing can be swapped in between.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else (
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
            raise StorageError(f"{path}: {kind}, not a regular file: refused unread")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_entries(f: BinaryIO, path: Path, expect: Callable[[Layout], str | None] | None,
                  max_bytes: int) -> dict[str, np.ndarray]:
    """Every entry of the open archive `f`, checked as `read_npz` says, reserved ones included."""
    with zipfile.ZipFile(f) as zf:
        infos = _check_directory(zf, path, max_bytes)
        layout: dict[str, tuple[tuple[int, ...], bool, np.dtype, int]] = {}
        total = 0
        for name, info in infos.items():
            with zf.open(info) as fp:
                layout[name] = _header(fp, name)
                header_len = fp.tell()
            total += layout[name][3]
            if header_len + layout[name][3] != info.file_size:
                raise StorageError(f"{path}: entry {name!r} claims {layout[name][3]} data bytes, "
                                   f"the archive {info.file_size - header_len}")
        if total > max_bytes:
            raise StorageError(f"{path}: arrays total {total} bytes, more than {max_bytes}: refused before reading")
        for reserved in (META_KEY, DIGEST_KEY):
            if reserved not in layout:
                raise StorageError(f"{path}: no {META_KEY}/{DIGEST_KEY} entries: not written by this program")
        if expect is not None:
            problem = expect({n: (s, d) for n, (s, _, d, _) in layout.items() if n not in RESERVED})
            if problem:
                raise StorageError(f"{path}: {problem}")
        entries = {}
        for name, (shape, fortran, dtype, nbytes) in layout.items():
            with zf.open(infos[name]) as fp:
                _header(fp, name)  # again, to stand at the data: a few hundred bytes
                blob = fp.read(nbytes)
            if len(blob) != nbytes:
                raise StorageError(f"{path}: entry {name!r} is truncated")
            entries[name] = np.frombuffer(blob, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()
    return entries


def read_npz(path: str | os.PathLike, key: bytes | None = None,
             expect: Callable[[Layout], str | None] | None = None,
             max_bytes: int = MAX_BYTES) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and metadata of a file written by `write_npz`, verified by its digest (and HMAC, with `key`).

    `expect`, given the names, shapes and dtypes of the arrays (without the reserved
    entries), returns why they are wrong, or None; it runs before any array data is
    read.  Every failure is one StorageError.
    """
    path = Path(path)
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes + MAX_ENTRIES * (MAX_HEADER_BYTES + 1024):
                raise StorageError(f"{path}: {size} bytes, more than any file this program writes")
            entries = _read_entries(f, path, expect, max_bytes)
    except FileNotFoundError:
        raise StorageError(f"{path}: no such file") from None
    # What zipfile and numpy's header parser raise on malformed input (NotImplementedError:
    # zip features such as patched data; TokenError: an unterminated .npy header).
    except (OSError, ValueError, EOFError, KeyError, SyntaxError, NotImplementedError, tokenize.TokenError,
            zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        raise StorageError(f"{path}: not a readable .npz file ({err})") from None
    meta_json, stored = str(entries.pop(META_KEY)), str(entries.pop(DIGEST_KEY))
    stored_hmac = str(entries.pop(HMAC_KEY)) if HMAC_KEY in entries else None
    if not hmac.compare_digest(digest(entries, meta_json), stored):
        raise StorageError(f"{path}: checksum mismatch: the file is damaged")
    if key is not None:
        if stored_hmac is None:
            raise StorageError(f"{path}: not signed, but a checkpoint key was given: refused")
        if not hmac.compare_digest(signature(key, entries, meta_json), stored_hmac):
            raise StorageError(f"{path}: signature mismatch: written without this key, or altered")
    try:
        meta = json.loads(meta_json)
    except (ValueError, RecursionError) as err:
        raise StorageError(f"{path}: bad metadata ({err})") from None
    if not isinstance(meta, dict):
        raise StorageError(f"{path}: metadata is a JSON {type(meta).__name__}, not an object")
    return entries, meta

"""MNIST: locate, download, verify and read the four IDX files; standardise; shuffle.

Where the files come from, in this order:
  1. an explicit directory (`--data-dir`), which must hold them;
  2. the directory in $MNIST_DIR, which must hold them;
  3. the per-user cache ($LENET_CACHE_DIR, else $XDG_CACHE_HOME/lenet5, else
     ~/.cache/lenet5), filled by downloading from public mirrors if needed.
Each file may be gzipped (`name.gz`) or raw (`name`).  The SHA-256 of the
*decompressed* bytes must match the published value; nothing unverified is read,
and a download only lands in the cache (by atomic rename) once verified.

Sizes are known before hashing: a body, a file or a gzip stream that would grow
beyond the file's known size is refused while it is read or inflated, so a
hostile mirror or a planted file cannot exhaust memory.  The built-in mirrors are
HTTPS; $MNIST_MIRRORS may name others (the checksum still decides).  Downloads
are written to exclusively created temporaries, and temporaries a killed
download left in the cache are swept at the next start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lenet.status import DataError
from lenet.tempfiles import create_beside, sweep_stale_temporaries

# name -> (SHA-256 of the decompressed IDX file, IDX magic, item count)
FILES: dict[str, tuple[str, int, int]] = {
    "train-images-idx3-ubyte": ("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", 2051, 60000),
    "train-labels-idx1-ubyte": ("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", 2049, 60000),
    "t10k-images-idx3-ubyte": ("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", 2051, 10000),
    "t10k-labels-idx1-ubyte": ("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", 2049, 10000),
}

DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# A gzip of MNIST is smaller than the file it holds; the slack covers a mirror
# serving the raw file or a gzip header with a name in it.
COMPRESSED_SLACK = 1 << 16


def raw_size(name: str) -> int:
    """The exact size of the decompressed IDX file `name`."""
    _, magic, count = FILES[name]
    return 16 + count * 28 * 28 if magic == 2051 else 8 + count


def max_stored_size(name: str) -> int:
    """The largest `name` or `name.gz` accepted from a mirror or a directory."""
    return raw_size(name) + COMPRESSED_SLACK

MEAN, STD = 0.1307, 0.3081
# Standardised value of every possible pixel: float32 (x/255 - mean)/std by lookup,
# so every process maps uint8 pixels to bit-identical floats.
_PIXEL_TABLE = ((np.arange(256, dtype=np.float64) / 255.0 - MEAN) / STD).astype(np.float32)


@dataclass(frozen=True)
class MNIST:
    train_images: np.ndarray  # uint8 (60000, 28, 28)
    train_labels: np.ndarray  # uint8 (60000,)
    test_images: np.ndarray  # uint8 (10000, 28, 28)
    test_labels: np.ndarray  # uint8 (10000,)
    checksums: dict[str, str]  # file name -> SHA-256 of its decompressed bytes


def training_subset(data: MNIST, n: int | None) -> MNIST:
    """The first n training images (all of them for None); the test set is unchanged."""
    if n is None:
        return data
    return dataclasses.replace(data, train_images=data.train_images[:n], train_labels=data.train_labels[:n])


def standardize(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28), (pixel/255 - 0.1307) / 0.3081."""
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    return _PIXEL_TABLE[images][:, None, :, :]


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the n training samples in `epoch`: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def epoch_batches(seed: int, epoch: int, n: int, batch_size: int) -> list[np.ndarray]:
    """Sample indices of each step of an epoch.

    Every sample is used exactly once per epoch: the last batch holds the remainder
    (n mod batch_size samples) when the batch size does not divide n.
    """
    order = epoch_permutation(seed, epoch, n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


# --------------------------------------------------------------------------- IDX parsing


def parse_idx(raw: bytes, name: str) -> np.ndarray:
    """Validate and decode one decompressed MNIST IDX file against FILES[name]."""
    digest, magic, count = FILES[name]
    header = 16 if magic == 2051 else 8
    if len(raw) < header:
        raise DataError(f"{name}: truncated: {len(raw)} bytes, shorter than the IDX header")
    got_magic, got_count = int.from_bytes(raw[0:4], "big"), int.from_bytes(raw[4:8], "big")
    if got_magic != magic:
        raise DataError(f"{name}: bad magic number {got_magic}, expected {magic}")
    if got_count != count:
        raise DataError(f"{name}: holds {got_count} items, expected {count}")
    shape: tuple[int, ...] = (count,)
    if magic == 2051:
        rows, cols = int.from_bytes(raw[8:12], "big"), int.from_bytes(raw[12:16], "big")
        if (rows, cols) != (28, 28):
            raise DataError(f"{name}: images are {rows}x{cols}, expected 28x28")
        shape = (count, 28, 28)
    expected_len = header + int(np.prod(shape))
    if len(raw) != expected_len:
        raise DataError(f"{name}: {len(raw)} bytes, expected {expected_len} (truncated or padded)")
    actual = hashlib.sha256(raw).hexdigest()
    if actual != digest:
        raise DataError(f"{name}: SHA-256 {actual} does not match the published {digest}")
    data = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
    if magic == 2049 and data.max() > 9:
        raise DataError(f"{name}: label {int(data.max())} out of range 0-9")
    return data


def _decompress(blob: bytes, label: str, limit: int) -> bytes:
    """Inflate a gzip blob (a raw one is returned as is), refusing output beyond `limit` bytes as it grows."""
    if blob[:2] != b"\x1f\x8b":
        return blob
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip container
    try:
        raw = inflater.decompress(blob, limit + 1)  # never more than limit + 1 bytes in memory
    except zlib.error as err:
        raise DataError(f"{label}: corrupt gzip data ({err})") from None
    if len(raw) > limit:
        raise DataError(f"{label}: inflates to more than the {limit} bytes expected: refused")
    if not inflater.eof:
        raise DataError(f"{label}: corrupt gzip data (truncated)")
    return raw


def read_file(directory: Path, name: str) -> np.ndarray:
    """Read `name` or `name.gz` from `directory`, verified."""
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            try:
                if candidate.stat().st_size > max_stored_size(name):
                    raise DataError(f"{candidate}: {candidate.stat().st_size} bytes, larger than {name} can be")
                blob = candidate.read_bytes()
            except OSError as err:
                raise DataError(f"{candidate}: cannot read ({err.strerror})") from None
            return parse_idx(_decompress(blob, str(candidate), raw_size(name)), name)
    raise DataError(f"{directory}: missing {name}.gz (or {name})")


def _has_all(directory: Path) -> bool:
    return all((directory / f"{n}.gz").is_file() or (directory / n).is_file() for n in FILES)


# --------------------------------------------------------------------------- locating and downloading


def cache_dir() -> Path:
    if os.environ.get("LENET_CACHE_DIR"):
        return Path(os.environ["LENET_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lenet5"


def mirrors() -> list[str]:
    """Mirror base URLs, overridable with $MNIST_MIRRORS (comma-separated)."""
    env = os.environ.get("MNIST_MIRRORS", "").strip()
    urls = [u.strip() for u in env.split(",") if u.strip()] if env else list(DEFAULT_MIRRORS)
    return [u if u.endswith("/") else u + "/" for u in urls]


def _fetch(url: str, timeout: float, progress: bool, limit: int) -> bytes:
    """The body at `url`; more than `limit` bytes (announced or received) is a DataError."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        try:
            total = int(response.headers.get("Content-Length") or 0)
        except ValueError:
            total = 0
        if total > limit:
            raise DataError(f"{url}: announces {total} bytes, more than the {limit} expected: refused")
        chunks, done, shown = [], 0, -1
        while True:
            chunk = response.read(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            done += len(chunk)
            if done > limit:
                raise DataError(f"{url}: more than the {limit} bytes expected: refused")
            pct = done * 100 // total if total else -1
            if progress and total and pct // 10 != shown:
                shown = pct // 10
                print(f"  {url}: {done / 1e6:.1f}/{total / 1e6:.1f} MB ({pct}%)", file=sys.stderr)
    if total and done != total:
        raise OSError(f"connection closed after {done} of {total} bytes")
    return b"".join(chunks)


def download(directory: Path, name: str, retries: int = 3, timeout: float = 30.0, progress: bool = True) -> None:
    """Fetch `name.gz` from the mirrors into `directory`, verified, written atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    problems: dict[str, str] = {}  # mirror -> its last problem
    for base in mirrors():
        url = f"{base}{name}.gz"
        for attempt in range(retries):
            try:
                blob = _fetch(url, timeout, progress, max_stored_size(name))
                parse_idx(_decompress(blob, url, raw_size(name)), name)
            except (OSError, urllib.error.URLError, ValueError) as err:
                problems[base] = f"{url}: {err}"
                time.sleep(min(4.0, 0.5 * 2**attempt))
                continue
            except DataError as err:
                problems[base] = f"{url}: {err}"  # a wrong file will not get better on retry
                break
            _write_atomically(directory / f"{name}.gz", blob)
            return
    raise DataError(f"could not download {name}: " + "; ".join(problems.values()))


def _write_atomically(path: Path, blob: bytes) -> None:
    fd, tmp = create_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def resolve_data_dir(data_dir: str | os.PathLike | None = None, allow_download: bool = True) -> Path:
    """Directory holding the four files, downloading into the cache if needed (see module doc)."""
    for given, origin in ((data_dir, "--data-dir"), (os.environ.get("MNIST_DIR") or None, "MNIST_DIR")):
        if given is None:
            continue
        path = Path(given)
        if not path.is_dir():
            raise DataError(f"{origin} {path}: not a directory")
        if not _has_all(path):
            missing = [n for n in FILES if not ((path / f"{n}.gz").is_file() or (path / n).is_file())]
            raise DataError(f"{origin} {path}: missing {', '.join(missing)}")
        return path
    cache = cache_dir()
    missing = [n for n in FILES if not ((cache / f"{n}.gz").is_file() or (cache / n).is_file())]
    if missing and not allow_download:
        raise DataError(f"MNIST is not in {cache} and downloading is off: missing {', '.join(missing)}")
    if missing:
        sweep_stale_temporaries(cache)  # what a killed download left behind
    for name in missing:
        print(f"downloading {name} into {cache}", file=sys.stderr)
        try:
            download(cache, name)
        except OSError as err:
            raise DataError(f"cannot write to the cache {cache}: {err}") from None
    return cache


def load_mnist(data_dir: str | os.PathLike | None = None, allow_download: bool = True) -> MNIST:
    """The verified MNIST arrays (see module doc for where they come from)."""
    directory = resolve_data_dir(data_dir, allow_download)
    arrays = {name: read_file(directory, name) for name in FILES}
    return MNIST(
        train_images=arrays["train-images-idx3-ubyte"],
        train_labels=arrays["train-labels-idx1-ubyte"],
        test_images=arrays["t10k-images-idx3-ubyte"],
        test_labels=arrays["t10k-labels-idx1-ubyte"],
        checksums={name: FILES[name][0] for name in FILES},
    )

"""`python -m lenet.predict MODEL.npz IMAGE...`: the digit in each image, and its probability.

Images are PNG (8-bit grayscale or RGB, not interlaced), PGM (P5 or P2, up to 8
bits) or IDX (`*-idx3-ubyte`, gzipped or not, many images), all decoded with the
standard library.  They must be 28x28 with MNIST's polarity, a white digit on black;
`--invert` takes a black digit on white.  RGB is turned to gray with the ITU-R
BT.601 weights.

Exit status: 0 done; 2 bad arguments; 3 an image that is not a supported PNG, PGM
or IDX file, is damaged, or is not 28x28; 4 the model or an image cannot be read.
"""

from __future__ import annotations

import argparse
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lenet.status import DataError, ExitStatus, StorageError, run_main

SIZE = 28
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IDX_UBYTE_3D = b"\x00\x00\x08\x03"  # IDX magic: unsigned bytes, three dimensions (count, rows, cols)
MAX_INFLATED = 64 << 20  # bytes: far above any 28x28 image or MNIST file; a compression bomb stops here
PNG_CHANNELS = {0: 1, 2: 3}  # colour type -> samples per pixel: grayscale, RGB
PNG_COLOUR_NAMES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale with alpha", 6: "RGBA"}


def _inflate(data: bytes, wbits: int, name: str) -> bytes:
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(data, MAX_INFLATED)
    except zlib.error as err:
        raise DataError(f"{name}: damaged compressed data ({err})") from None
    if inflater.unconsumed_tail:
        raise DataError(f"{name}: decompresses to more than {MAX_INFLATED >> 20} MiB")
    return out


def _check_size(width: int, height: int, name: str) -> None:
    if (width, height) != (SIZE, SIZE):
        raise DataError(f"{name}: image is {width}x{height}, expected {SIZE}x{SIZE} (MNIST's size)")


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def decode_png(raw: bytes, name: str) -> np.ndarray:
    """An 8-bit grayscale or RGB, non-interlaced PNG -> uint8 (H, W) gray; DataError otherwise."""
    pos, header, idat = len(PNG_SIGNATURE), None, []
    while True:
        if pos + 12 > len(raw):
            raise DataError(f"{name}: truncated PNG (no IEND chunk)")
        length, kind = int.from_bytes(raw[pos : pos + 4], "big"), raw[pos + 4 : pos + 8]
        body = raw[pos + 8 : pos + 8 + length]
        crc = raw[pos + 8 + length : pos + 12 + length]
        if len(crc) != 4:
            raise DataError(f"{name}: truncated PNG ({kind.decode('latin-1')} chunk cut short)")
        if zlib.crc32(kind + body) != int.from_bytes(crc, "big"):
            raise DataError(f"{name}: damaged PNG (CRC mismatch in the {kind.decode('latin-1')} chunk)")
        pos += 12 + length
        if kind == b"IHDR":
            if length != 13:
                raise DataError(f"{name}: damaged PNG (IHDR of {length} bytes)")
            header = body
            width, height = int.from_bytes(body[0:4], "big"), int.from_bytes(body[4:8], "big")
            depth, colour, compression, filtering, interlace = body[8:13]
            _check_size(width, height, name)  # before inflating anything
            if depth != 8 or colour not in PNG_CHANNELS:
                what = PNG_COLOUR_NAMES.get(colour, f"colour type {colour}")
                raise DataError(f"{name}: PNG is {depth}-bit {what}: only 8-bit grayscale or RGB PNG is supported")
            if compression != 0 or filtering != 0 or interlace != 0:
                raise DataError(f"{name}: interlaced or non-standard PNG: save it without interlacing")
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None or not idat:
        raise DataError(f"{name}: damaged PNG (no IHDR or no image data)")
    channels = PNG_CHANNELS[header[9]]
    stride = SIZE * channels
    data = _inflate(b"".join(idat), zlib.MAX_WBITS, name)
    if len(data) != SIZE * (1 + stride):
        raise DataError(f"{name}: damaged PNG ({len(data)} bytes of pixels, expected {SIZE * (1 + stride)})")
    rows, prev = [], bytearray(stride)
    for y in range(SIZE):
        kind, line = data[y * (1 + stride)], bytearray(data[y * (1 + stride) + 1 : (y + 1) * (1 + stride)])
        if kind > 4:
            raise DataError(f"{name}: damaged PNG (row filter {kind})")
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up_left = prev[i - channels] if i >= channels else 0
            predictor = (0, left, prev[i], (left + prev[i]) // 2, _paeth(left, prev[i], up_left))[kind]
            line[i] = (line[i] + predictor) & 0xFF
        rows.append(bytes(line))
        prev = line
    pixels = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(SIZE, SIZE, channels).astype(np.uint32)
    if channels == 1:
        return pixels[:, :, 0].astype(np.uint8)
    gray = (299 * pixels[:, :, 0] + 587 * pixels[:, :, 1] + 114 * pixels[:, :, 2] + 500) // 1000
    return gray.astype(np.uint8)


def decode_pgm(raw: bytes, name: str) -> np.ndarray:
    """A binary (P5) or plain (P2) PGM with maxval <= 255 -> uint8 (H, W), rescaled to 0-255."""
    binary = raw[:2] == b"P5"
    fields: list[int] = []
    pos = 2
    while len(fields) < 3:  # width, height, maxval, with # comments anywhere between them
        while pos < len(raw) and raw[pos : pos + 1].isspace():
            pos += 1
        if raw[pos : pos + 1] == b"#":
            end = raw.find(b"\n", pos)
            pos = len(raw) if end < 0 else end + 1
            continue
        start = pos
        while pos < len(raw) and raw[pos : pos + 1].isdigit():
            pos += 1
        if start == pos:
            raise DataError(f"{name}: damaged PGM header")
        fields.append(int(raw[start:pos]))
    width, height, maxval = fields
    _check_size(width, height, name)
    if not 0 < maxval <= 255:
        raise DataError(f"{name}: PGM maxval {maxval}: only 8-bit PGM (maxval 1-255) is supported")
    if binary:
        pixels = raw[pos + 1 : pos + 1 + SIZE * SIZE]  # exactly one whitespace byte ends the header
        if len(pixels) != SIZE * SIZE:
            raise DataError(f"{name}: truncated PGM ({len(pixels)} of {SIZE * SIZE} pixels)")
        values = np.frombuffer(pixels, dtype=np.uint8).astype(np.int64)
    else:
        tokens = raw[pos:].split()
        if len(tokens) != SIZE * SIZE or not all(t.isdigit() for t in tokens):
            raise DataError(f"{name}: damaged plain PGM (expected {SIZE * SIZE} numbers)")
        values = np.array([int(t) for t in tokens], dtype=np.int64)
    if values.max() > maxval:
        raise DataError(f"{name}: damaged PGM (a pixel above maxval {maxval})")
    return ((values * 255 + maxval // 2) // maxval).astype(np.uint8).reshape(SIZE, SIZE)


def decode_idx(raw: bytes, name: str) -> np.ndarray:
    """An IDX file of unsigned-byte images (magic 0x00000803) -> uint8 (N, H, W)."""
    if len(raw) < 16:
        raise DataError(f"{name}: truncated IDX header")
    count, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    _check_size(cols, rows, name)
    if len(raw) != 16 + count * SIZE * SIZE:
        raise DataError(f"{name}: {len(raw)} bytes, expected {16 + count * SIZE * SIZE} for {count} images")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, SIZE, SIZE)


def read_images(path: str | Path) -> np.ndarray:
    """The image(s) in a PNG, PGM or IDX file (gzipped IDX too) as uint8 (N, 28, 28); the format is sniffed."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise StorageError(f"{name}: no such file") from None
    except OSError as err:
        raise StorageError(f"{name}: cannot read ({err.strerror or err})") from None
    if raw[:2] == b"\x1f\x8b":
        raw = _inflate(raw, 16 + zlib.MAX_WBITS, name)
        if raw[:4] != IDX_UBYTE_3D:
            raise DataError(f"{name}: a gzipped file that is not an IDX file of images")
    if raw.startswith(PNG_SIGNATURE):
        return decode_png(raw, name)[None]
    if raw[:2] in (b"P5", b"P2"):
        return decode_pgm(raw, name)[None]
    if raw[:4] == IDX_UBYTE_3D:
        return decode_idx(raw, name)
    raise DataError(f"{name}: not a PNG, PGM or IDX image file")


def predict(params: dict[str, np.ndarray], images: np.ndarray, batch_size: int = 1000,
            model: str = "lenet5") -> np.ndarray:
    """Class probabilities (N, 10) from `model`'s (a lenet.models name) for uint8 images (N, 28, 28) in MNIST's
    polarity: the softmax of its scores."""
    from lenet.models import get_model

    net = get_model(model)()
    net.params = params
    out = []
    for i in range(0, len(images), batch_size):
        logits = net.scores(net.forward(net.prepare(images[i : i + batch_size]))).astype(np.float64)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        out.append(e / e.sum(axis=1, keepdims=True))
    return np.concatenate(out) if out else np.zeros((0, 10))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lenet.predict",
        description="Print the digit in each image and its probability. Images: 28x28 PNG (8-bit grayscale or "
                    "RGB), PGM (P5/P2) or IDX files, white digit on black (MNIST's polarity).",
        epilog="Exit status: 0 done, 2 usage, 3 an image unsupported, damaged or not 28x28, 4 a file unreadable.",
    )
    parser.add_argument("model", help="the trained model, e.g. lenet5.npz")
    parser.add_argument("images", nargs="+", help="PNG, PGM or IDX files")
    parser.add_argument("--invert", action="store_true", help="images are a black digit on white")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from lenet.train import file_model, load_model

    args = build_parser().parse_args(argv)
    params, meta = load_model(args.model)
    model = file_model(meta, args.model).name
    files = [(path, read_images(path)) for path in args.images]  # every file checked before any output
    for path, images in files:
        probs = predict(params, 255 - images if args.invert else images, model=model)
        for i, p in enumerate(probs):
            label = f"{path}[{i}]" if len(images) > 1 else path
            digit = int(p.argmax())
            print(f"{label}: {digit} ({p[digit]:.1%})")
    return int(ExitStatus.OK)


if __name__ == "__main__":
    sys.exit(run_main(main, "lenet.predict"))

"""`python -m lenet.predict`: PNG, PGM and IDX decoding by the standard library, predictions, and refusals."""

import gzip
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lenet.predict import looks_inverted, main, predict, read_images
from lenet.status import DataError, StorageError
from lenet.train import load_model
from procs import env


def png(pixels: np.ndarray, colour: int = 0, depth: int = 8, crc_ok: bool = True) -> bytes:
    """A PNG encoded independently of the decoder: every row uses one of the five filters, in turn.
    16-bit samples are big-endian byte pairs; the filters work on bytes, a whole pixel back."""
    height, width = pixels.shape[:2]
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    pixel_bytes = max(1, channels * depth // 8)  # below 8 bits: a stand-in body (only the header is read)
    samples = pixels.reshape(height, width * channels).astype(">u2" if depth == 16 else np.uint8)
    rows = np.frombuffer(samples.tobytes(), dtype=np.uint8).reshape(height, -1).astype(np.int64)
    out, prev = bytearray(), np.zeros(width * pixel_bytes, dtype=np.int64)
    for y, row in enumerate(rows):
        kind = y % 5
        left = np.concatenate([np.zeros(pixel_bytes, dtype=np.int64), row[:-pixel_bytes]])
        up_left = np.concatenate([np.zeros(pixel_bytes, dtype=np.int64), prev[:-pixel_bytes]])
        if kind == 4:
            p = left + prev - up_left
            pa, pb, pc = np.abs(p - left), np.abs(p - prev), np.abs(p - up_left)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, up_left))
        else:
            pred = [np.zeros_like(row), left, prev, (left + prev) // 2][kind]
        out.append(kind)
        out += ((row - pred) % 256).astype(np.uint8).tobytes()
        prev = row

    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header, crc_ok) + chunk(b"tEXt", b"Comment\0test")
            + chunk(b"IDAT", zlib.compress(bytes(out))) + chunk(b"IEND", b""))


def chunk(kind: bytes, body: bytes, crc_ok: bool = True) -> bytes:
    crc = zlib.crc32(kind + body) ^ (0 if crc_ok else 1)
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def pgm_binary(pixels: np.ndarray, maxval: int = 255) -> bytes:
    h, w = pixels.shape
    return f"P5\n# a comment\n{w} {h}\n{maxval}\n".encode() + pixels.astype(np.uint8).tobytes()


def pgm_plain(pixels: np.ndarray) -> bytes:
    h, w = pixels.shape
    return f"P2 {w} {h} 255\n".encode() + "\n".join(" ".join(map(str, r)) for r in pixels).encode() + b"\n"


@pytest.fixture(scope="module")
def digits(mnist):
    return mnist.test_images[:12]


def test_png_gray_and_rgb_decode_to_the_exact_pixels(digits, tmp_path):
    for i, image in enumerate(digits):
        (tmp_path / "g.png").write_bytes(png(image))
        assert np.array_equal(read_images(tmp_path / "g.png"), image[None]), i
        (tmp_path / "c.png").write_bytes(png(np.repeat(image[:, :, None], 3, axis=2), colour=2))
        assert np.array_equal(read_images(tmp_path / "c.png"), image[None]), i


def test_rgb_is_turned_to_gray_with_bt601_weights(tmp_path):
    rgb = np.zeros((28, 28, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    (tmp_path / "c.png").write_bytes(png(rgb, colour=2))
    assert (read_images(tmp_path / "c.png") == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)).all()


def test_alpha_is_composited_over_the_background(digits, tmp_path):
    image = digits[0]
    opaque = np.full_like(image, 255)
    for colour, stack in [(4, lambda a: np.stack([image, a], axis=2)),
                          (6, lambda a: np.stack([image, image, image, a], axis=2))]:
        (tmp_path / "a.png").write_bytes(png(stack(opaque), colour=colour))
        assert np.array_equal(read_images(tmp_path / "a.png")[0], image), colour  # opaque: the pixels
        alpha = np.zeros_like(image)
        alpha[:, 14:] = 255  # left half transparent, right half opaque
        (tmp_path / "a.png").write_bytes(png(stack(alpha), colour=colour))
        for background in (0, 255):
            got = read_images(tmp_path / "a.png", background=background)[0]
            assert (got[:, :14] == background).all() and np.array_equal(got[:, 14:], image[:, 14:])
        half = np.full_like(image, 128)
        (tmp_path / "a.png").write_bytes(png(stack(half), colour=colour))
        expected = (image.astype(np.int64) * 128 + 255 * 127 + 127) // 255
        assert np.array_equal(read_images(tmp_path / "a.png", background=255)[0], expected)


def test_16_bit_pngs_scale_to_8_bits(digits, tmp_path):
    image = digits[1]
    wide = image.astype(np.uint16) * 257  # 0-255 -> 0-65535
    for colour, pixels in [(0, wide), (2, np.stack([wide] * 3, axis=2)), (4, np.stack([wide, wide * 0 + 65535], 2)),
                           (6, np.stack([wide] * 3 + [wide * 0 + 65535], axis=2))]:
        (tmp_path / "w.png").write_bytes(png(pixels, colour=colour, depth=16))
        assert np.array_equal(read_images(tmp_path / "w.png")[0], image), colour
    nudged = wide.astype(np.int64) + np.where(image > 0, -100, 100)  # still nearest to v: rounded, not truncated
    (tmp_path / "w.png").write_bytes(png(nudged, depth=16))
    assert np.array_equal(read_images(tmp_path / "w.png")[0], image)


def test_pgm_binary_plain_and_low_maxval(digits, tmp_path):
    image = digits[0]
    (tmp_path / "b.pgm").write_bytes(pgm_binary(image))
    (tmp_path / "p.pgm").write_bytes(pgm_plain(image))
    (tmp_path / "q.pgm").write_bytes(pgm_binary(image // 17, maxval=15))  # 4-bit: 0-15 scaled to 0-255
    assert np.array_equal(read_images(tmp_path / "b.pgm")[0], image)
    assert np.array_equal(read_images(tmp_path / "p.pgm")[0], image)
    assert np.array_equal(read_images(tmp_path / "q.pgm")[0], (image // 17) * 17)


def test_idx_gzipped_or_raw_gives_every_image(mnist, mnist_dir, tmp_path):
    source = next(mnist_dir.glob("t10k-images-idx3-ubyte*"))
    assert np.array_equal(read_images(source), mnist.test_images)
    raw = gzip.decompress(source.read_bytes()) if source.suffix == ".gz" else source.read_bytes()
    (tmp_path / "raw-idx3-ubyte").write_bytes(raw[:4] + (3).to_bytes(4, "big") + raw[8 : 16 + 3 * 784])
    assert np.array_equal(read_images(tmp_path / "raw-idx3-ubyte"), mnist.test_images[:3])


def test_command_prints_the_models_digit_and_probability(trained_model, digits, tmp_path, capsys):
    files = []
    for i, image in enumerate(digits):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(png(image))
    (tmp_path / "inverted.pgm").write_bytes(pgm_binary(255 - digits[0]))
    assert main([str(trained_model), *map(str, files)]) == 0
    lines = capsys.readouterr().out.splitlines()
    probs = predict(load_model(trained_model)[0], digits)
    assert lines == [f"{f}: {p.argmax()} ({p.max():.1%})" for f, p in zip(files, probs)]
    assert (probs.argmax(axis=1) == np.array([7, 2, 1, 0, 4, 1, 4, 9, 5, 9, 0, 6])).mean() >= 0.9  # the labels
    assert main([str(trained_model), "--invert", str(tmp_path / "inverted.pgm")]) == 0
    assert capsys.readouterr().out.split(": ", 1)[1] == lines[0].split(": ", 1)[1] + "\n"


def test_idx_lines_are_numbered(trained_model, mnist_dir, capsys):
    source = next(mnist_dir.glob("t10k-images-idx3-ubyte*"))
    assert main([str(trained_model), str(source)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10000
    assert lines[0].startswith(f"{source}[0]: 7 (") and lines[-1].startswith(f"{source}[9999]: ")


@pytest.mark.parametrize("content, message", [
    (lambda d: png(d[:27]), "image is 28x27, expected 28x28 (MNIST's size)"),
    (lambda d: pgm_binary(np.zeros((32, 32))), "image is 32x32, expected 28x28"),
    (lambda d: png(d, crc_ok=False), "damaged PNG (CRC mismatch in the IHDR chunk)"),
    (lambda d: png(d, colour=3), "PNG is 8-bit palette: only 8- or 16-bit grayscale, RGB, grayscale with alpha"),
    (lambda d: png(d // 16, depth=4), "PNG is 4-bit grayscale: only 8- or 16-bit"),
    (lambda d: png(d)[:60], "truncated PNG"),
    (lambda d: pgm_binary(d)[:-10], "truncated PGM (774 of 784 pixels)"),
    (lambda d: b"GIF89a...", "not a PNG, PGM or IDX image file"),
    (lambda d: gzip.compress(b"hello"), "a gzipped file that is not an IDX file of images"),
])
def test_bad_images_are_refused_with_one_clear_line(content, message, digits, tmp_path):
    (tmp_path / "bad").write_bytes(content(digits[0]))
    with pytest.raises(DataError) as err:
        read_images(tmp_path / "bad")
    assert str(err.value).startswith(f"{tmp_path / 'bad'}: {message}")


def test_missing_image_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError, match="no such file"):
        read_images(tmp_path / "absent.png")


def test_a_bad_file_is_reported_and_the_others_are_still_predicted(trained_model, digits, tmp_path):
    (tmp_path / "a.png").write_bytes(png(digits[0]))
    (tmp_path / "bad.png").write_bytes(png(digits[1])[:60])
    (tmp_path / "c.pgm").write_bytes(pgm_binary(digits[2]))
    files = [tmp_path / "a.png", tmp_path / "bad.png", tmp_path / "absent.png", tmp_path / "c.pgm"]
    proc = subprocess.run([sys.executable, "-m", "lenet.predict", str(trained_model), *map(str, files)],
                          capture_output=True, text=True, timeout=60, env=env())
    assert proc.returncode == 3, proc.stderr  # the first failure's status: a damaged image
    assert [line.split(":")[0] for line in proc.stdout.splitlines()] == [str(files[0]), str(files[3])]
    errors = proc.stderr.splitlines()
    assert len(errors) == 3 and "bad.png: truncated PNG" in errors[0] and "absent.png: no such file" in errors[1]
    assert errors[2] == "lenet.predict: 2 of 4 files failed"


def test_a_checkpoint_given_as_the_model_is_named(trained_model, digits, tmp_path):
    from lenet.npzfile import write_npz

    params = load_model(trained_model)[0]
    write_npz(tmp_path / "ckpt-000000300.npz", {f"params/{k}": v for k, v in params.items()},
              {"kind": "lenet5-checkpoint", "step": 300})
    (tmp_path / "a.png").write_bytes(png(digits[0]))
    proc = subprocess.run([sys.executable, "-m", "lenet.predict", str(tmp_path / "ckpt-000000300.npz"),
                           str(tmp_path / "a.png")], capture_output=True, text=True, timeout=60, env=env())
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.count("\n") == 1
    assert "ckpt-000000300.npz: this is a checkpoint, not a model: give the model file the run saved" in proc.stderr


def test_an_image_that_looks_inverted_draws_a_warning(trained_model, digits, tmp_path, capsys):
    (tmp_path / "scan.pgm").write_bytes(pgm_binary(255 - digits[0]))
    (tmp_path / "ok.pgm").write_bytes(pgm_binary(digits[0]))
    assert main([str(trained_model), str(tmp_path / "scan.pgm"), str(tmp_path / "ok.pgm")]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"warning: {tmp_path / 'scan.pgm'}: looks like a dark digit on a light " \
        "background (MNIST's is a white digit on black): pass --invert if so" in err
    assert main([str(trained_model), "--invert", str(tmp_path / "scan.pgm")]) == 0
    assert capsys.readouterr().err == ""
    assert main([str(trained_model), "--invert", str(tmp_path / "ok.pgm")]) == 0
    assert "drop --invert if so" in capsys.readouterr().err
    assert not looks_inverted(digits).any() and looks_inverted(255 - digits).all()


def test_command_errors_are_one_line_and_a_status(trained_model, tmp_path):
    (tmp_path / "big.pgm").write_bytes(pgm_binary(np.zeros((64, 64))))
    for args, status, message in [
        ([str(trained_model), str(tmp_path / "big.pgm")], 3, "big.pgm: image is 64x64, expected 28x28"),
        ([str(trained_model), str(tmp_path / "absent.png")], 4, "absent.png: no such file"),
        ([str(tmp_path / "absent.npz"), str(tmp_path / "big.pgm")], 4, "absent.npz: no such file"),
    ]:
        proc = subprocess.run([sys.executable, "-m", "lenet.predict", *args], capture_output=True, text=True,
                              timeout=60, env=env())
        assert proc.returncode == status, proc.stderr
        assert proc.stderr.count("\n") == 1 and message in proc.stderr and proc.stdout == ""


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"P5", b"P2", b"P5 28 28 255\n", b"\x00\x00\x08\x03",
                               b"\x1f\x8b"]),
       body=st.binary(max_size=2000), mutate=st.integers(min_value=0, max_value=10**6))
def test_any_bytes_give_an_image_or_a_data_error(prefix, body, mutate, digits, tmp_path):
    """Random, truncated and bit-flipped files: a decoded 28x28 image or one DataError, never another exception."""
    valid = png(digits[0]) if prefix.startswith(b"\x89") else gzip.compress(b"\0\0\x08\x03" + body)
    # A PNG whose checksums are right but whose header fields and pixel stream are random: past the CRC checks.
    fields = struct.pack(">II", 28, 28) + bytes([8, mutate % 7]) + bytes([0, 0, 0]) if mutate % 2 else body[:13]
    channels = {2: 3, 4: 2, 6: 4}.get(mutate % 7, 1)
    need = 28 * (1 + 28 * channels)  # random pixel rows of exactly the declared size (when 8-bit)
    pixels = (body * (need // max(1, len(body)) + 1))[:need] if mutate % 3 else body
    well_formed = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", fields.ljust(13, b"\0"))
                   + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b""))
    candidates = [prefix + body, bytearray(valid), well_formed]
    candidates[1][mutate % len(valid)] ^= 1 << (mutate % 8)
    for i, content in enumerate(candidates + [valid[: mutate % len(valid)]]):
        path = tmp_path / f"f{i}"
        path.write_bytes(bytes(content))
        try:
            images = read_images(path)
        except DataError:
            continue
        assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)

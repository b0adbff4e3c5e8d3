"""`python -m lenet.evaluate MODEL [IMAGES LABELS]`: a saved model's accuracy, per class, and its confusion matrix.

Without IMAGES and LABELS the model is scored on the MNIST test set (found as
`lenet.train` finds it: `--data-dir`, `$MNIST_DIR`, the cache), with the same
arithmetic as the run's epoch-end evaluation, so the accuracy is the figure the
run printed for the saved parameters (the file's `test_accuracy`).  IMAGES is any
file `lenet.predict` reads (IDX, gzipped or not, or one PNG/PGM) and LABELS an IDX
label file (magic 0x00000801, gzipped or not) with one label per image.

Exit status: 0 done; 2 bad arguments, or MODEL is not a model (a checkpoint, say);
3 images or labels unusable (damaged, wrong kind, counts differ, a label above 9);
4 a file cannot be read.
"""

from __future__ import annotations

if __name__ == "__main__":  # an entry point: pin BLAS before NumPy loads, as the trainers do (same figures)
    from lenet.runtime import pin_blas_threads

    pin_blas_threads()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import zlib  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from lenet.architecture import Model  # noqa: E402
from lenet.params import Params  # noqa: E402
from lenet.status import DataError, ExitStatus, StorageError, UsageError, run_main  # noqa: E402

IDX_LABELS = b"\x00\x00\x08\x01"  # IDX magic: unsigned bytes, one dimension
CLASSES = 10


def read_labels(path: str | Path) -> np.ndarray:
    """The labels of an IDX label file (gzipped or not) as uint8 (N,); DataError unless each is 0-9."""
    from lenet.predict import MAX_INFLATED, _inflate

    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise StorageError(f"{name}: no such file") from None
    except OSError as err:
        raise StorageError(f"{name}: cannot read ({err.strerror or err})") from None
    if raw[:2] == b"\x1f\x8b":
        raw = _inflate(raw, 16 + zlib.MAX_WBITS, name)
    if raw[:4] != IDX_LABELS:
        raise DataError(f"{name}: not an IDX label file (magic 0x00000801)")
    count = int.from_bytes(raw[4:8], "big")
    if len(raw) != 8 + count or count > MAX_INFLATED:
        raise DataError(f"{name}: {len(raw)} bytes, expected {8 + count} for {count} labels")
    labels = np.frombuffer(raw, dtype=np.uint8, offset=8)
    if count and labels.max() >= CLASSES:
        raise DataError(f"{name}: label {int(labels.max())} out of range 0-9")
    return labels


def predictions(params: Params, model: type[Model], images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """The digit `model` with `params` predicts for each uint8 image (N, 28, 28): the argmax of its scores, batch
    by batch as `lenet.train.evaluate` computes them."""
    net = model()
    net.params = params
    out = [net.scores(net.forward(net.prepare(images[i : i + batch_size]))).argmax(axis=1)
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(10, 10) int64 counts: row the true digit, column the predicted one."""
    matrix = np.zeros((CLASSES, CLASSES), dtype=np.int64)
    np.add.at(matrix, (labels.astype(np.int64), predicted.astype(np.int64)), 1)
    return matrix


def summary(matrix: np.ndarray) -> dict:
    """Accuracy, per-class accuracy and the matrix, as plain numbers (the --json output)."""
    per_class = matrix.sum(axis=1)
    correct = np.diag(matrix)
    return {"count": int(matrix.sum()), "correct": int(correct.sum()),
            "accuracy": float(correct.sum() / matrix.sum()) if matrix.sum() else 0.0,
            "per_class": [{"digit": d, "count": int(per_class[d]),
                           "accuracy": float(correct[d] / per_class[d]) if per_class[d] else None}
                          for d in range(CLASSES)],
            "confusion": matrix.tolist()}


def report(s: dict) -> list[str]:
    """The human-readable tables: per class (with the digit it is most often taken for), then the matrix."""
    matrix = np.array(s["confusion"])
    lines = ["digit  images  accuracy  most often taken for"]
    for row in s["per_class"]:
        d = row["digit"]
        wrong = matrix[d].copy()
        wrong[d] = 0
        other = f"{int(wrong.argmax())} ({int(wrong.max())} times)" if wrong.max() else "-"
        acc = f"{row['accuracy']:.2%}" if row["accuracy"] is not None else "-"
        lines.append(f"{d:>5}  {row['count']:>6}  {acc:>8}  {other}")
    width = max(5, len(str(int(matrix.max()))) + 1)
    lines.append("confusion matrix (row: true digit, column: predicted digit)")
    lines.append("     " + "".join(f"{d:>{width}}" for d in range(CLASSES)))
    lines += [f"{d:>5}" + "".join(f"{int(n):>{width}}" for n in matrix[d]) for d in range(CLASSES)]
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lenet.evaluate",
        description="Score a saved model: accuracy, per-class accuracy and confusion matrix, on the MNIST test "
                    "set or on IMAGES with LABELS.",
        epilog="Exit status: 0 done, 2 usage (or not a model file), 3 images or labels unusable, 4 a file unreadable.",
    )
    parser.add_argument("model", help="the trained model, e.g. lenet5.npz")
    parser.add_argument("images", nargs="?", help="images: an IDX file (gzipped or not) or a PNG/PGM")
    parser.add_argument("labels", nargs="?", help="their labels: an IDX label file (gzipped or not)")
    parser.add_argument("--data-dir", default=None, help="directory with the MNIST files, for the test set "
                        "(default: $MNIST_DIR, else the per-user cache, downloading if needed)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from lenet.predict import read_images
    from lenet.train import file_model, load_model

    args = build_parser().parse_args(argv)
    if args.images is not None and args.labels is None:
        raise UsageError("IMAGES needs LABELS: give both, or neither for the MNIST test set")
    params, meta = load_model(args.model)
    if args.images is None:
        from lenet.data import load_mnist

        data = load_mnist(args.data_dir)
        images, labels, where = data.test_images, data.test_labels, "the MNIST test set"
    else:
        images, labels, where = read_images(args.images), read_labels(args.labels), args.images
        if len(images) != len(labels):
            raise DataError(f"{args.images} holds {len(images)} images, {args.labels} {len(labels)} labels")
    s = summary(confusion_matrix(labels, predictions(params, file_model(meta, args.model), images)))
    recorded = meta.get("test_accuracy") if args.images is None else None
    if args.json:
        print(json.dumps({"file": args.model, "model": file_model(meta, args.model).name, "data": where,
                          "recorded_test_accuracy": recorded, **s}))
        return int(ExitStatus.OK)
    said = f"; the run recorded {recorded:.2%}" if isinstance(recorded, float) else ""
    print(f"{args.model} ({file_model(meta, args.model).name}) on {where} ({s['count']} images): accuracy {s['accuracy']:.2%} "
          f"({s['correct']} correct){said}")
    print("\n".join(report(s)))
    return int(ExitStatus.OK)


if __name__ == "__main__":
    sys.exit(run_main(main, "lenet.evaluate"))

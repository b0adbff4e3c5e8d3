"""Single-process training: the numerical reference for the distributed service.

    python -m lenet.train --epochs 5 --output lenet5.npz

Each step takes the batch `epoch_batches(seed, epoch, ...)[i]`, computes summed
gradients, averages them with `mean_gradient`, and applies the optimizer at the
scheduled learning rate.  With `shards=S` the batch is cut by `shard_sizes` and the
shard sums are added in the fixed tree by `lenet.shards.unit_sums` and the linear
layers' gradients multiplied out over the batch by `mean_gradient`: exactly the
service's arithmetic, so the result is bit-identical to the coordinator run with `--shards S`.
With `--gradient-delay 1` each step's gradient is computed with the parameters before
the previous step's update (the first step's with its own), as the service does then.
"""

from __future__ import annotations

if __name__ == "__main__":  # an entry point: pin BLAS before NumPy loads (imported, it changes nothing)
    from lenet.runtime import pin_blas_threads

    pin_blas_threads()

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from lenet.best import BestEpoch  # noqa: E402
from lenet.config import (  # noqa: E402
    TrainConfig, add_training_flags, config_from_args, make_optimizer, make_schedule, recipe_warning)
from lenet.curves import write_curves  # noqa: E402
from lenet.data import (  # noqa: E402
    MNIST, epoch_batches, load_mnist, steps_per_epoch, training_subset)
from lenet.architecture import Model  # noqa: E402
from lenet.models import DEFAULT_MODEL, get_model  # noqa: E402
from lenet.params import Params  # noqa: E402
from lenet.runlog import RunLog, runlog_path  # noqa: E402
from lenet.shards import DEFAULT_SHARDS, mean_gradient, shard_sizes, summed_loss, unit_sums  # noqa: E402
from lenet.npzfile import read_npz, user_file_mode, write_npz  # noqa: E402
from lenet.output import check_output, save_final  # noqa: E402
from lenet.status import (  # noqa: E402
    ExitStatus, UsageError, finishing, ignore_stop_signals, run_main, stop_signals_raise_interrupt)


@dataclass
class EpochStats:
    epoch: int  # 1-based
    steps: int
    samples: int
    loss: float  # mean training cross-entropy over the epoch's samples
    train_accuracy: float
    test_accuracy: float
    seconds: float  # of the epoch's training: after a resume, of the resumed part only
    timed_samples: int | None = None  # the samples trained in `seconds`, when not all of `samples` were

    @property
    def samples_per_second(self) -> float:
        timed = self.samples if self.timed_samples is None else self.timed_samples
        return timed / self.seconds if self.seconds > 0 else 0.0

    def record(self) -> dict:
        """The epoch as the run log and the model's history hold it."""
        return {"epoch": self.epoch, "step": self.steps, "samples": self.samples, "loss": self.loss,
                "train_accuracy": self.train_accuracy, "test_accuracy": self.test_accuracy,
                "samples_per_second": self.samples_per_second, "seconds": self.seconds}


@dataclass
class TrainResult:
    params: Params
    history: list[EpochStats] = field(default_factory=list)
    steps: int = 0


def evaluate(params: Params, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000,
             model: type[Model] | None = None) -> float:
    """Accuracy of `params` of `model` (default: the default model) on uint8 images (N, 28, 28) with labels (N,)."""
    net = (model or get_model(DEFAULT_MODEL))()
    net.params = params
    correct = 0
    for i in range(0, len(labels), batch_size):
        scores = net.scores(net.forward(net.prepare(images[i : i + batch_size])))
        correct += int((scores.argmax(axis=1) == labels[i : i + batch_size]).sum())
    return correct / len(labels)


def save_model(path: str | Path, params: Params, meta: dict, model: type[Model] | None = None) -> None:
    """The model file: parameters under their `Model.params` names, plus metadata naming the model;
    readable like any user file."""
    model = model or get_model(DEFAULT_MODEL)
    write_npz(path, {k: params[k] for k in model.PARAM_SHAPES},
              {"architecture": model.DESCRIPTION, "model": model.name, **meta}, mode=user_file_mode())


def file_model(meta: dict, origin: str, expected: str | None = None) -> type[Model]:
    """The model a file's metadata names (files from before models were named hold the default one);
    ValueError if it is unknown, or not `expected` when that is given."""
    name = meta.get("model", DEFAULT_MODEL)
    if expected is not None and name != expected:
        raise ValueError(f"{origin} holds {name!r:.40}, this run trains {expected}")
    try:
        return get_model(name)
    except ValueError as err:
        raise ValueError(f"{origin}: {err}") from None


def load_model(path: str | Path, expected: str | None = None) -> tuple[Params, dict]:
    """Parameters and metadata of a model file, checked against the model it names (`meta["model"]`);
    UsageError, one line, if they do not fit it or it is not `expected`, or if the file is not a model (a
    checkpoint, say)."""
    arrays, meta = read_npz(path)
    if meta.get("kind") == "lenet5-checkpoint" or any(name.startswith("params/") for name in arrays):
        raise UsageError(f"{path}: this is a checkpoint, not a model: give the model file the run saved "
                         "(its --output, e.g. lenet5.npz)")
    try:
        return file_model(meta, str(path), expected).check_params(arrays, str(path)), meta
    except ValueError as err:
        raise UsageError(str(err)) from None


def train(config: TrainConfig, data: MNIST, log: Callable[[str], None] = print,
          shards: int = DEFAULT_SHARDS, runlog: RunLog | None = None, best: BestEpoch | None = None) -> TrainResult:
    """Train from scratch; one log line per epoch.  `shards`: see the module docstring.

    `runlog` gets every step and epoch; `best` is offered the parameters at every epoch end.
    """
    data = training_subset(data, config.train_subset)
    model = get_model(config.model)(seed=config.seed)
    optimizer = make_optimizer(config, model.params)
    n = len(data.train_labels)
    schedule = make_schedule(config, steps_per_epoch(n, config.batch_size))
    result = TrainResult(params=model.params)
    # With a gradient delay, the parameters each step's gradient is computed with: the first step's own.
    lagged = {k: v.copy() for k, v in model.params.items()} if config.gradient_delay else None
    for epoch in range(config.epochs):
        start = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        for idx in epoch_batches(config.seed, epoch, n, config.batch_size):
            if config.max_steps is not None and result.steps >= config.max_steps:
                break
            sizes = shard_sizes(len(idx), shards)
            current = model.params
            if lagged is not None:  # --gradient-delay 1: the gradient of the previous step's parameters
                model.params = lagged
            sums = unit_sums(model, data.train_images[idx], data.train_labels[idx], sizes)
            model.params = current
            if lagged is not None:
                lagged = {k: v.copy() for k, v in current.items()}  # the next step's, before this update
            whole = (0, len(sizes))  # one unit: the whole batch
            lr = schedule(result.steps)
            optimizer.step(model.params, mean_gradient({whole: sums}, len(sizes), len(idx)), lr)
            result.steps += 1
            step_loss = summed_loss([sums])  # a step's loss: the same float as the service's
            loss_sum += step_loss
            if runlog is not None:
                runlog.step(result.steps, step_loss / len(idx), lr)
            correct += sums.correct
            seen += len(idx)
        if seen == 0:
            break
        seconds = time.perf_counter() - start
        test_acc = evaluate(model.params, data.test_images, data.test_labels, model=type(model))
        stats = EpochStats(epoch + 1, result.steps, seen, loss_sum / seen, correct / seen, test_acc, seconds)
        result.history.append(stats)
        if runlog is not None:
            runlog.epoch(stats.record())
        if best is not None:
            best.offer(stats.epoch, stats.steps, test_acc, model.params)
        log(
            f"epoch {stats.epoch}/{config.epochs}: loss {stats.loss:.4f}  train acc {stats.train_accuracy:.2%}  "
            f"test acc {stats.test_accuracy:.2%}  {stats.samples_per_second:,.0f} samples/s  {seconds:.1f} s"
        )
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lenet.train", description="Train LeNet-5 (or another --model) on MNIST in one process "
        "(the reference trainer)."
    )
    add_training_flags(parser)
    parser.add_argument("--data-dir", default=None, help="directory with the MNIST files (default: $MNIST_DIR, "
                        "else the per-user cache, downloading if needed)")
    parser.add_argument("--output", default="lenet5.npz", help="where to save the model (default: lenet5.npz)")
    parser.add_argument("--shards", type=int, default=DEFAULT_SHARDS,
                        help="sum each batch's gradient over this many shards, as the coordinator's --shards does: "
                        f"the result is then bit-identical to the service's (default: {DEFAULT_SHARDS}, the "
                        "coordinator's default)")
    parser.add_argument("--keep-best", action="store_true",
                        help="save the parameters of the epoch with the best test accuracy, not the last epoch's")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from lenet.runtime import tune_malloc

    try:
        args = build_parser().parse_args(argv)
        config = config_from_args(args)
        if args.shards < 1:
            raise ValueError(f"--shards must be >= 1, got {args.shards}")
    except ValueError as err:
        raise UsageError(str(err)) from None
    check_output(args.output)  # before the training, not after it
    if (warning := recipe_warning(config)) is not None:
        print(f"warning: {warning}", file=sys.stderr)
    tune_malloc()
    stop_signals_raise_interrupt()
    data = load_mnist(args.data_dir)
    start = time.perf_counter()
    n_train = len(training_subset(data, config.train_subset).train_labels)
    runlog = RunLog(runlog_path(args.output), steps_per_epoch(n_train, config.batch_size), config.to_dict())
    best = BestEpoch() if args.keep_best else None
    try:
        result = train(config, data, shards=args.shards, runlog=runlog, best=best)
        if not result.history:
            raise UsageError("no training step was run")
        last = result.history[-1]
        kept = {"epoch": last.epoch, "step": result.steps, "test_accuracy": last.test_accuracy}
        params = result.params
        if best is not None and best.params is not None:
            params, kept = best.params, {"epoch": best.epoch, "step": best.step, "test_accuracy": best.test_accuracy,
                                         "best_epoch": best.epoch}
            runlog.best(best.epoch, best.step, best.test_accuracy)
            print(best.summary(last.epoch))
        meta = {**kept, "data_checksums": data.checksums, "config": config.to_dict(),
                "history": [h.record() for h in result.history]}
        save_final(args.output, lambda path: save_model(path, params, meta, get_model(config.model)))
        runlog.end(result.steps, kept["test_accuracy"], time.perf_counter() - start)
    finally:
        runlog.close()
    ignore_stop_signals()  # the model is saved: a stop from here on must not turn the run into a failure
    curves = write_curves(args.output, [h.record() for h in result.history], runlog.step_records(),
                          f"{get_model(config.model).TITLE} on MNIST")
    print(f"done: test accuracy {kept['test_accuracy']:.2%} after {last.epoch} epochs, {result.steps} steps, "
          f"{time.perf_counter() - start:.1f} s; model saved to {args.output}, curves to {curves}, "
          f"run log to {runlog.path}")
    return int(ExitStatus.OK)


if __name__ == "__main__":
    sys.exit(finishing(run_main(main, "lenet.train")))

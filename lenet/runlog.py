"""A run's log for people and tools: `<output stem>.jsonl` next to the model, one JSON object per line.

Both trainers write it (`python -m lenet.train`, `python -m coordinator`).  Every
record has a `kind`:

  - `start`: the run begins (`step` 0) or resumes (`resumed`: true, `step` the
    checkpoint's), with its `config` and `steps_per_epoch`;
  - `step`: `loss` is the mean training loss of the `steps` steps that end at
    `step` (about 20 such records per epoch, `STEP_RECORDS_PER_EPOCH`), `epoch`
    the fractional epoch there, `lr` the learning rate of its last step;
  - `epoch`: a finished epoch: `epoch`, `step`, `loss`, `train_accuracy`,
    `test_accuracy`, `samples`, `samples_per_second`, `seconds` (after a resume,
    `seconds` and `samples_per_second` cover the resumed part only);
  - `best`: `--keep-best` saved the parameters of this `epoch` (`test_accuracy`);
  - `end`: the run finished (`step`, `test_accuracy` of the saved model, `seconds`).

On resume from step S the records after S (written by the interrupted run past
its checkpoint), and those of epochs the checkpoint had not recorded yet (the
coordinator records an epoch once its test accuracy is computed, a few steps after
its end; the resumed run records it again), are dropped first, so the file reads as
one run with no epoch twice.  Epoch records may therefore follow the first step
records of the next epoch.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from lenet.npzfile import write_bytes_atomic
from lenet.status import StorageError

log = logging.getLogger("lenet")

STEP_RECORDS_PER_EPOCH = 20
EPOCH_FIELDS = ("epoch", "step", "loss", "train_accuracy", "test_accuracy", "samples", "samples_per_second",
                "seconds")


def runlog_path(model_path: str | os.PathLike) -> Path:
    """Where a model's run log goes: `lenet5.npz` -> `lenet5.jsonl`."""
    return Path(model_path).with_suffix(".jsonl")


def step_interval(steps_per_epoch: int) -> int:
    """Steps per `step` record: about STEP_RECORDS_PER_EPOCH records an epoch, at least one step each."""
    return max(1, steps_per_epoch // STEP_RECORDS_PER_EPOCH)


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a run log; a line that is not a JSON object (a write cut short by a crash) is skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as err:
        raise StorageError(f"{path}: cannot read the run log ({err.strerror or err})") from None
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("kind"), str):
            records.append(record)
    return records


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: such a number (a diverging loss) is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunLog:
    """The run log of one run, opened fresh or for a resume from `resume_step` with `resume_epochs` epochs
    recorded (the checkpoint's history; an epoch after those is recorded again by the resumed run); the
    records are also kept in `records`."""

    def __init__(self, path: str | os.PathLike, steps_per_epoch: int, config: Mapping[str, Any],
                 resume_step: int | None = None, resume_epochs: int = 0):
        self.path, self.steps_per_epoch = Path(path), steps_per_epoch
        self.every = step_interval(steps_per_epoch)
        kept: list[dict[str, Any]] = []
        if resume_step is not None:
            old = read_records(self.path)
            # `best` and `end` were the interrupted or shorter run's last word: no longer true of a run that goes on.
            kept = [r for r in old if isinstance(r.get("step"), int) and r["step"] <= resume_step
                    and r["kind"] not in ("best", "end")
                    and (r["kind"] != "epoch" or (isinstance(r.get("epoch"), int) and r["epoch"] <= resume_epochs))]
            if len(kept) < len(old):
                log.info("run log %s: dropped %d records the checkpoint (step %d) does not hold", self.path,
                         len(old) - len(kept), resume_step)
        # Rewritten whole (atomically), then appended to: the file never holds another run's tail.
        write_bytes_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        self.records: list[dict[str, Any]] = kept
        self._file: IO[str] | None = None
        try:
            self._file = open(self.path, "a", encoding="utf-8")
        except OSError as err:
            raise StorageError(f"{self.path}: cannot write the run log ({err.strerror or err})") from None
        self._loss_sum, self._steps = 0.0, 0  # the steps since the last `step` record
        self._last_step, self._lr = resume_step or 0, 0.0
        self._recorded_to = resume_step or 0  # steps up to here are in the log
        self._epochs = {r["epoch"] for r in kept if r["kind"] == "epoch"}
        self.write({"kind": "start", "step": resume_step or 0, "resumed": resume_step is not None,
                    "steps_per_epoch": steps_per_epoch, "config": dict(config)})

    def write(self, record: Mapping[str, Any]) -> None:
        """One record, flushed: a tool tailing the file sees it now."""
        record = {k: _clean(v) for k, v in record.items()}
        self.records.append(record)
        if self._file is None:
            return
        try:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as err:  # a full disk must not stop the training: said once, then the log is memory-only
            log.error("run log %s: write failed, no more records go to it: %s", self.path, err.strerror or err)
            self._file.close()
            self._file = None

    def step(self, step: int, loss: float, lr: float) -> None:
        """Step `step` (steps done, this one included) had mean loss `loss` at learning rate `lr`.

        A step already recorded is skipped: the coordinator's rewind (a convicted worker's answers undone)
        does steps again, bit for bit the same, and the log holds each once.
        """
        if step <= self._recorded_to:
            self._loss_sum, self._steps = 0.0, 0
            return
        self._loss_sum += loss
        self._steps += 1
        self._last_step, self._lr = step, lr
        if step % self.every == 0 or step % self.steps_per_epoch == 0:
            self._flush_steps()

    def _flush_steps(self) -> None:
        if self._steps:
            self.write({"kind": "step", "step": self._last_step,
                        "epoch": round(self._last_step / self.steps_per_epoch, 6), "steps": self._steps,
                        "loss": self._loss_sum / self._steps, "lr": self._lr})
            self._recorded_to = self._last_step
        self._loss_sum, self._steps = 0.0, 0

    def epoch(self, stats: Mapping[str, Any]) -> None:
        """A finished epoch, with EPOCH_FIELDS; one already recorded (done again after a rewind) is skipped."""
        if stats["epoch"] in self._epochs:
            return
        self._epochs.add(stats["epoch"])
        self.write({"kind": "epoch", **{k: stats[k] for k in EPOCH_FIELDS}})

    def best(self, epoch: int, step: int, test_accuracy: float) -> None:
        self.write({"kind": "best", "epoch": epoch, "step": step, "test_accuracy": test_accuracy})

    def end(self, step: int, test_accuracy: float, seconds: float) -> None:
        self._flush_steps()
        self.write({"kind": "end", "step": step, "test_accuracy": test_accuracy, "seconds": seconds})

    def close(self) -> None:
        """Write the steps not yet recorded (a stopped run's) and close the file."""
        self._flush_steps()
        if self._file is not None:
            self._file.close()
            self._file = None

    def step_records(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["kind"] == "step"]

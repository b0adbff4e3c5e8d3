"""Checkpoints of a training run: what one holds, how a run is restored from it, where they are kept.

A checkpoint is `ckpt-<step>.npz` in the checkpoint directory, written through
`lenet.npzfile` (temp file, fsync, rename, directory fsync, SHA-256 inside).  It
holds the parameters (`params/<name>`), the optimizer state (`optim/<key>`) and,
as metadata, the step, the running epoch's sums, the history, the configuration,
the shard count and the data checksums (`snapshot`).  The shuffle needs no RNG
state: each epoch's order is a pure function of (seed, epoch).  `restore` refuses
a checkpoint made with other settings or other data.  The newest few are kept.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.metrics import Metrics
from coordinator.training import RunState, Training
from lenet.config import TrainConfig
from lenet.model import check_params
from lenet.npzfile import read_npz, write_npz
from lenet.status import StorageError, UsageError

log = logging.getLogger("coordinator")

_NAME = re.compile(r"^ckpt-(\d{9})\.npz$")
KEEP = 3


@dataclass
class Checkpoint:
    step: int
    params: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- the schema


def snapshot(run: Training) -> Checkpoint:
    """Everything needed to continue `run` after its last completed step."""
    st = run.state
    meta = {"config": run.config.to_dict(), "num_shards": run.num_shards, "data_checksums": run.data.checksums,
            "run": {"epoch_loss_sum": st.epoch_loss_sum, "epoch_correct": st.epoch_correct,
                    "epoch_samples": st.epoch_samples, "history": st.history}}
    return Checkpoint(st.step, run.params, run.optimizer.state_dict(), meta)


def restore(run: Training, c: Checkpoint) -> None:
    """Continue `run` from a checkpoint of the same configuration, shard count and data.

    UsageError if it was made with other settings (the user can pass the same
    flags), StorageError if its arrays do not fit the model.
    """
    saved = TrainConfig.from_dict(c.meta.get("config", {}))
    ours = run.config.to_dict()
    diffs = [f"{k}={v!r} (this run: {ours[k]!r})" for k, v in saved.to_dict().items()
             if k != "max_steps" and ours.get(k) != v]
    if diffs:
        raise UsageError("checkpoint was made with " + ", ".join(diffs) + ": pass the same flags to resume")
    if c.meta.get("num_shards") != run.num_shards:
        raise UsageError(f"checkpoint was made with --shards {c.meta.get('num_shards')}, this run has {run.num_shards}")
    if c.meta.get("data_checksums") != run.data.checksums:
        raise UsageError("checkpoint was made with different MNIST files (checksums differ)")
    try:
        run.model.params = dict(check_params(c.params, "checkpoint"))
        run.optimizer.load_state_dict(c.optimizer)
    except ValueError as err:
        raise StorageError(f"checkpoint does not fit this model: {err}") from None
    saved_run = c.meta.get("run", {})
    run.state = RunState(step=c.step, epoch_loss_sum=saved_run.get("epoch_loss_sum", 0.0),
                         epoch_correct=saved_run.get("epoch_correct", 0),
                         epoch_samples=saved_run.get("epoch_samples", 0), history=list(saved_run.get("history", [])))


class Checkpointer:
    """Writes a run's checkpoints into `directory` (None: nowhere); a failed write is logged and counted."""

    def __init__(self, directory: Path | None, metrics: Metrics):
        self.directory, self.metrics = directory, metrics

    def save(self, run: Training) -> Path | None:
        """Checkpoint the last completed step; None if there is no directory or the write failed."""
        if self.directory is None:
            return None
        start = time.monotonic()
        try:
            path = save(self.directory, snapshot(run))
        except StorageError as err:
            self.metrics.checkpoint_failures.inc()
            log.error("checkpoint at step %d failed, training continues (previous checkpoints intact): %s",
                      run.state.step, err)
            return None
        self.metrics.checkpoint_duration.observe(time.monotonic() - start)
        return path


# --------------------------------------------------------------------------- files


def check_writable(directory: Path) -> None:
    """Fail at start, not at the first checkpoint, if `directory` cannot hold checkpoints."""
    probe = directory / f".write-test-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise StorageError(f"checkpoint directory {directory} is not writable: {err.strerror or err}") from None


def path_for(directory: Path, step: int) -> Path:
    return directory / f"ckpt-{step:09d}.npz"


def save(directory: Path, ckpt: Checkpoint) -> Path:
    """Write atomically, then delete all but the newest KEEP checkpoints."""
    arrays = {f"params/{k}": v for k, v in ckpt.params.items()}
    arrays.update({f"optim/{k}": v for k, v in ckpt.optimizer.items()})
    path = path_for(directory, ckpt.step)
    write_npz(path, arrays, {"kind": "lenet5-checkpoint", "step": ckpt.step, **ckpt.meta})
    for old in list_checkpoints(directory)[KEEP:]:
        try:
            old.unlink()
        except OSError as err:
            log.warning("could not delete old checkpoint %s: %s", old, err.strerror)
    return path


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files, newest (highest step) first."""
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if _NAME.match(p.name)), reverse=True)


def load(path: Path) -> Checkpoint:
    arrays, meta = read_npz(path)
    if meta.get("kind") != "lenet5-checkpoint" or not isinstance(meta.get("step"), int):
        raise StorageError(f"{path}: not a training checkpoint")
    params = {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}
    optimizer = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}
    meta = dict(meta)
    step = meta.pop("step")
    meta.pop("kind")
    return Checkpoint(step=step, params=params, optimizer=optimizer, meta=meta)


def load_latest(directory: Path) -> Checkpoint | None:
    """The newest checkpoint that reads back intact; damaged ones are logged and skipped."""
    for path in list_checkpoints(directory):
        try:
            ckpt = load(path)
        except StorageError as err:
            aside = path.with_name(path.name + ".damaged")
            try:
                path.rename(aside)  # keep it for inspection, out of the way of newer checkpoints
            except OSError:
                aside = path
            log.warning("skipping damaged checkpoint (kept as %s): %s", aside.name, err)
            continue
        log.info("resuming from %s (step %d)", path, ckpt.step)
        return ckpt
    return None

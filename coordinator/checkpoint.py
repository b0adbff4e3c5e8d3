"""Checkpoints of a training run: write atomically, find the newest intact one.

A checkpoint is `ckpt-<step>.npz` in the checkpoint directory, written through
`lenet.npzfile` (temp file, fsync, rename, directory fsync, SHA-256 inside).  It
holds the parameters (`params/<name>`), the optimizer state (`optim/<key>`) and,
as metadata, the step, the running epoch's sums, the history, the configuration,
the shard count and the data checksums.  The shuffle needs no RNG state: each
epoch's order is a pure function of (seed, epoch).  The newest few are kept.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lenet.npzfile import read_npz, write_npz
from lenet.status import StorageError

log = logging.getLogger("coordinator")

_NAME = re.compile(r"^ckpt-(\d{9})\.npz$")
KEEP = 3


@dataclass
class Checkpoint:
    step: int
    params: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)


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

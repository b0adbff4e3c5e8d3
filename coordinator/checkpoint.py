"""Checkpoints of a training run: what one holds, how a run is restored from it, where they are kept.

A checkpoint is `ckpt-<step>.npz` in the checkpoint directory, written through
`lenet.npzfile` (temp file, fsync, rename, directory fsync, SHA-256 inside, and
an HMAC when a checkpoint key is given).  It holds the parameters
(`params/<name>`), the optimizer state (`optim/<key>`) and, as metadata, the
step, the running epoch's sums, the history, the configuration (its `model` names
the architecture: lenet.models), the shard count and the data checksums
(`snapshot`).  The shuffle needs no RNG state: each
epoch's order is a pure function of (seed, epoch).  `restore` refuses a
checkpoint of another model, or made with other settings or other data, in one
line.  The newest few are kept.

Loading trusts nothing in the file: the array names, shapes and dtypes are
checked against a registered model's and its optimizer's before any data is read,
the metadata's structure and types are checked (and the arrays must be the model's
that the configuration names), and the step must be >= 0 and every number finite.
Checkpoints written before models were named hold LeNet-5 ("lenet5").  Any
failure is one StorageError; `load_latest` sets such a file aside and falls back
to the next older one.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.metrics import Metrics
from coordinator.training import RunState, Training
from lenet.config import TrainConfig
from lenet.architecture import Model
from lenet.models import DEFAULT_MODEL, MODELS, get_model
from lenet.npzfile import Layout, read_npz, write_npz
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
    """Continue `run` from a checkpoint of the same configuration and data.

    UsageError if it was made with other settings (the user can pass the same
    flags), StorageError if its arrays do not fit the model.  The shard count may
    differ: the caller chose it (`coordinator.__main__.shard_count`), and the run
    goes on with `run.num_shards`.
    """
    saved = TrainConfig.from_dict(c.meta.get("config", {}))
    if saved.model != run.config.model:
        raise UsageError(f"checkpoint holds {saved.model}, this run trains {run.config.model} (--model)")
    ours = run.config.to_dict()
    diffs = [f"{k}={v!r} (this run: {ours[k]!r})" for k, v in saved.to_dict().items()
             if k != "max_steps" and ours.get(k) != v]
    if diffs:
        raise UsageError("checkpoint was made with " + ", ".join(diffs) + ": pass the same flags to resume")
    if c.meta.get("data_checksums") != run.data.checksums:
        raise UsageError("checkpoint was made with different MNIST files (checksums differ)")
    try:
        run.model.params = dict(run.model.check_params(c.params, "checkpoint"))
        run.optimizer.load_state_dict(c.optimizer)
    except ValueError as err:
        raise StorageError(f"checkpoint does not fit this model: {err}") from None
    saved_run = c.meta.get("run", {})
    run.state = RunState(step=c.step, epoch_loss_sum=saved_run.get("epoch_loss_sum", 0.0),
                         epoch_correct=saved_run.get("epoch_correct", 0),
                         epoch_samples=saved_run.get("epoch_samples", 0), history=list(saved_run.get("history", [])))


class Checkpointer:
    """Writes a run's checkpoints into `directory` (None: nowhere), signed with `key` if given.

    A failed write is logged and counted, and training goes on.
    """

    def __init__(self, directory: Path | None, metrics: Metrics, key: bytes | None = None):
        self.directory, self.metrics, self.key = directory, metrics, key

    def save(self, run: Training) -> Path | None:
        """Checkpoint the last completed step; None if there is no directory or the write failed."""
        if self.directory is None:
            return None
        start = time.monotonic()
        try:
            path = save(self.directory, snapshot(run), key=self.key)
        except StorageError as err:
            self.metrics.checkpoint_failures.inc()
            log.error("checkpoint at step %d failed, training continues (previous checkpoints intact): %s",
                      run.state.step, err)
            return None
        self.metrics.checkpoint_duration.observe(time.monotonic() - start)
        return path

    def discard_after(self, step: int) -> int:
        """Delete the checkpoints of steps after `step` (they hold a convicted liar's answers: a resume must
        not start from one); returns how many went."""
        gone = 0
        for path in list_checkpoints(self.directory) if self.directory is not None else []:
            if int(_NAME.match(path.name).group(1)) > step:  # type: ignore[union-attr]  # listed by _NAME
                try:
                    path.unlink()
                    gone += 1
                except OSError as err:
                    log.warning("could not delete checkpoint %s holding a convicted liar's answers: %s", path,
                                err.strerror)
        return gone


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


def save(directory: Path, ckpt: Checkpoint, key: bytes | None = None) -> Path:
    """Write atomically (signed with `key`, if given), then delete all but the newest KEEP checkpoints."""
    arrays = {f"params/{k}": v for k, v in ckpt.params.items()}
    arrays.update({f"optim/{k}": v for k, v in ckpt.optimizer.items()})
    path = path_for(directory, ckpt.step)
    write_npz(path, arrays, {"kind": "lenet5-checkpoint", "step": ckpt.step, **ckpt.meta}, key=key)
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


_FLOAT32 = np.dtype(np.float32)


def model_layout_problem(layout: Layout, model: type[Model]) -> tuple[int, str] | None:
    """Why these arrays (name -> (shape, dtype), from the headers) are not a checkpoint of `model`, as
    (how many arrays are wrong, why), or None.

    Parameters are float32 in the model's PARAM_SHAPES; the optimizer state is SGD's
    (`velocity/<name>`) or Adam's (`m/<name>`, `v/<name>`, int64 scalar `t`).
    """
    shapes = model.PARAM_SHAPES
    expected = {f"params/{n}": (shape, _FLOAT32) for n, shape in shapes.items()}
    sgd = {f"optim/velocity/{n}": (shape, _FLOAT32) for n, shape in shapes.items()}
    adam = {f"optim/{m}/{n}": (shape, _FLOAT32) for m in ("m", "v") for n, shape in shapes.items()}
    adam["optim/t"] = ((), np.dtype(np.int64))
    got = {name: (tuple(shape), np.dtype(dtype)) for name, (shape, dtype) in layout.items()}
    if got in ({**expected, **sgd}, {**expected, **adam}):
        return None
    closest = {**expected, **(adam if "optim/t" in got else sgd)}
    wrong = sorted(set(got) ^ set(closest)) + sorted(n for n in set(got) & set(closest) if got[n] != closest[n])
    return len(wrong), (f"arrays do not match a {model.TITLE} checkpoint: {', '.join(wrong[:4])}"
                        f"{' ...' if len(wrong) > 4 else ''}")


def layout_problem(layout: Layout) -> str | None:
    """Why these arrays are not a checkpoint of any registered model (said of the closest one), or None."""
    problems = []
    for model in MODELS.values():
        problem = model_layout_problem(layout, model)
        if problem is None:
            return None
        problems.append(problem)
    return min(problems, key=lambda p: p[0])[1]  # the first model's on a tie: the default one


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _config_problem(config: Any) -> str | None:
    if not isinstance(config, dict):
        return "config is not an object"
    kinds = {"int": _is_int, "float": _is_number, "str": lambda v: isinstance(v, str),
             "bool": lambda v: isinstance(v, bool)}
    for f in fields(TrainConfig):
        if f.name not in config:
            return f"config lacks {f.name}"
        value, types = config[f.name], [t.strip() for t in str(f.type).split("|")]
        if not ((value is None and "None" in types) or any(kinds[t](value) for t in types if t in kinds)):
            return f"config {f.name} is {value!r}"
    try:
        TrainConfig.from_dict(config)
    except (ValueError, TypeError) as err:
        return f"config: {err}"
    return None


def meta_problem(meta: dict[str, Any]) -> str | None:
    """Why the metadata is not that of a training checkpoint (structure and types), or None."""
    if meta.get("kind") != "lenet5-checkpoint":
        return "not a training checkpoint"
    if not _is_int(meta.get("step")) or meta["step"] < 0:
        return f"step {meta.get('step')!r} is not a count"
    problem = _config_problem(meta.get("config"))
    if problem:
        return problem
    if not _is_int(meta.get("num_shards")) or meta["num_shards"] < 1:
        return f"num_shards {meta.get('num_shards')!r} is not a positive count"
    checksums = meta.get("data_checksums")
    if not isinstance(checksums, dict) or not all(isinstance(v, str) for v in checksums.values()):
        return "data_checksums is not an object of strings"
    run = meta.get("run")
    if not isinstance(run, dict):
        return "run is not an object"
    if not _is_number(run.get("epoch_loss_sum")):
        return f"run epoch_loss_sum {run.get('epoch_loss_sum')!r} is not a finite number"
    for count in ("epoch_correct", "epoch_samples"):
        if not _is_int(run.get(count)) or run[count] < 0:
            return f"run {count} {run.get(count)!r} is not a count"
    history = run.get("history")
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        return "run history is not a list of objects"
    return None


def _arrays_problem(arrays: dict[str, np.ndarray], name: str) -> str | None:
    """Why the arrays are not those of the model the configuration names, or None."""
    layout = {k: (a.shape, a.dtype) for k, a in arrays.items()}
    problem = model_layout_problem(layout, get_model(name))  # a known name: meta_problem checked the config
    return None if problem is None else f"the config names {name}, but {problem[1]}"


def load(path: Path, key: bytes | None = None) -> Checkpoint:
    """A checkpoint, checked through (see the module doc); with `key`, it must carry a valid HMAC."""
    arrays, meta = read_npz(path, key=key, expect=layout_problem)
    if isinstance(meta.get("config"), dict):
        meta["config"].setdefault("model", DEFAULT_MODEL)  # written before models were named
    problem = meta_problem(meta) or _arrays_problem(arrays, meta["config"]["model"])
    if problem:
        raise StorageError(f"{path}: {problem}")
    for name, a in arrays.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise StorageError(f"{path}: {name} holds NaN or infinite values")
        if a.dtype.kind in "iu" and (a < 0).any():
            raise StorageError(f"{path}: {name} is negative")
    params = {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}
    optimizer = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}
    meta = dict(meta)
    step = meta.pop("step")
    meta.pop("kind")
    return Checkpoint(step=step, params=params, optimizer=optimizer, meta=meta)


def load_latest(directory: Path, key: bytes | None = None) -> Checkpoint | None:
    """The newest checkpoint that reads back intact (and signed, with `key`); others are set aside with a warning."""
    for path in list_checkpoints(directory):
        try:
            ckpt = load(path, key)
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

"""Checkpoints of a training run: what one holds, how a run is restored from it, where they are kept.

A checkpoint is `ckpt-<run>-<step>.npz` in the checkpoint directory, `<run>` the
run's identity (coordinator/runs.py), written through `lenet.npzfile` (temp file,
fsync, rename, directory fsync, SHA-256 inside, and an HMAC when a checkpoint key
is given).  It holds the parameters (`params/<name>`), the optimizer state
(`optim/<key>`), with `--gradient-delay 1` the parameters the next step's gradient
is computed with (`lagged/<name>`) and, as metadata, the step, the running epoch's sums, the
history, the configuration (its `model` names the architecture: lenet.models),
the shard count, the data checksums and the run's identity (`lineage`).  The
shuffle needs no RNG state: each epoch's order is a pure function of (seed,
epoch).  `restore` refuses a checkpoint of another model, or made with other
settings or other data, in one line.  A run keeps its newest few and never
deletes a file of another run, nor one of its own ahead of the step it writes.
Files named `ckpt-<step>.npz` (before runs had identities) are read, never deleted.

Loading trusts nothing in the file: only regular files are opened; the array
names, shapes and dtypes are checked against a registered model's and its
optimizer's before any data is read (and the arrays must be the model's that the
configuration names); the metadata is checked as a peer's message is (every
field's type and range, every history entry), the step must be >= 0 and every
number finite, and the running sums must agree with the step.  Checkpoints
written before models were named hold LeNet-5 ("lenet5").  Any failure is one
StorageError; `candidates` sets such a file aside (`*.damaged`) with one line and
falls back to the run's next older checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from coordinator import protocol as P
from coordinator import runs
from coordinator.metrics import Metrics
from coordinator.ratelimit import RateLimitedLog
from coordinator.training import RunState, Training
from lenet.config import TrainConfig
from lenet.architecture import Model
from lenet.models import DEFAULT_MODEL, MODELS, get_model
from lenet.npzfile import Layout, read_npz, write_npz
from lenet.status import StorageError, UsageError

log = logging.getLogger("coordinator")

_NAME = re.compile(r"^ckpt-(?:([0-9a-f]{12})-)?(\d{9})\.npz$")  # the run's identity is absent in older files
KEEP = 3
MAX_HISTORY_EXTRA = 16  # keys an epoch's record may hold beyond EPOCH_FIELDS (numbers or short strings)
EPOCH_FIELDS = ("epoch", "samples", "loss", "train_accuracy", "test_accuracy")
RETRY_EVERY = 30.0  # seconds between attempts while checkpoint writes fail (a full disk)


@dataclass
class Checkpoint:
    step: int
    params: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)
    lagged: dict[str, np.ndarray] | None = None  # with a gradient delay: `Training.gradient_params`


# --------------------------------------------------------------------------- the schema


def snapshot(run: Training, identity: runs.RunIdentity) -> Checkpoint:
    """Everything needed to continue `run`, of `identity`, after its last completed step."""
    st = run.state
    meta = {"config": run.config.to_dict(), "num_shards": run.num_shards, "data_checksums": run.data.checksums,
            "lineage": identity.to_meta(),
            "run": {"epoch_loss_sum": st.epoch_loss_sum, "epoch_correct": st.epoch_correct,
                    "epoch_samples": st.epoch_samples, "history": st.history}}
    return Checkpoint(st.step, run.params, run.optimizer.state_dict(), meta,
                      run.gradient_params if run.pipelined else None)


def restore(run: Training, c: Checkpoint) -> None:
    """Continue `run` from a checkpoint of the same lineage (`runs.choose` picked it) and data.

    The epoch count may differ (an extended run: the schedule is `run.config`'s from
    here), and so may the shard count (the caller chose it,
    `coordinator.__main__.shard_count`).  UsageError if it was made with other
    settings (the user can pass the same flags), StorageError if its arrays do not
    fit the model.
    """
    saved = TrainConfig.from_dict(c.meta.get("config", {}))
    if saved.model != run.config.model:
        raise UsageError(f"checkpoint holds {saved.model}, this run trains {run.config.model} (--model)")
    ours = run.config.to_dict()
    diffs = [f"{k}={v!r} (this run: {ours[k]!r})" for k, v in saved.to_dict().items()
             if k not in runs.IGNORED + runs.EXTENDABLE and ours.get(k) != v]
    if diffs:
        raise UsageError("checkpoint was made with " + ", ".join(diffs) + ": pass the same flags to resume")
    if c.meta.get("data_checksums") != run.data.checksums:
        raise UsageError("checkpoint was made with different MNIST files (checksums differ)")
    if c.step > run.config.epochs * run.steps_per_epoch:
        raise UsageError(f"checkpoint is at step {c.step}, beyond the {run.config.epochs} epochs asked for")
    try:
        run.model.params = dict(run.model.check_params(c.params, "checkpoint"))
        run.optimizer.load_state_dict(c.optimizer)
        run.lagged = dict(run.model.check_params(c.lagged, "checkpoint")) if c.lagged is not None else None
    except ValueError as err:
        raise StorageError(f"checkpoint does not fit this model: {err}") from None
    saved_run = c.meta.get("run", {})
    run.state = RunState(step=c.step, epoch_loss_sum=saved_run.get("epoch_loss_sum", 0.0),
                         epoch_correct=saved_run.get("epoch_correct", 0),
                         epoch_samples=saved_run.get("epoch_samples", 0), history=list(saved_run.get("history", [])))


class Checkpointer:
    """Writes the checkpoints of run `identity` into `directory` (None: nowhere), signed with `key` if given.

    A failed write (a full disk, say) is counted, and training goes on; while writes
    fail, the newest good checkpoint falls behind the run, so the log says by how
    much (one line per `log_every` seconds at most, however often it fails) and
    `retry_due` asks for another try every `retry_every` seconds, not only at the
    next scheduled checkpoint.  The first success after failures says so.
    """

    def __init__(self, directory: Path | None, metrics: Metrics, identity: runs.RunIdentity,
                 key: bytes | None = None, retry_every: float | None = None, log_every: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.directory, self.metrics, self.identity, self.key = directory, metrics, identity, key
        self.retry_every = RETRY_EVERY if retry_every is None else retry_every
        self.clock = clock
        self.newest_step: int | None = None  # of the newest checkpoint this run wrote
        self.failures = 0  # in a row
        self._retry_at: float | None = None
        self._limited = RateLimitedLog(interval=log_every)

    def retry_due(self) -> bool:
        """True when the last write failed and `retry_every` seconds have passed since."""
        return self._retry_at is not None and self.clock() >= self._retry_at

    def save(self, run: Training) -> Path | None:
        """Checkpoint the last completed step; None if there is no directory or the write failed."""
        if self.directory is None:
            return None
        start = self.clock()
        try:
            path = save(self.directory, snapshot(run, self.identity), key=self.key)
        except StorageError as err:
            self._failed(run.state.step, err, start)
            return None
        self.metrics.checkpoint_duration.observe(self.clock() - start)
        if self.failures:
            log.info("checkpoint at step %d written after %d failed attempts: checkpoints are current again",
                     run.state.step, self.failures)
        self.newest_step, self.failures, self._retry_at = run.state.step, 0, None
        return path

    def discard_after(self, step: int) -> int:
        """Delete the checkpoints of steps after `step` (they hold a convicted liar's answers: a resume must
        not start from one); returns how many went."""
        gone = 0
        for f in list_checkpoints(self.directory, warn=False) if self.directory is not None else []:
            if f.run_id == self.identity.run_id and f.step > step:  # this run's only: never another's
                try:
                    f.path.unlink()
                    gone += 1
                except OSError as err:
                    log.warning("could not delete checkpoint %s holding a convicted liar's answers: %s", f.path,
                                err.strerror)
        return gone

    def _failed(self, step: int, err: StorageError, now: float) -> None:
        self.metrics.checkpoint_failures.inc()
        self.failures += 1
        self._retry_at = now + self.retry_every
        held = self._limited.admit("failed", now)
        if held is None:
            return
        behind = ("no checkpoint written by this run yet" if self.newest_step is None else
                  f"the newest good one is step {self.newest_step}, {step - self.newest_step} steps behind")
        log.error("checkpoint at step %d failed (%d in a row%s): %s; %s; training continues, retrying every %.0f s",
                  step, self.failures, f", {held} not logged" if held else "", err, behind, self.retry_every)


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


def path_for(directory: Path, run_id: str, step: int) -> Path:
    return directory / f"ckpt-{run_id}-{step:09d}.npz"


def save(directory: Path, ckpt: Checkpoint, key: bytes | None = None) -> Path:
    """Write atomically (signed with `key`, if given), then prune the run's own older checkpoints.

    Only files of this run (`ckpt.meta["lineage"]`) below this step are deleted, all
    but the newest KEEP - 1 of them: another run's files, older-format files and
    this run's files ahead of this step (an earlier attempt that got further) are
    never touched.
    """
    run_id = ckpt.meta["lineage"]["run_id"]
    arrays = {f"params/{k}": v for k, v in ckpt.params.items()}
    arrays.update({f"optim/{k}": v for k, v in ckpt.optimizer.items()})
    arrays.update({f"lagged/{k}": v for k, v in (ckpt.lagged or {}).items()})
    path = path_for(directory, run_id, ckpt.step)
    write_npz(path, arrays, {"kind": "lenet5-checkpoint", "step": ckpt.step, **ckpt.meta}, key=key)
    older = [f for f in list_checkpoints(directory, warn=False) if f.run_id == run_id and f.step < ckpt.step]
    for old in older[KEEP - 1:]:
        try:
            old.path.unlink()
        except OSError as err:
            log.warning("could not delete old checkpoint %s: %s", old.path, err.strerror)
    return path


@dataclass(frozen=True)
class CheckpointFile:
    path: Path
    run_id: str | None  # None: a file named before runs had identities (`ckpt-<step>.npz`)
    step: int


def list_checkpoints(directory: Path, warn: bool = True) -> list[CheckpointFile]:
    """Checkpoint files, highest step first.  Only regular files (or symlinks to one) are listed: anything
    else named like a checkpoint (a FIFO, a device, a directory) is skipped, with one warning if `warn`."""
    try:
        entries = list(os.scandir(directory))
    except OSError:  # no directory yet, or unreadable: nothing to resume from
        return []
    found = []
    for entry in entries:
        m = _NAME.match(entry.name)
        if not m:
            continue
        try:
            regular = entry.is_file()
        except OSError:
            regular = False
        if not regular:
            if warn:
                log.warning("skipping %s: named like a checkpoint but not a regular file", entry.path)
            continue
        found.append(CheckpointFile(Path(entry.path), m.group(1), int(m.group(2))))
    return sorted(found, key=lambda f: (f.step, f.run_id or ""), reverse=True)


_FLOAT32 = np.dtype(np.float32)


def model_layout_problem(layout: Layout, model: type[Model]) -> tuple[int, str] | None:
    """Why these arrays (name -> (shape, dtype), from the headers) are not a checkpoint of `model`, as
    (how many arrays are wrong, why), or None.

    Parameters are float32 in the model's PARAM_SHAPES; the optimizer state is SGD's
    (`velocity/<name>`) or Adam's (`m/<name>`, `v/<name>`, int64 scalar `t`); with a gradient delay, a
    second set of parameters (`lagged/<name>`).
    """
    shapes = model.PARAM_SHAPES
    expected = {f"params/{n}": (shape, _FLOAT32) for n, shape in shapes.items()}
    if any(name.startswith("lagged/") for name in layout):
        expected.update({f"lagged/{n}": (shape, _FLOAT32) for n, shape in shapes.items()})
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


def _history_problem(history: Any, epochs: int) -> str | None:
    """Why `history` is not a list of epoch records 1..n (n <= `epochs`), or None."""
    if not isinstance(history, list) or len(history) > epochs:
        return f"run history is not a list of at most {epochs} epoch records"
    for i, h in enumerate(history):
        if not isinstance(h, dict) or not all(k in h for k in EPOCH_FIELDS):
            return f"run history entry {i} lacks one of {', '.join(EPOCH_FIELDS)}"
        if h["epoch"] != i + 1 or not _is_int(h["epoch"]):
            return f"run history entry {i} is epoch {h['epoch']!r:.20}, not {i + 1}"
        if not _is_int(h["samples"]) or h["samples"] < 1:
            return f"run history entry {i} samples {h['samples']!r:.20} is not a positive count"
        if not _is_number(h["loss"]) or h["loss"] < 0:
            return f"run history entry {i} loss {h['loss']!r:.20} is not a finite number >= 0"
        for k in ("train_accuracy", "test_accuracy"):
            if not _is_number(h[k]) or not 0 <= h[k] <= 1:
                return f"run history entry {i} {k} {h[k]!r:.20} is not between 0 and 1"
        extra = [k for k in h if k not in EPOCH_FIELDS]
        short = lambda v: isinstance(v, str) and len(v) <= 256  # noqa: E731
        if len(extra) > MAX_HISTORY_EXTRA or not all(len(k) <= 64 and (_is_number(h[k]) or short(h[k]))
                                                     for k in extra):
            return f"run history entry {i} holds other fields than short strings and finite numbers"
    return None


def meta_problem(meta: dict[str, Any]) -> str | None:
    """Why the metadata is not that of a training checkpoint (structure, types, ranges), or None."""
    if meta.get("kind") != "lenet5-checkpoint":
        return "not a training checkpoint"
    if not _is_int(meta.get("step")) or meta["step"] < 0:
        return f"step {meta.get('step')!r:.40} is not a count"
    problem = _config_problem(meta.get("config"))
    if problem:
        return problem
    if not _is_int(meta.get("num_shards")) or not 1 <= meta["num_shards"] <= P.MAX_SHARDS:
        return f"num_shards {meta.get('num_shards')!r:.40} is not a count of 1 to {P.MAX_SHARDS}"
    checksums = meta.get("data_checksums")
    if (not isinstance(checksums, dict) or len(checksums) > 8
            or not all(isinstance(k, str) and isinstance(v, str) and len(v) <= 128 for k, v in checksums.items())):
        return "data_checksums is not a small object of strings"
    if "lineage" in meta:  # absent in checkpoints written before runs had identities
        problem = runs.identity_problem(meta["lineage"])
        if problem:
            return problem
    run = meta.get("run")
    if not isinstance(run, dict):
        return "run is not an object"
    if not _is_number(run.get("epoch_loss_sum")) or run["epoch_loss_sum"] < 0:
        return f"run epoch_loss_sum {run.get('epoch_loss_sum')!r:.40} is not a finite number >= 0"
    for count in ("epoch_correct", "epoch_samples"):
        if not _is_int(run.get(count)) or run[count] < 0:
            return f"run {count} {run.get(count)!r:.40} is not a count"
    if run["epoch_correct"] > run["epoch_samples"]:
        return f"run epoch_correct {run['epoch_correct']} exceeds epoch_samples {run['epoch_samples']}"
    return _history_problem(run.get("history"), meta["config"]["epochs"])


def run_problem(meta: dict[str, Any], train_images: int) -> str | None:
    """Why the running sums and history disagree with the step, or None: each is a function of the
    step, the batch size and the training-set size (`train_images` before --train-subset)."""
    config = meta["config"]
    n = min(config["train_subset"] or train_images, train_images)
    per_epoch = -(-n // config["batch_size"])
    step, run = meta["step"], meta["run"]
    # A checkpoint at an epoch's last step may hold that epoch unclosed (all its samples summed), and
    # the newest closed epoch's record may still be on its way (its test accuracy is computed while
    # the next epoch trains).
    unclosed = step > 0 and step % per_epoch == 0 and run["epoch_samples"] == n
    closed = step // per_epoch - unclosed
    if not closed - 1 <= len(run["history"]) <= closed:
        return f"run history holds {len(run['history'])} epochs, step {step} means {closed}"
    if not unclosed and run["epoch_samples"] != (step % per_epoch) * config["batch_size"]:
        return f"run epoch_samples {run['epoch_samples']} disagrees with step {step}"
    return None


def _arrays_problem(arrays: dict[str, np.ndarray], name: str, delay: int) -> str | None:
    """Why the arrays are not those of the model the configuration names, or None."""
    layout = {k: (a.shape, a.dtype) for k, a in arrays.items()}
    problem = model_layout_problem(layout, get_model(name))  # a known name: meta_problem checked the config
    if problem is not None:
        return f"the config names {name}, but {problem[1]}"
    if any(k.startswith("lagged/") for k in arrays) != bool(delay):
        return (f"the config says gradient delay {delay}, but the lagged parameters are "
                f"{'missing' if delay else 'there'}")
    return None


def load(path: Path, key: bytes | None = None, train_images: int | None = None) -> Checkpoint:
    """A checkpoint, checked through (see the module doc); with `key`, it must carry a valid HMAC.

    With `train_images` (the training set's size), its running sums must also agree with its step.
    The metadata always holds `lineage` on return (computed for older files).
    """
    arrays, meta = read_npz(path, key=key, expect=layout_problem)
    if isinstance(meta.get("config"), dict):
        meta["config"].setdefault("model", DEFAULT_MODEL)  # written before models were named
        meta["config"].setdefault("gradient_delay", 0)  # written before the gradient delay existed
    config = meta.get("config")
    problem = (meta_problem(meta) or _arrays_problem(arrays, config["model"], config["gradient_delay"])
               or (run_problem(meta, train_images) if train_images is not None else None))
    if problem:
        raise StorageError(f"{path}: {problem}")
    for name, a in arrays.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise StorageError(f"{path}: {name} holds NaN or infinite values")
        if a.dtype.kind in "iu" and (a < 0).any():
            raise StorageError(f"{path}: {name} is negative")
    m, stored_run = _NAME.match(path.name), meta.get("lineage", {}).get("run_id")
    if m and (int(m.group(2)) != meta["step"] or (m.group(1) is not None and m.group(1) != stored_run)):
        raise StorageError(f"{path}: holds step {meta['step']} of run {stored_run}, not what its name says")
    params = {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}
    optimizer = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}
    lagged = {k[len("lagged/"):]: v for k, v in arrays.items() if k.startswith("lagged/")} or None
    meta = dict(meta)
    step = meta.pop("step")
    meta.pop("kind")
    if "lineage" not in meta:
        meta["lineage"] = runs.identity(TrainConfig.from_dict(meta["config"]), meta["num_shards"],
                                        meta["data_checksums"]).to_meta()
    return Checkpoint(step=step, params=params, optimizer=optimizer, meta=meta, lagged=lagged)


def set_aside(path: Path, err: StorageError) -> None:
    """A checkpoint that failed its checks: renamed `*.damaged` (kept for inspection), one warning."""
    aside = path.with_name(path.name + ".damaged")
    n = 1
    while aside.exists() or aside.is_symlink():  # never over a file set aside before
        aside, n = path.with_name(f"{path.name}.damaged.{n}"), n + 1
    try:
        path.rename(aside)  # out of the way of newer checkpoints, and of the next start
    except OSError:
        aside = path
    log.warning("skipping damaged checkpoint (kept as %s): %s", aside.name, err)


def candidates(directory: Path, key: bytes | None = None,
               train_images: int | None = None) -> list[tuple[runs.Candidate, Checkpoint]]:
    """The newest intact checkpoint of each run in `directory`; damaged ones on the way are set aside."""
    found: dict[str, tuple[runs.Candidate, Checkpoint]] = {}
    for f in list_checkpoints(directory):
        if f.run_id is not None and f.run_id in found:
            continue  # this run's newer one is intact: older ones are not even opened
        try:
            c = load(f.path, key, train_images)
        except StorageError as err:
            set_aside(f.path, err)
            continue
        identity = runs.from_meta(c.meta["lineage"])
        if identity.run_id not in found:
            found[identity.run_id] = (runs.Candidate(f.path.name, identity, c.step, c.meta["config"],
                                                     c.meta["num_shards"], c.meta["data_checksums"]), c)
    return list(found.values())


def describe_others(files: list[CheckpointFile], run_id: str) -> str | None:
    """One line for a fresh run about checkpoints already in its directory, or None if there are none."""
    own = [f for f in files if f.run_id == run_id]
    others = [f for f in files if f.run_id != run_id]
    parts = []
    if own:
        parts.append(f"checkpoints of this same run up to step {own[0].step} (an earlier attempt: --resume "
                     "continues from them; this run starts over and writes the same numbers)")
    if others:
        names = {f.run_id for f in others}
        parts.append(f"{len(others)} checkpoints of {len(names)} other run(s), newest {others[0].path.name} "
                     f"(kept: this run, {run_id}, prunes only its own)")
    return "; ".join(parts) or None

"""Which run a checkpoint belongs to, and which checkpoint a resumed run continues from.  Pure: no files.

A run's identity (`RunIdentity`) is a digest of what decides its numbers: the
configuration (without `max_steps`: a shorter run is a prefix of the longer),
the shard count, the data checksums, the parameters it started from
(`--init-from`, else the seed's initialisation) and, for a run that continues
another one with other settings (more epochs, another shard count), that
parent's identity and the step it branched at.  Checkpoint files carry it in
their name (`ckpt-<run>-<step>.npz`), so a run prunes and resumes only its own.

`choose` picks what `--resume` continues from, among the newest intact
checkpoint of each run in the directory:
  1. a run of exactly these settings (epochs and shard count included): the
     furthest one, continued under its own identity;
  2. else a run of the same lineage (same settings but epochs or shards, same
     data, same starting parameters): the furthest one, continued as a new run
     derived from it (`Extension`); with fewer epochs than it has done: refused;
  3. else none fits, and `Choice.why` says why in one line.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from lenet.config import TrainConfig, make_schedule
from lenet.status import UsageError

RUN_ID = re.compile(r"^[0-9a-f]{12}$")
IGNORED = ("max_steps",)  # never part of a run's identity
# Settings added after runs had identities: at these values they are left out, so an older run keeps its identity.
ADDED_LATER = {"gradient_delay": 0}
EXTENDABLE = ("epochs",)  # may differ between a run and the one that continues it


@dataclass(frozen=True)
class RunIdentity:
    """What a run is: `run_id` names its checkpoints; `parent` (run_id, step) when it continues another."""

    run_id: str
    parent: tuple[str, int] | None = None
    init_from: str | None = None  # SHA-256 of the starting parameters (--init-from), None: the seed's

    def to_meta(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "parent": list(self.parent) if self.parent else None,
                "init_from": self.init_from}


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items()
            if k not in IGNORED and not (k in ADDED_LATER and v == ADDED_LATER[k])}


def identity(config: TrainConfig, num_shards: int, data_checksums: dict[str, str], init_from: str | None = None,
             parent: tuple[str, int] | None = None) -> RunIdentity:
    """The identity of a run of these settings, started fresh (`parent` None) or continuing `parent`."""
    blob = json.dumps({"config": _settings(config.to_dict()), "num_shards": num_shards, "data": data_checksums,
                       "init_from": init_from, "parent": list(parent) if parent else None}, sort_keys=True)
    return RunIdentity(hashlib.sha256(blob.encode()).hexdigest()[:12], parent, init_from)


def identity_problem(meta: Any) -> str | None:
    """Why a checkpoint's `lineage` metadata is not a run identity, or None (checked like a peer's message)."""
    if not isinstance(meta, dict) or set(meta) != {"run_id", "parent", "init_from"}:
        return "lineage is not an object of run_id, parent and init_from"
    if not isinstance(meta["run_id"], str) or not RUN_ID.match(meta["run_id"]):
        return f"lineage run_id {meta['run_id']!r:.40} is not a run identity"
    parent = meta["parent"]
    if parent is not None and not (isinstance(parent, list) and len(parent) == 2 and isinstance(parent[0], str)
                                   and RUN_ID.match(parent[0]) and isinstance(parent[1], int)
                                   and not isinstance(parent[1], bool) and parent[1] >= 0):
        return f"lineage parent {parent!r:.60} is not [run_id, step]"
    init = meta["init_from"]
    if init is not None and not (isinstance(init, str) and re.fullmatch(r"[0-9a-f]{64}", init)):
        return f"lineage init_from {init!r:.40} is not a SHA-256"
    return None


def from_meta(meta: dict[str, Any]) -> RunIdentity:
    """The identity stored by `RunIdentity.to_meta` (already checked by `identity_problem`)."""
    parent = meta["parent"]
    return RunIdentity(meta["run_id"], (parent[0], parent[1]) if parent else None, meta["init_from"])


@dataclass(frozen=True)
class Candidate:
    """The newest intact checkpoint of one run: what `choose` needs of it."""

    name: str  # the file's name, for messages
    run: RunIdentity
    step: int
    config: dict[str, Any]
    num_shards: int
    data_checksums: dict[str, str]


@dataclass(frozen=True)
class Extension:
    """A run continued with other settings: what changes, for the log."""

    from_epochs: int
    to_epochs: int
    lr_before: float  # at the step it continues from: under the old schedule
    lr_after: float  # and under the new one

    def describe(self, step: int) -> str:
        return (f"epochs {self.from_epochs} -> {self.to_epochs}: the learning-rate schedule now spans "
                f"{self.to_epochs} epochs (at step {step} lr {self.lr_before:.6g} -> {self.lr_after:.6g})")


@dataclass(frozen=True)
class Choice:
    """What `--resume` continues: `candidate` under `run`, or nothing and `why` (one line)."""

    candidate: Candidate | None
    run: RunIdentity | None
    extension: Extension | None = None
    why: str = ""


def _diffs(saved: dict[str, Any], ours: dict[str, Any], skip: tuple[str, ...]) -> list[str]:
    return [f"{k}={v!r} (this run: {ours.get(k)!r})" for k, v in sorted(saved.items())
            if k not in skip and k not in IGNORED and ours.get(k) != v]


def choose(candidates: list[Candidate], config: TrainConfig, shards: int | None, data_checksums: dict[str, str],
           steps_per_epoch: int, init_from: str | None = None) -> Choice:
    """The checkpoint `--resume` continues for a run of `config` (see the module doc).

    `shards`: --shards if given (None: any shard count continues).  UsageError when
    the only fitting run has done more epochs than `config` asks for.
    """
    ours = config.to_dict()
    lineage = [c for c in candidates if c.data_checksums == data_checksums and c.run.init_from == init_from
               and not _diffs(c.config, ours, EXTENDABLE)]
    exact = [c for c in lineage if c.config.get("epochs") == config.epochs and shards in (None, c.num_shards)]
    if exact:
        best = max(exact, key=lambda c: c.step)
        return Choice(best, best.run)
    if lineage:
        best = max(lineage, key=lambda c: c.step)
        epochs_done = best.step / steps_per_epoch
        if best.step > config.epochs * steps_per_epoch:
            raise UsageError(f"{best.name} has done {epochs_done:g} epochs (step {best.step}); --epochs "
                             f"{config.epochs} is fewer: pass --epochs {-(-best.step // steps_per_epoch)} or more, "
                             "or another --checkpoint-dir for a new run")
        num_shards = shards if shards is not None else best.num_shards
        run = identity(config, num_shards, data_checksums, init_from, parent=(best.run.run_id, best.step))
        extension = None
        if best.config["epochs"] != config.epochs:
            saved = TrainConfig.from_dict(best.config)
            extension = Extension(saved.epochs, config.epochs, make_schedule(saved, steps_per_epoch)(best.step),
                                  make_schedule(config, steps_per_epoch)(best.step))
        return Choice(best, run, extension)
    if not candidates:
        return Choice(None, None, why="no checkpoint")
    newest = max(candidates, key=lambda c: c.step)
    if newest.data_checksums != data_checksums:
        differs = "other MNIST files (checksums differ)"
    elif newest.run.init_from != init_from:
        differs = "other starting parameters (--init-from)"
    else:
        differs = ", ".join(_diffs(newest.config, ours, EXTENDABLE)[:3])
    return Choice(None, None, why=f"no checkpoint of this run: {len(candidates)} other run(s) there, the newest "
                                  f"({newest.name}, step {newest.step}) made with {differs}")

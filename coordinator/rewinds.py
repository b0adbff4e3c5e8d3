"""Rewinds carried out: the run goes back to before a convicted member's first accepted answer, and the
replay is seen through to its end.  No sockets; the clock is passed in.

coordinator/provenance.py holds the rules (who produced each accepted unit, which
state a conviction goes back to); `Rewinds` does what they decide:
  - every accepted answer is credited to its member, with a snapshot of the run's
    state at the member's first, taken after the epoch under evaluation is
    recorded (a snapshot's history holds every epoch closed before it);
  - on a conviction (`rewind`), the training goes back to the snapshot, an epoch
    closed since is dropped unrecorded, the checkpoints after it are deleted (a
    resume must not start from one that holds the lie), and it is counted and logged;
  - a `Replay` lasts until the run is back at the furthest step a rewind left
    (a rewind during a replay extends it); then "rewind done" is logged with the
    steps replayed, the time they took and who was convicted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from coordinator.checkpoint import Checkpointer
from coordinator.epochs import Epochs
from coordinator.metrics import Metrics
from coordinator.provenance import Provenance, Rewind
from coordinator.training import Snapshot, Training

log = logging.getLogger("coordinator")


@dataclass
class Replay:
    """Rewinds under way: steps are being done again up to `until` (the furthest step a rewind left)."""

    until: int
    started: float
    steps: int = 0  # steps undone, in all
    convicted: list[str] = field(default_factory=list)

    def rewound(self, at: int, to: int, name: str) -> None:
        """`name`, convicted during step `at`, sent the run back to step `to`."""
        self.until = max(self.until, at)
        self.steps += at - to
        self.convicted.append(name)

    def done(self, step: int) -> bool:
        """True once `step` steps are done: the run is back where every rewind left it."""
        return step >= self.until


class Rewinds:
    def __init__(self, training: Training, epochs: Epochs, checkpoints: Checkpointer, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.training, self.epochs, self.checkpoints, self.metrics, self.clock = (training, epochs, checkpoints,
                                                                                  metrics, clock)
        self.provenance = Provenance[bytes, Snapshot]()
        self.replay: Replay | None = None

    def accepted(self, who: bytes, step: int) -> None:
        """An answer of `who` was accepted in `step`."""
        self.provenance.accepted(who, step, self._snapshot)

    def convicted(self, who: bytes, step: int) -> Rewind[Snapshot] | None:
        """`who` is convicted during `step`: where to go back to, or None if none of its answers before
        `step` were accepted (the step takes back its own)."""
        return self.provenance.convicted(who, step)

    def rewind(self, rewind: Rewind[Snapshot], at: int, name: str) -> None:
        """Back to before `name`'s first accepted answer, from step `at` (the caller drops that step: its late
        answers are refused as stale); the steps since are done again without it."""
        self.training.rewind(rewind.state)  # numbering the steps anew: each member gets their parameters again
        self.epochs.undo(rewind.to)
        discarded = self.checkpoints.discard_after(rewind.to)
        m = self.metrics
        m.rewinds.inc()
        m.steps_replayed.inc(at - rewind.to)
        m.epoch.set(self.training.epoch)
        m.epoch_samples.set(self.training.state.epoch_samples)
        if self.replay is None:
            self.replay = Replay(until=at, started=self.clock())
        self.replay.rewound(at, rewind.to, name)
        log.warning("rewind: %s convicted at step %d; back to step %d, before its first accepted answer: %d steps "
                    "to do again without it%s", name, at, rewind.to, at - rewind.to,
                    f" ({discarded} checkpoints holding its answers deleted)" if discarded else "")

    def step_done(self, members: Collection[bytes]) -> None:
        """A step is over: of the members gone, none can be convicted any more; a replay caught up is done."""
        self.provenance.retain(members)
        replay = self.replay
        if replay is not None and replay.done(self.training.state.step):
            seconds = self.clock() - replay.started
            self.metrics.rewind_seconds.inc(seconds)
            log.warning("rewind done: %d steps replayed in %.1f s without %s; the run is as if they never took part",
                        replay.steps, seconds, ", ".join(replay.convicted))
            self.replay = None

    def _snapshot(self) -> Snapshot:
        self.epochs.settle(wait=True)
        return self.training.snapshot()

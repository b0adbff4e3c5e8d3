"""Where the coordinator's time goes: seconds per phase of its loop, for the per-step breakdown.

The loop wraps each phase in `phases.timed(name)`.  Phases nest (a unit recomputed
while checking a result): the inner phase's time is not counted again in the
outer one, so the totals add up to the time the loop spent in timed phases, and
each second is counted once.  `PHASES` fixes the names and their order in the
metric (`lenet_coordinator_seconds_total{phase}`) and in the end-of-run line.
No sockets, no globals: the clock is passed in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

PHASES = (
    "idle",        # polling with nothing to do: waiting for workers
    "receive",     # reading and decoding frames, the door's checks
    "checks",      # a result's fields, finiteness, bounds and the trust rules
    "recompute",   # units computed here to settle a doubt or verify a worker
    "reduce",      # the rest of the reduction tree and the linear layers' products
    "optimizer",   # the parameter update and its divergence check
    "plan",        # cutting the next step into units and encoding its tasks
    "send",        # encoding the parameters and sending parameters and tasks
    "evaluation",  # the test-set accuracy at an epoch's end (the part the loop waited for)
    "checkpoint",  # writing checkpoints
)


class Phases:
    """Seconds per phase, with nesting: time in an inner phase is taken out of the outer one."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.totals: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self._stack: list[list] = []  # [name, started, seconds taken by inner phases]

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        if name not in self.totals:
            raise KeyError(f"unknown phase {name!r}; the phases are {PHASES}")
        frame = [name, self.clock(), 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            elapsed = self.clock() - frame[1]
            self.totals[name] += elapsed - frame[2]
            if self._stack:
                self._stack[-1][2] += elapsed

    def since(self, before: dict[str, float]) -> dict[str, float]:
        """Seconds per phase spent after `before` (an earlier copy of `totals`)."""
        return {k: v - before.get(k, 0.0) for k, v in self.totals.items()}

    def busy(self) -> float:
        """Seconds in every phase but waiting."""
        return sum(v for k, v in self.totals.items() if k != "idle")

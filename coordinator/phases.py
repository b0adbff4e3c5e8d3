"""Where the coordinator's time goes: seconds per phase of its loop (`Phases`), and a run's per-step
breakdown built on them (`StepTimes`).

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
from contextlib import AbstractContextManager, contextmanager

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


class StepTimes:
    """A run's per-step breakdown: the loop's phases, the steps' durations, the workers' computing, how
    long the workers wait between two steps (from a step's last result to the next step's work sent), and
    the critical path: the phases from reading the messages that brought a step's last result to the next
    step's work sent, while the workers wait (its decoding and checks included).

    The rest of a synchronous step is its units' round trips, from its work sent to the read that brought
    each unit's first answer: per step, the average unit's round trip beyond its computing (the transfer
    both ways, the worker decoding and encoding, the result waiting for this loop to read it) and how much
    longer the slowest unit's took than the average (what the step waits for its slowest worker).  So on
    average such a step is about its critical path + a unit's computing + the round trip beyond it + the
    wait for the slowest.  Only steps whose units were each handed out once count (`step_done`); with a
    gradient delay a step's work goes out before the step before ends, and no round trip is timed.

    The coordinator's CPU (`cpu`, the whole process's) is split by thread: the loop's own (`thread_cpu`, read
    in the loop's thread: StepTimes is made and `line()` called there), the test-set evaluations' (their
    thread says what each took, `evaluated`), and the rest (ZeroMQ's I/O thread, the metrics server).  Only
    the loop's is work per step; an evaluation is work per epoch, and in a short run a large part of the CPU.

    `publish(phase, seconds)` is told each phase's new seconds after every step (the metric); `line()` is
    the end-of-run summary that bench/compare.py reads.
    """

    def __init__(self, publish: Callable[[str, float], None] = lambda phase, seconds: None,
                 clock: Callable[[], float] = time.perf_counter,
                 cpu: Callable[[], float] = time.process_time,
                 thread_cpu: Callable[[], float] = time.thread_time) -> None:
        self.phases = Phases(clock)
        self.publish, self.clock, self.cpu, self.thread_cpu = publish, clock, cpu, thread_cpu
        self.evaluation_cpu = 0.0  # CPU seconds the test-set evaluations took in their thread
        self.steps = 0
        self.step_seconds = 0.0
        self.worker_compute = 0.0  # seconds workers spent computing accepted units
        self.beyond_compute = 0.0  # per step with timed units: the average unit's round trip beyond its computing
        self.slowest_lead = 0.0  # per step with timed units: the slowest unit's round trip beyond the average
        self.timed_steps = 0
        self._round_trips: dict[int, tuple[float, float]] = {}  # this step's timed units: (round trip, computing)
        self._sent_at: float | None = None  # when the step under way's work was sent, if its round trips are timed
        self.between = 0.0
        self.critical = 0.0
        self.critical_phases: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self._completed_at: float | None = None
        self._turn: tuple[float, dict[str, float]] | None = None  # when the last read began; the totals then
        self._critical_from: tuple[float, dict[str, float]] | None = None
        self._cpu_started = cpu()
        self._loop_cpu_started = thread_cpu()
        self._published = dict(self.phases.totals)

    def timed(self, name: str) -> AbstractContextManager[None]:
        return self.phases.timed(name)

    def evaluated(self, cpu_seconds: float) -> None:
        """A test-set evaluation took `cpu_seconds` of its thread's CPU (told from that thread; only it adds)."""
        self.evaluation_cpu += cpu_seconds

    def computed(self, seconds: float, unit: int) -> None:
        """An answer for `unit` (its first shard) was accepted in the turn `receiving` began; its worker says it
        computed for `seconds`.  A unit's first answer in a step is its round trip."""
        self.worker_compute += seconds
        if (self._sent_at is not None and self._turn is not None and self._turn[0] >= self._sent_at
                and unit not in self._round_trips):
            trip = self._turn[0] - self._sent_at
            self._round_trips[unit] = (trip, min(seconds, trip))  # no worker's word makes it negative

    def dropped(self) -> None:
        """The step under way was given up (a rewind): the replay's units are not timed from its work sent."""
        self._sent_at = None
        self._round_trips = {}

    def receiving(self) -> None:
        """The loop starts reading what came: if that holds the step's last result, the critical path starts here."""
        self._turn = (self.clock(), dict(self.phases.totals))

    def completed(self) -> None:
        """The step under way has its last result."""
        self._completed_at = self.clock()
        self._critical_from = self._turn or (self._completed_at, dict(self.phases.totals))

    def dispatched(self, early: bool = False) -> None:
        """The next step's work is sent: the workers' wait between steps is over.  `early`: it went out before
        the step before ended (a gradient delay), so its units' round trips are not timed."""
        if self._completed_at is not None and self._critical_from is not None:
            now = self.clock()
            self._sent_at = None if early else now
            self.between += now - self._completed_at
            started, totals = self._critical_from
            self.critical += now - started
            for phase, spent in self.phases.since(totals).items():
                self.critical_phases[phase] += spent
            self._completed_at = self._critical_from = None

    def step_done(self, seconds: float, regular: bool = True) -> None:
        """A step took `seconds` from its start to its end; the phases' new seconds are published.  `regular`:
        each of its units was handed out once (no backup, second opinion or unit taken back): only then are
        its round trips what its work cost, and counted."""
        self.steps += 1
        self.step_seconds += seconds
        if self._round_trips and regular:
            trips = [trip for trip, _ in self._round_trips.values()]
            average = sum(trips) / len(trips)
            self.beyond_compute += average - sum(c for _, c in self._round_trips.values()) / len(trips)
            self.slowest_lead += max(trips) - average
            self.timed_steps += 1
        self._round_trips = {}
        for phase, spent in self.phases.since(self._published).items():
            if spent > 0:
                self.publish(phase, spent)
        self._published = dict(self.phases.totals)

    def line(self) -> str:
        """Milliseconds per step, on average over the run."""
        def ms(seconds: float) -> str:
            return f"{1000 * seconds / max(1, self.steps):.2f}"

        def busy(totals: dict[str, float]) -> str:
            return "  ".join(f"{k} {ms(v)}" for k, v in totals.items() if k != "idle")

        def per_timed_step(seconds: float) -> str:
            return f"{1000 * seconds / max(1, self.timed_steps):.2f}"

        cpu, loop = self.cpu() - self._cpu_started, self.thread_cpu() - self._loop_cpu_started
        threads = (f"(loop thread {ms(loop)}  evaluation thread {ms(self.evaluation_cpu)}  other threads "
                   f"{ms(cpu - loop - self.evaluation_cpu)})")
        trips = (f"  round trip beyond compute {per_timed_step(self.beyond_compute)}  waiting for the slowest "
                 f"{per_timed_step(self.slowest_lead)}") if self.timed_steps else ""
        return (f"time per step (ms): step {ms(self.step_seconds)}  coordinator cpu {ms(cpu)} {threads}  "
                f"worker compute {ms(self.worker_compute)}{trips}  between steps "
                f"{ms(self.between)}  coordinator busy {ms(self.phases.busy())}: {busy(self.phases.totals)}  idle "
                f"{ms(self.phases.totals['idle'])}  critical path {ms(self.critical)}: "
                f"{busy(self.critical_phases)}  ({self.steps} steps)")

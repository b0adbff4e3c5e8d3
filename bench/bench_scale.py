"""The coordinator's limit: one coordinator, 16 to 1,024 simulated workers, cost per step; direct and through relays.

    python bench/bench_scale.py [--workers 16,64,256,1024] [--steps 10] [--rounds 3] [--simulators 2]
                                [--relays 4] [--plot docs/scale.svg] [--data-dir DIR]
    python bench/bench_scale.py --relays 0                 # direct only, as before relays existed

For each worker count W, a coordinator (`run_service`, in this process, no local
workers, no verification, registrations admitted as fast as they come) trains a
global batch of max(128, 2 W) samples cut into W shards, so that each of the W
simulated workers gets one unit of one shard.  The simulated workers
(bench/sim_workers.py: W DEALER sockets over `--simulators` processes, each
speaking the real protocol, answering every task with a real Result computed
once per unit shape and replayed) cost the coordinator what real workers would,
heartbeats included, while computing almost nothing.  After WARMUP steps (joins,
the simulators' first real computations), `--steps` steps are timed:
  - the coordinator's CPU time per step: `time.process_time()` of this process,
    which runs nothing else (ZeroMQ's I/O thread included);
  - bytes per step into and out of the coordinator: its own metrics
    lenet_received_bytes_total and lenet_sent_bytes_total;
  - steps and samples per second (wall);
  - the simulators' CPU time per step (/proc/PID/stat), to show their share;
  - with relays, the relays' CPU time per step, all of them together (/proc/PID/stat);
  - backup tasks per step (lenet_backup_tasks_total): once a step takes longer
    than the coordinator's BACKUP_AFTER, idle workers get copies of units still
    out, and a step then costs more than one task per worker;
  - the fewest simulated workers given a task in one timed step (the simulators'
    own count): W while the coordinator keeps up; fewer once workers it overtook
    with backups are left out, as suspects, of the next steps' units.
The coordinator's CPU is also split: "of it, event loop" is its main thread alone
(`time.thread_time()`), the rest is ZeroMQ's I/O thread.

With relays (`--relays R`, default 4: a relay per host for 4 hosts), every worker
count is measured twice in each round, directly and then through R relays: R
processes of `python -m worker --relay --connect <coordinator> --listen
tcp://127.0.0.1:<free port> --name relayN` (BLAS pinned to one thread, as the
simulators), the simulated workers split evenly among their --listen endpoints
(a simulator process per relay at least).  The coordinator then has R members,
each of capacity W/R: it sends the parameters once per relay and gets one
Result per relay's unit, and each relay forwards the parameters to its workers,
cuts its unit into one piece per worker and gathers their results.  A relay
registers as soon as it starts, announcing the workers it has, and the
coordinator starts training once R members have registered; so the simulators
start first and the coordinator only once every relay's own log says it serves
its share ("... (N workers)").  A relay's first Register may still reach the
coordinator with an older count (sent while its workers were joining, queued
until the coordinator listened); its next message corrects it within
milliseconds, during the warm-up.  The round's line says what the coordinator
itself cut the timed steps' units for (`PlannedTraining`: its members and their
capacities, fewest in a step): R members of W workers' capacity.  The other
figures are the same, and still the coordinator's own, but for two: "workers
given work" counts simulated workers (the simulators' own counts, as the
coordinator sees relays, not workers), so below W it may also mean that a relay
left some of its workers out of its pieces; and backup tasks are the
coordinator's, each a copy of a whole relay's unit (a relay's own backups to its
workers are not counted).

On a 2-core machine the simulators, the relays and the coordinator share the cores,
so steps/s measures the simulators and relays too; the coordinator's CPU and bytes
per step do not depend on that.  The worker counts are measured in turn, round after
round; each figure is the median of the rounds with its [min-max] spread.  `--plot`
writes an SVG of CPU and bytes per step against workers, a series per mode (with
relays also the relays' CPU, on the coordinator's panel).  The run stops with an
error if a simulated worker received no task: the figures would then describe fewer
workers than they claim.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lenet.runtime import pin_blas_threads, tune_malloc  # noqa: E402

pin_blas_threads()  # before NumPy loads

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402
from xml.sax.saxutils import escape  # noqa: E402

from prometheus_client import CollectorRegistry  # noqa: E402

from coordinator.config import ServiceConfig  # noqa: E402
from coordinator.local_workers import stop_processes  # noqa: E402
from coordinator.metrics import Metrics  # noqa: E402
from coordinator.protocol import MAX_SHARDS  # noqa: E402
from coordinator.service import run_service  # noqa: E402
from coordinator.step import StepPlan  # noqa: E402
from coordinator.training import StepReport, Training  # noqa: E402
from lenet.config import TrainConfig  # noqa: E402
from lenet.data import MNIST, load_mnist, steps_per_epoch  # noqa: E402
from lenet.runtime import single_thread_blas_env  # noqa: E402
from sim_workers import raise_fd_limit  # noqa: E402

WARMUP = 3  # steps before the clock starts: joins, and each simulator computing every unit shape once
SIMULATOR = ROOT / "bench" / "sim_workers.py"
DEFAULT_RELAYS = 4  # a relay per host, for 4 hosts (see --relays)
CONFIG_SECONDS = 150.0  # a configuration that takes longer is stopped: something is wrong
FIGURES = ("coord_ms", "loop_ms", "mb_in", "mb_out", "steps_per_s", "samples_per_s", "sim_ms", "relay_ms",
           "backups", "tasked_min")
RELAY_SERVES = re.compile(rb"\((\d+) workers\)$", re.MULTILINE)  # how a relay's log lines end on a join or departure


@dataclass(frozen=True)
class Shape:
    """One configuration: every simulated worker gets a unit of its own."""

    workers: int
    shards: int
    batch: int


def shape_for(workers: int) -> Shape:
    """W shards (one unit each) in a batch of max(128, 2 W): every shard gets at least one sample."""
    if not 1 <= workers <= MAX_SHARDS:
        raise ValueError(f"workers must be 1-{MAX_SHARDS} (a shard each, at most the protocol's MAX_SHARDS)")
    return Shape(workers, workers, max(128, 2 * workers))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def split(n: int, parts: int) -> list[int]:
    """n as `parts` near-equal non-negative counts."""
    return [n // parts + (i < n % parts) for i in range(parts)]


def simulator_groups(workers: int, endpoints: Sequence[str], processes: int) -> list[tuple[str, int]]:
    """(endpoint, simulated workers) per simulator process: the workers split evenly among the endpoints,
    each endpoint's share among `processes` / len(endpoints) processes (at least one)."""
    per_endpoint = max(1, processes // len(endpoints))
    return [(endpoint, n) for endpoint, share in zip(endpoints, split(workers, len(endpoints)))
            for n in split(share, per_endpoint) if n]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc (fields 14 and 15 of its stat line)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_env() -> dict[str, str]:
    """This checkout's code, BLAS pinned to one thread: the environment of every process started here."""
    return {**single_thread_blas_env(), "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


class ProcessGroup:
    """Child processes of one configuration, ended together."""

    procs: list[subprocess.Popen]

    def exited(self) -> bool:
        return any(p.poll() is not None for p in self.procs)

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)


class Simulators(ProcessGroup):
    """The simulator processes of one configuration; `finish` ends them all, whatever happened."""

    def __init__(self, groups: Sequence[tuple[str, int]], silence: float):
        env = child_env()
        self.procs = [subprocess.Popen([sys.executable, str(SIMULATOR), "--connect", endpoint, "--workers", str(n),
                                        "--name", f"sim{i}", "--silence", str(silence),
                                        "--seconds", str(CONFIG_SECONDS + 10)],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env)
                      for i, (endpoint, n) in enumerate(groups)]

    def finish(self, grace: float = 1.0) -> list[dict[str, Any]]:
        """Wait `grace` s for them to end on the coordinator's Shutdown, then SIGTERM, then kill; their counts."""
        stop_processes(self.procs, grace, kill_after=10.0)
        counts = []
        for p in self.procs:
            out, _ = p.communicate()  # each printed one line of counts as it ended (SIGTERM included)
            lines = out.decode(errors="replace").strip().splitlines()
            counts.append(json.loads(lines[-1]) if lines else {"ended": f"exit status {p.returncode}, no counts"})
        return counts


class Relays(ProcessGroup):
    """The relay processes of one configuration (`python -m worker --relay`), each one member of the run
    that the simulated workers of its share connect to; `finish` ends them all, whatever happened."""

    def __init__(self, coordinator: str, count: int, logs: Path):
        env = child_env()
        self.endpoints = [f"tcp://127.0.0.1:{free_port()}" for _ in range(count)]
        self.logs = [logs / f"relay{i}.log" for i in range(count)]  # stderr: its INFO log, a line per join
        self.procs = []
        for i, (endpoint, log_path) in enumerate(zip(self.endpoints, self.logs)):
            with open(log_path, "wb") as log_file:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "worker", "--relay", "--connect", coordinator, "--listen", endpoint,
                     "--name", f"relay{i}"],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log_file, env=env, cwd=ROOT))

    def serving(self) -> list[int]:
        """The workers each relay serves by its own log: its last "... (N workers)" line (a join, a departure,
        its registration), 0 before any.  It is the count the relay announces to the coordinator."""
        found = []
        for path in self.logs:
            counts = RELAY_SERVES.findall(path.read_bytes())
            found.append(int(counts[-1]) if counts else 0)
        return found

    def wait_until_serving(self, shares: Sequence[int], give_up: float, others_exited: Callable[[], bool]) -> None:
        """Block until every relay serves its share of the simulated workers: the run must not start before,
        or its first steps would be cut for the workers that happened to have joined."""
        while True:
            serving = self.serving()
            if all(n >= share for n, share in zip(serving, shares)):
                return
            if self.exited() or others_exited() or time.monotonic() > give_up:
                raise RuntimeError(f"relays serve {serving} workers, not {list(shares)}: "
                                   f"{'a process exited' if self.exited() or others_exited() else 'timed out'}; "
                                   f"relays: {self.tails()}")
            time.sleep(0.05)

    def tails(self, lines: int = 3) -> list[str]:
        """The last lines of each relay's log, for an error message."""
        return [" | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:]) for path in self.logs]

    def finish(self, grace: float = 1.0) -> list[dict[str, Any]]:
        """Wait `grace` s for them to end on the coordinator's Shutdown, then SIGTERM, then kill; how each ended."""
        stop_processes(self.procs, grace, kill_after=10.0)
        return [{"name": f"relay{i}", "exit": p.returncode, "ended": tail}
                for i, (p, tail) in enumerate(zip(self.procs, self.tails(1)))]


class PlannedTraining(Training):
    """Training that keeps what each step's units were last cut for: the capacities of the members the
    coordinator could give work to when the step started (its own view of the run: a relay counts as its workers)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.capacities: dict[int, tuple[int, ...]] = {}

    def plan(self, step: int, capacities: tuple[int, ...]) -> StepPlan:
        self.capacities[step] = capacities  # planned ahead, and again at the start if the members changed since
        return super().plan(step, capacities)


def counter(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


def measure(data: MNIST, shape: Shape, steps: int, processes: int, relays: int = 0) -> dict[str, Any]:
    """One configuration, one round: figures per timed step, and what the simulators counted.

    With `relays`, the simulated workers connect to that many relay processes (split evenly), and the
    coordinator sees the relays alone: R members whose capacities add up to W.
    """
    metrics = Metrics(CollectorRegistry())
    bind = f"tcp://127.0.0.1:{free_port()}"
    members = relays or shape.workers  # what the coordinator waits for: a relay is one member
    service = ServiceConfig(bind=bind, min_workers=members, max_workers=members, verify_fraction=0.0,
                            # Admit every join at once: the registration limit protects a run, not a benchmark.
                            registrations_per_second=10_000.0, registration_burst=members)
    training = PlannedTraining(TrainConfig(batch_size=shape.batch, max_steps=WARMUP + steps), shape.shards, data)
    marks: dict[int, tuple[float, ...]] = {}

    def progress(report: StepReport, live: int) -> None:
        if report.step in (WARMUP, WARMUP + steps):
            # progress runs on the event loop's thread: thread_time() is the loop's own share of the CPU.
            marks[report.step] = (time.perf_counter(), time.process_time(), time.thread_time(), sims.cpu_seconds(),
                                  relay_procs.cpu_seconds() if relay_procs is not None else 0.0,
                                  counter(metrics, "lenet_received_bytes_total"),
                                  counter(metrics, "lenet_sent_bytes_total"),
                                  counter(metrics, "lenet_backup_tasks_total"))

    give_up = time.monotonic() + CONFIG_SECONDS
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as logs:
        relay_procs = Relays(bind, relays, Path(logs)) if relays else None
        try:
            endpoints = relay_procs.endpoints if relay_procs is not None else [bind]
            sims = Simulators(simulator_groups(shape.workers, endpoints, processes), silence=10.0)
            try:
                if relay_procs is not None:
                    # A relay registers with the workers it has, and the coordinator starts training as soon
                    # as R members have registered: so every simulated worker joins its relay first.
                    relay_procs.wait_until_serving(split(shape.workers, relays), give_up, sims.exited)
                outcome = run_service(training, service, metrics, local_workers=0, progress=progress,
                                      stop=lambda: (sims.exited() or time.monotonic() > give_up
                                                    or (relay_procs is not None and relay_procs.exited())))
            finally:
                counts = sims.finish()
        finally:
            ends = relay_procs.finish() if relay_procs is not None else []
    tasked = sum(c.get("tasked", 0) for c in counts)
    if not outcome.finished or tasked != shape.workers:
        raise RuntimeError(f"{shape.workers} workers{f' through {relays} relays' if relays else ''}: "
                           f"{'finished' if outcome.finished else 'stopped early'}, {tasked} simulated workers "
                           f"received a task; simulators: {counts}{f'; relays: {ends}' if relays else ''}")
    wall, cpu, loop, sim, relay_cpu, received, sent, backups = (b - a for a, b in zip(marks[WARMUP],
                                                                                      marks[WARMUP + steps]))
    timed = range(WARMUP, WARMUP + steps)
    tasked_per_step = [sum(c["tasked_per_step"].get(str(step), 0) for c in counts)
                       for step in timed]  # JSON keys are strings
    return {"coord_ms": 1000 * cpu / steps, "loop_ms": 1000 * loop / steps, "mb_in": received / 1e6 / steps,
            "mb_out": sent / 1e6 / steps, "steps_per_s": steps / wall, "samples_per_s": steps * shape.batch / wall,
            "sim_ms": 1000 * sim / steps, "relay_ms": 1000 * relay_cpu / steps if relays else None,
            "backups": backups / steps, "tasked_min": min(tasked_per_step),
            # The coordinator's own view: the members' capacities each timed step was cut for (a relay's is
            # its workers), fewest in a step.  W unless a member was left out as a suspect.
            "planned_min": min(sum(training.capacities[step]) for step in timed),
            "members_min": min(len(training.capacities[step]) for step in timed),
            "tasked": tasked, "rejected": metrics.rejected_by_reason(), "simulators": counts, "relays": ends}


# --------------------------------------------------------------------------- output


def summary(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


def cell(values: Sequence[float], digits: int) -> str:
    med, lo, hi = summary(values)
    return f"{med:,.{digits}f} [{lo:,.{digits}f}-{hi:,.{digits}f}]"


Rounds = Sequence[dict[tuple[int, int], dict[str, Any]]]  # per round: (workers, relays) -> figures


def table(shapes: Sequence[Shape], modes: Sequence[int], rounds: Rounds) -> str:
    """A row per worker count and mode (relays 0: the workers connect to the coordinator directly)."""
    headers = ["workers", "relays", "shards", "batch", "coordinator CPU ms/step", "of it, event loop", "MB/step in",
               "MB/step out", "steps/s", "samples/s", "simulators CPU ms/step", "relays CPU ms/step",
               "backup tasks/step", "workers given work (fewest in a step)"]
    digits = {"coord_ms": 1, "loop_ms": 1, "mb_in": 2, "mb_out": 1, "steps_per_s": 2, "samples_per_s": 0,
              "sim_ms": 0, "relay_ms": 0, "backups": 1, "tasked_min": 0}

    def figure(s: Shape, relays: int, f: str) -> str:
        values = [r[s.workers, relays][f] for r in rounds]
        return "-" if None in values else cell(values, digits[f])

    rows = [[str(s.workers), str(relays), str(s.shards), str(s.batch), *(figure(s, relays, f) for f in FIGURES)]
            for s in shapes for relays in modes]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in [headers, *rows])


@dataclass(frozen=True)
class Series:
    """One line of the plot: `points` are (workers, median, min, max)."""

    panel: int  # 0: coordinator CPU ms/step, 1: MB/step
    label: str
    color: str
    dashed: bool
    points: list[tuple[float, float, float, float]]


def log_scale(lo: float, hi: float, a: float, b: float):
    """Map [lo, hi] (log scale) onto the pixel range [a, b]."""
    la, lb = math.log10(lo), math.log10(hi)
    return lambda v: a + (math.log10(v) - la) / (lb - la) * (b - a)


def decades(values: Sequence[float]) -> tuple[float, float]:
    """The powers of ten around `values`."""
    return 10.0 ** math.floor(math.log10(min(values))), 10.0 ** math.ceil(math.log10(max(values)))


def svg_plot(series: Sequence[Series], title: str, subtitle: str) -> str:
    """Two log-log panels side by side (CPU ms/step, MB/step against workers) and a legend row per series below."""
    width, panel_w, panel_h, left, top = 860, 330, 300, 70, 70
    panels = [("coordinator CPU per step, ms", 0), ("bytes per step, MB", 1)]
    xs = sorted({p[0] for s in series for p in s.points})
    x_lo, x_hi = (xs[0] / 2, xs[0] * 2) if len(xs) == 1 else (xs[0], xs[-1])
    legend_top = top + panel_h + 60
    height = legend_top + 22 * len(series) + 20
    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            'font-family="sans-serif" font-size="12">'),
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{width / 2}" y="24" text-anchor="middle" font-size="16">{escape(title)}</text>',
           f'<text x="{width / 2}" y="44" text-anchor="middle" fill="#555">{escape(subtitle)}</text>']
    for ylabel, index in panels:
        x0 = left + index * (panel_w + 100)
        mine = [s for s in series if s.panel == index]
        y_lo, y_hi = decades([v for s in mine for p in s.points for v in p[1:]])
        fx, fy = log_scale(x_lo, x_hi, x0, x0 + panel_w), log_scale(y_lo, y_hi, top + panel_h, top)
        out.append(f'<rect x="{x0}" y="{top}" width="{panel_w}" height="{panel_h}" fill="none" stroke="#999"/>')
        for x in xs:
            out.append(f'<line x1="{fx(x):.1f}" y1="{top}" x2="{fx(x):.1f}" y2="{top + panel_h}" stroke="#eee"/>')
            out.append(f'<text x="{fx(x):.1f}" y="{top + panel_h + 16}" text-anchor="middle">{x:g}</text>')
        ticks = [m * 10.0 ** k for k in range(round(math.log10(y_lo)), round(math.log10(y_hi)) + 1) for m in (1, 2, 5)]
        for y in (t for t in ticks if y_lo <= t <= y_hi):
            out.append(f'<line x1="{x0}" y1="{fy(y):.1f}" x2="{x0 + panel_w}" y2="{fy(y):.1f}" stroke="#eee"/>')
            out.append(f'<text x="{x0 - 6}" y="{fy(y) + 4:.1f}" text-anchor="end">{y:g}</text>')
        out.append(f'<text x="{x0 + panel_w / 2}" y="{top + panel_h + 36}" text-anchor="middle">'
                   'simulated workers (log scale)</text>')
        out.append(f'<text transform="translate({x0 - 50},{top + panel_h / 2}) rotate(-90)" text-anchor="middle">'
                   f'{escape(ylabel)} (log scale)</text>')
        for s in mine:
            dash = ' stroke-dasharray="6 4"' if s.dashed else ""
            points = " ".join(f"{fx(x):.1f},{fy(med):.1f}" for x, med, _, _ in s.points)
            out.append(f'<g class="series" data-label="{escape(s.label)}" stroke="{s.color}" fill="{s.color}">')
            out.append(f'<polyline points="{points}" fill="none" stroke-width="2"{dash}/>')
            for x, med, lo, hi in s.points:  # the median, and a bar over the rounds' spread
                out.append(f'<line x1="{fx(x):.1f}" y1="{fy(lo):.1f}" x2="{fx(x):.1f}" y2="{fy(hi):.1f}"/>')
                out.append(f'<circle cx="{fx(x):.1f}" cy="{fy(med):.1f}" r="3.5"/>')
            out.append("</g>")
    for i, s in enumerate(series):  # one row each: a "with relays" series adds its own row
        y = legend_top + 22 * i
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        out.append(f'<line x1="{left}" y1="{y}" x2="{left + 40}" y2="{y}" stroke="{s.color}" stroke-width="2"{dash}/>')
        out.append(f'<circle cx="{left + 20}" cy="{y}" r="3.5" fill="{s.color}"/>')
        out.append(f'<text x="{left + 50}" y="{y + 4}">{escape(s.label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def plot_series(shapes: Sequence[Shape], rounds: Rounds, relays: int, color: str) -> list[Series]:
    """The plot's series of one mode: "direct" (relays 0), or "with R relays" (and then the relays' CPU too)."""
    mode = f"with {relays} relays" if relays else "direct"

    def points(figure: str) -> list[tuple[float, float, float, float]]:
        found = [(s.workers, *summary([r[s.workers, relays][figure] for r in rounds])) for s in shapes]
        return [p for p in found if p[2] > 0]  # a log scale has no 0 (CPU under /proc's clock tick of 10 ms)

    series = [Series(0, f"{mode}: coordinator CPU ms/step", color, False, points("coord_ms")),
              Series(1, f"{mode}: MB/step out (to workers)", color, False, points("mb_out")),
              Series(1, f"{mode}: MB/step in (from workers)", color, True, points("mb_in"))]
    if relays:  # where the work went: the relays' CPU, together, on the coordinator's panel
        series.append(Series(0, f"{mode}: the relays' CPU ms/step, together", color, True, points("relay_ms")))
    return [s for s in series if s.points]


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> list[dict[tuple[int, int], dict[str, Any]]]:
    """Measure, print the table, write the plot; returns the rounds ((workers, relays) -> figures; relays 0: direct)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="16,64,256,1024", help="comma-separated simulated worker counts")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all worker counts")
    parser.add_argument("--simulators", type=int, default=2, help="simulator processes (one per core); with "
                        "relays, at least one per relay")
    parser.add_argument("--plot", type=Path, default=None, help="write an SVG plot here")
    parser.add_argument("--relays", type=int, default=DEFAULT_RELAYS,
                        help="also measure every worker count through this many relay processes, the workers "
                        "split evenly among them (0: direct only).  The default, 4, is a relay per host for 4 hosts: "
                        "4 to 256 workers a relay over the default worker counts, and few enough processes for the "
                        "2 cores this benchmark is run on; at most the smallest worker count")
    parser.add_argument("--data-dir", default=None, help="MNIST directory (default: $MNIST_DIR, then the cache)")
    args = parser.parse_args(argv)
    try:
        shapes = [shape_for(int(w)) for w in args.workers.split(",")]
    except ValueError as err:
        parser.error(f"--workers: {err}")
    if args.steps < 1 or args.rounds < 1 or args.simulators < 1:
        parser.error("--steps, --rounds and --simulators must be >= 1")
    if not 0 <= args.relays <= min(s.workers for s in shapes):
        parser.error(f"--relays {args.relays}: must be between 0 and the smallest worker count "
                     f"({min(s.workers for s in shapes)}): every relay serves at least one worker")
    for s in shapes:  # an epoch's end evaluates the test set: it must not fall inside the clock
        if WARMUP + args.steps >= steps_per_epoch(60000, s.batch):
            parser.error(f"--steps {args.steps}: at a batch of {s.batch}, warm-up and steps must stay within an epoch "
                         f"({steps_per_epoch(60000, s.batch) - 1 - WARMUP} steps at most)")
    modes = [0, args.relays] if args.relays else [0]
    logging.basicConfig(level=logging.WARNING)
    # Its warnings name workers one by one (hundreds of "overtaken by a backup" at 1,024 workers) and would
    # bury the table; what they report is counted in each round's line.
    logging.getLogger("coordinator").setLevel(logging.ERROR)
    tune_malloc()
    # The coordinator holds a descriptor per connected worker: at a soft limit of 1,024, some of 1,024
    # workers cannot connect and the run waits for them until it gives up.  The relays inherit the limit.
    needed = max(s.workers for s in shapes) + 256
    if raise_fd_limit(needed) < needed:
        print(f"warning: the open-file limit is below {needed}: not every worker may connect", flush=True)
    data = load_mnist(args.data_dir)
    print(f"{args.steps} timed steps after {WARMUP} warm-up, {args.rounds} rounds, {args.simulators} simulator "
          f"processes, {f'direct and through {args.relays} relays, ' if args.relays else ''}{os.cpu_count()} cores",
          flush=True)
    rounds: list[dict[tuple[int, int], dict[str, Any]]] = []
    for i in range(args.rounds):
        rounds.append({})
        for s in shapes:
            for relays in modes:  # interleaved: a change of the machine's load falls on both modes alike
                rounds[-1][s.workers, relays] = r = measure(data, s, args.steps, args.simulators, relays)
                via = f"through {relays} relays" if relays else "direct"
                relay_line = (f"{r['relay_ms']:.0f} relays CPU ms/step, units cut for {r['members_min']} members "
                              f"of {r['planned_min']} workers' capacity (fewest in a step), " if relays else "")
                print(f"round {i + 1}: {s.workers} workers {via}: {r['coord_ms']:.1f} coordinator CPU ms/step, "
                      f"{r['mb_out']:.1f} MB/step out, {relay_line}{r['steps_per_s']:.2f} steps/s, "
                      f"{r['backups']:.1f} backup tasks/step, at least {r['tasked_min']} workers given work per "
                      "step; messages refused in the whole run: "
                      f"{', '.join(f'{n} {why}' for why, n in sorted(r['rejected'].items())) or 'none'}", flush=True)
    print(table(shapes, modes, rounds))
    print(f"Medians of {args.rounds} rounds [min-max].  With {os.cpu_count()} cores shared by the coordinator, the "
          "simulators and the relays, steps/s and samples/s also measure the simulators and relays (their CPU per "
          "step in their columns); coordinator CPU and MB per step do not.  Relays 0: the workers connect to the "
          "coordinator directly.")
    if args.plot is not None:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        subtitle = (f"median of {args.rounds} round(s), bars: min-max; {args.steps} steps each; batch max(128, 2 x "
                    f"workers), a shard per worker; {os.cpu_count()} cores")
        series = [x for relays, color in zip(modes, ("#1f77b4", "#d62728"))
                  for x in plot_series(shapes, rounds, relays, color)]
        args.plot.write_text(svg_plot(series, "One coordinator, simulated workers: its cost per step", subtitle))
        print(f"plot written to {args.plot}")
    return rounds


if __name__ == "__main__":
    main()

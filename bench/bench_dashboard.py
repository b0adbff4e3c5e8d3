"""What dashboard clients cost a run: the coordinator's CPU time per step, with and without pollers.

    python bench/bench_dashboard.py [--steps 300] [--pollers 4] [--rounds 2]

Each round runs the same short training (2 local workers, --max-steps N) twice:
undisturbed, and with `--pollers` clients requesting /api/status in a tight loop
(no pause between requests, like the attack review's). Printed: the coordinator
process's own CPU milliseconds per step (its threads, not its workers) and wall
seconds, each with its ratio to the undisturbed run, and the requests answered.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests")]

from procs import free_port  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (all its threads, not its children) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(steps: int, pollers: int, tmp: Path) -> tuple[float, float, int]:
    """(coordinator CPU s, wall s, requests answered) of one run."""
    port = free_port()
    cmd = [sys.executable, "-m", "coordinator", "--workers", "2", "--max-steps", str(steps), "--checkpoint-dir",
           "off", "--output", str(tmp / "m.npz"), "--metrics-port", str(port)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    done, answered = threading.Event(), [0]

    def poll() -> None:
        while not done.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5) as r:
                    r.read()
                answered[0] += 1
            except OSError:
                time.sleep(0.05)  # not serving yet, or already gone

    threads = [threading.Thread(target=poll, daemon=True) for _ in range(pollers)]
    start = time.monotonic()
    for t in threads:
        t.start()
    cpu = 0.0
    for line in proc.stderr:  # the "done" line comes after the training, before the process winds down
        if "done:" in line:
            cpu = cpu_seconds(proc.pid)
            break
    wall = time.monotonic() - start
    done.set()
    proc.wait(timeout=60)
    for t in threads:
        t.join(timeout=10)
    return cpu, wall, answered[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--pollers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    quiet, polled = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            quiet.append(run(args.steps, 0, Path(tmp)))
            polled.append(run(args.steps, args.pollers, Path(tmp)))
    q_cpu, q_wall = (statistics.median(r[i] for r in quiet) for i in (0, 1))
    p_cpu, p_wall = (statistics.median(r[i] for r in polled) for i in (0, 1))
    requests = statistics.median(r[2] for r in polled)
    print(f"undisturbed: {1000 * q_cpu / args.steps:.2f} coordinator CPU ms/step, {q_wall:.1f} s")
    print(f"{args.pollers} pollers: {1000 * p_cpu / args.steps:.2f} coordinator CPU ms/step "
          f"(x{p_cpu / q_cpu:.2f}), {p_wall:.1f} s (x{p_wall / q_wall:.2f}), {requests:.0f} requests answered")


if __name__ == "__main__":
    main()

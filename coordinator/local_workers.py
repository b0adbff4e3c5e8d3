"""Worker processes the coordinator starts on its own machine, and keeps running.

Each is `python -m worker` with BLAS pinned to one thread, at a lower priority than the
coordinator (NICENESS).  A local worker that
dies while training goes on is replaced; at the end they are told to shut down,
then terminated, then killed, each after a short grace period.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

from lenet.runtime import single_thread_blas_env

log = logging.getLogger("coordinator")

# Local workers run this much nicer than the coordinator.  Its work between two steps is on the
# critical path (every worker waits for the next parameters), and on a machine with one worker
# per core a woken worker would otherwise preempt it while it sends: measured, the time from a
# step's last result to the next step's work sent fell from 3.7 to 1.5 ms at 2 workers.  When the
# coordinator waits, the workers have the cores to themselves as before.
NICENESS = 5


def stop_processes(procs: list[subprocess.Popen], grace: float, kill_after: float = 1.0) -> None:
    """Give `procs` `grace` seconds to exit on their own (told to stop), then SIGTERM; kill what is left
    `kill_after` seconds later.  Returns when every one has exited."""
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class LocalWorkers:
    def __init__(self, count: int, endpoint: str, extra_args: list[str] | None = None):
        self.endpoint = endpoint
        self.extra_args = extra_args or []
        self.procs: list[subprocess.Popen] = [self._spawn(i) for i in range(count)]
        self._last_check = 0.0

    def _spawn(self, index: int) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "--connect", self.endpoint, "--name", f"local-{index}",
             *self.extra_args],
            env=single_thread_blas_env(), stdin=subprocess.DEVNULL,
        )
        try:
            os.setpriority(os.PRIO_PROCESS, proc.pid, os.getpriority(os.PRIO_PROCESS, 0) + NICENESS)
        except OSError:  # it exited already: supervise() replaces it
            pass
        return proc

    def supervise(self) -> list[int]:
        """Replace local workers that died (checked at most 4 times a second); returns their pids."""
        now = time.monotonic()
        if now - self._last_check < 0.25:
            return []
        self._last_check = now
        exited = []
        for i, proc in enumerate(self.procs):
            code = proc.poll()
            if code is not None:
                log.warning("local worker %d (pid %d) exited with status %d: starting a replacement", i, proc.pid, code)
                exited.append(proc.pid)
                self.procs[i] = self._spawn(i)
        return exited

    def stop(self, grace: float = 3.0) -> None:
        """Wait for the workers to exit after Shutdown; terminate, then kill, stragglers."""
        stop_processes(self.procs, grace)

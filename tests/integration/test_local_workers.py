"""Local worker processes as the coordinator starts them."""

import os

from coordinator.local_workers import NICENESS, LocalWorkers


def test_local_workers_run_nicer_than_the_coordinator(mnist_dir):
    """The coordinator's work between two steps is on the critical path: the workers it starts yield to it."""
    workers = LocalWorkers(2, "tcp://127.0.0.1:9")  # nobody listens: they keep trying to register
    try:
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        assert [os.getpriority(os.PRIO_PROCESS, p.pid) for p in workers.procs] == [min(19, ours + NICENESS)] * 2
    finally:
        workers.stop(grace=0.1)
    assert all(p.poll() is not None for p in workers.procs)

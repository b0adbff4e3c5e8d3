"""A worker whose coordinator is gone: it says why it waits, exits 0 when told the run is over or when it
gives up (--give-up-after), so that compose's restart policy (on-failure) leaves it down."""

import logging
import time

import pytest

from procs import free_port, worker
from worker.client import Worker, WorkerConfig


def test_a_waiting_worker_says_why_and_gives_up_when_asked(caplog):
    caplog.set_level(logging.INFO, "worker")
    config = WorkerConfig(connect=f"tcp://127.0.0.1:{free_port()}", name="w", waiting_note_every=0.5,
                          give_up_after=1.6, max_backoff=0.25)
    start = time.monotonic()
    assert Worker(config).run() == "gave up"
    assert time.monotonic() - start < 10
    lines = [r.getMessage() for r in caplog.records]
    notes = [line for line in lines if line.startswith("still no coordinator")]
    assert len(notes) >= 2 and "giving up after 2 s" in notes[0], lines
    assert "giving up (--give-up-after 2)" in lines[-1]


def test_without_give_up_the_note_says_to_stop_it(caplog):
    caplog.set_level(logging.INFO, "worker")
    w = Worker(WorkerConfig(connect=f"tcp://127.0.0.1:{free_port()}", name="w", waiting_note_every=0.3,
                            max_backoff=0.25))
    original = w._send

    def stop_after_a_while(msg):  # the worker's own loop: stopped once it has said why it waits
        if any(r.getMessage().startswith("still no coordinator") for r in caplog.records):
            w.stopping = True
        original(msg)

    w._send = stop_after_a_while
    assert w.run() == "stopped"
    assert any("stop this worker if the run is over" in r.getMessage() for r in caplog.records)


def test_the_process_exits_0_when_it_gives_up(tmp_path, procs):
    proc = worker(tmp_path, f"tcp://127.0.0.1:{free_port()}", "w0", "--give-up-after", "1")
    procs.append(proc)
    assert proc.wait(timeout=30) == 0, proc.log()
    assert "giving up" in proc.log() and "exiting (gave up)" in proc.log()


@pytest.mark.parametrize("value", ["0", "nan", "inf", "-3"])
def test_a_bad_give_up_after_is_refused(value):
    with pytest.raises(ValueError, match="give up after must be > 0"):
        WorkerConfig(connect="tcp://127.0.0.1:1", give_up_after=float(value))


def test_workers_exit_0_when_the_run_finished(tmp_path, procs):
    """The coordinator's Shutdown ("training finished") ends an external worker with status 0: under
    compose's restart: on-failure it stays down instead of waiting for a coordinator that has gone."""
    from procs import coordinator

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    coord = coordinator(tmp_path, "--workers", "0", "--bind", endpoint, "--max-steps", "3", "--train-subset", "384",
                        "--checkpoint-dir", "off", "--output", str(tmp_path / "m.npz"))
    procs.append(coord)
    w = worker(tmp_path, endpoint, "w0")
    procs.append(w)
    assert coord.wait(timeout=120) == 0, coord.log()
    assert w.wait(timeout=30) == 0, w.log()
    assert "coordinator ended the run: training finished" in w.log() and "exiting (shutdown)" in w.log()

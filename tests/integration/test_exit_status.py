"""A finished run's exit status is 0 even when a supervisor's SIGTERM lands while the process winds down."""

import signal

import pytest

from procs import Proc, coordinator


@pytest.mark.parametrize("command", ["coordinator", "lenet.train"])
def test_sigterm_right_after_done_exits_0(command, mnist_dir, tmp_path, procs):
    args = ["--max-steps", "3", "--train-subset", "384", "--output", str(tmp_path / "m.npz")]
    if command == "coordinator":
        proc = coordinator(tmp_path, "--workers", "1", "--checkpoint-dir", "off", *args)
    else:
        proc = Proc(["-m", "lenet.train", *args], tmp_path / "train.log", PYTHONUNBUFFERED="1")
    procs.append(proc)
    proc.wait_for("model saved to", timeout=120)
    proc.signal(signal.SIGTERM)  # at once: the process is tearing down (or about to)
    assert proc.wait(timeout=60) == 0, proc.log()
    assert (tmp_path / "m.npz").exists()

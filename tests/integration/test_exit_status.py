"""A finished run's exit status is 0 even when a supervisor's SIGTERM lands while the process winds down."""

import signal

import pytest

from lenet.model import PARAM_SHAPES
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


def test_sigterm_during_training_interrupts_the_trainer_with_130_and_one_line(mnist_dir, tmp_path, procs):
    """The trainer has no checkpoint to write: a SIGTERM mid-run is reported like Ctrl-C, not killed with -15."""
    proc = Proc(["-m", "lenet.train", "--epochs", "3", "--train-subset", "3840", "--output", str(tmp_path / "m.npz")],
                tmp_path / "train.log", PYTHONUNBUFFERED="1")
    procs.append(proc)
    proc.wait_for("epoch 1/", timeout=120)
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130, proc.log()
    assert "lenet.train: interrupted" in proc.log()
    assert "Traceback" not in proc.log()
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.parametrize("command", ["coordinator", "lenet.train"])
def test_a_failed_final_write_keeps_the_trained_model_and_says_where(command, mnist_dir, tmp_path, procs):
    """The output's directory is replaced by a file during the run (as good as a full disk for the write):
    exit 4, and the one-line error names where the model is: the checkpoint directory, else a temporary one."""
    import re
    import shutil

    from procs import params

    out_dir, temp = tmp_path / "out", tmp_path / "tmp"
    out_dir.mkdir()
    temp.mkdir()
    args = ["--max-steps", "60", "--train-subset", "3840", "--output", str(out_dir / "m.npz")]  # 2 epochs
    if command == "coordinator":
        proc = coordinator(tmp_path, "--workers", "1", "--checkpoint-dir", str(tmp_path / "ckpt"), *args)
        started = "training:"
    else:
        proc = Proc(["-m", "lenet.train", *args], tmp_path / "train.log", PYTHONUNBUFFERED="1", TMPDIR=str(temp))
        started = "epoch 1/"  # after the start's check of --output, with 30 steps to go
    procs.append(proc)
    proc.wait_for(started, timeout=120)
    shutil.rmtree(out_dir)  # it holds the run log by now
    out_dir.write_text("in the way")
    assert proc.wait(timeout=300) == 4, proc.log()
    kept = re.search(r"the trained model was saved to (\S+) instead", proc.log())
    assert kept, proc.log()
    where = tmp_path / "ckpt" if command == "coordinator" else temp
    assert kept.group(1).startswith(str(where)), kept.group(1)
    assert set(params(kept.group(1))) == set(PARAM_SHAPES)

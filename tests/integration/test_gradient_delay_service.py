"""`--gradient-delay 1` through the service: the next step is handed out before this one is applied, and
the run is still one deterministic sequence of numbers.

Each step's gradient is computed with the parameters before the previous update, so
the coordinator's work and the messages overlap the workers' computing.  The
promise is the synchronous run's: the parameters equal the trainer's with the same
flag, bit for bit, whatever the number of workers, their failures, relays and
resumes.
"""

import signal
import time

import pytest

from procs import Proc, coordinator, external_workers, free_port, identical, params, trainer_params, worker

STEPS = 120
DELAY = ("--gradient-delay", "1")
FAST_FAILURE = ("--heartbeat-timeout", "2", "--task-timeout", "5")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mnist_dir):
    """The trainer's parameters with the delay: what every service run must reproduce exactly."""
    return trainer_params(tmp_path_factory.mktemp("delayed"), "--max-steps", str(STEPS), *DELAY)


def service(tmp, procs, *args: str, log_name: str = "coordinator.log") -> Proc:
    proc = coordinator(tmp, "--max-steps", str(STEPS), "--output", str(tmp / "m.npz"), *DELAY, *args,
                       log_name=log_name)
    procs.append(proc)
    return proc


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_bit_identical_to_the_delayed_trainer_for_any_worker_count(workers, reference, tmp_path, procs):
    proc = service(tmp_path, procs, "--workers", str(workers), "--checkpoint-dir", "off")
    assert proc.wait() == 0, proc.log()
    assert "one step behind (--gradient-delay 1)" in proc.log()
    assert identical(params(tmp_path / "m.npz"), reference)


def test_the_delay_is_another_run(reference, tmp_path):
    """The flag changes the numbers (so the tests above test something): the synchronous run differs."""
    assert not identical(trainer_params(tmp_path, "--max-steps", str(STEPS)), reference)


def test_verifying_every_unit_changes_nothing(reference, tmp_path, procs):
    """Every unit computed twice, the second opinion given with the step's own (older) parameters."""
    proc = service(tmp_path, procs, "--workers", "2", "--checkpoint-dir", "off", "--verify-fraction", "1")
    assert proc.wait() == 0, proc.log()
    assert "mismatch" not in proc.log() and "banned" not in proc.log()
    assert identical(params(tmp_path / "m.npz"), reference)


def test_resume_mid_run_equals_uninterrupted(reference, tmp_path, procs):
    """A checkpoint holds the parameters the next gradient is computed with, besides the current ones."""
    ckpt = tmp_path / "ckpt"
    first = service(tmp_path, procs, "--workers", "2", "--checkpoint-dir", str(ckpt), "--max-steps", "50",
                    log_name="first.log")
    assert first.wait() == 0, first.log()
    second = service(tmp_path, procs, "--workers", "2", "--checkpoint-dir", str(ckpt), "--resume",
                     log_name="second.log")
    assert second.wait() == 0, second.log()
    assert "resuming from" in second.log() and "step 50" in second.log()
    assert identical(params(tmp_path / "m.npz"), reference)


def test_a_checkpoint_of_the_delayed_run_is_another_runs_to_a_run_without_the_delay(tmp_path, procs):
    """--resume without the flag finds no checkpoint of its own run, says why in one line, starts afresh and
    leaves the delayed run's checkpoint where it was."""
    ckpt = tmp_path / "ckpt"
    first = service(tmp_path, procs, "--workers", "1", "--checkpoint-dir", str(ckpt), "--max-steps", "20",
                    log_name="first.log")
    assert first.wait() == 0, first.log()
    kept = sorted(ckpt.glob("ckpt-*.npz"))
    second = coordinator(tmp_path, "--workers", "1", "--checkpoint-dir", str(ckpt), "--resume",
                         "--max-steps", "30", "--output", str(tmp_path / "m.npz"), log_name="second.log")
    procs.append(second)
    assert second.wait() == 0, second.log()
    assert "made with gradient_delay=1 (this run: 0)" in second.log() and "starting from scratch" in second.log()
    assert all(path.exists() for path in kept)


def test_a_worker_killed_mid_run_changes_nothing(reference, tmp_path, procs):
    # All three compute, so the one killed holds work of two steps.
    coord, _, workers = external_workers(tmp_path, procs, "--max-steps", str(STEPS), "--output",
                                         str(tmp_path / "m.npz"), *DELAY, "--checkpoint-dir", "off", *FAST_FAILURE)
    coord.wait_for("training:")
    time.sleep(0.5)
    workers[1].signal(signal.SIGKILL)
    assert coord.wait() == 0, coord.log()
    assert "worker w1 lost" in coord.log() or "w1 was overtaken" in coord.log()
    assert identical(params(tmp_path / "m.npz"), reference)


def test_a_relay_keeps_the_open_step_when_the_next_ones_parameters_come(reference, tmp_path, procs):
    """A relay gets the next step's parameters while its task of this step is under way (Params.lag)."""
    endpoint, listen = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    coord = service(tmp_path, procs, "--workers", "0", "--bind", endpoint, "--min-workers", "1",
                    "--checkpoint-dir", "off", *FAST_FAILURE)
    relay = Proc(["-m", "worker", "--relay", "--connect", endpoint, "--listen", listen, "--name", "relay"],
                 tmp_path / "relay.log")
    procs.append(relay)
    procs.extend(worker(tmp_path, listen, f"r{i}") for i in range(2))
    assert coord.wait() == 0, coord.log()
    assert "deadline" not in coord.log()  # no unit of the relay's was dropped and waited for
    assert identical(params(tmp_path / "m.npz"), reference)

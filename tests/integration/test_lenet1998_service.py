"""The 1998 model through the service: any number of workers, a relay, a stop and resume give the reference
trainer's bits, and a checkpoint of one model is refused in one line by a run of the other."""

import pytest

from procs import Proc, coordinator, free_port, identical, params, trainer_params, worker

STEPS = 25
MODEL = ("--model", "lenet5-1998", "--schedule", "paper", "--lr", "0.003", "--max-steps", str(STEPS))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mnist_dir):
    """`python -m lenet.train` with the service's shard count: the bits every run must give."""
    return trainer_params(tmp_path_factory.mktemp("reference98"), *MODEL)


@pytest.mark.parametrize("workers", [1, 3])
def test_bit_identical_to_the_trainer_for_any_worker_count(workers, reference, tmp_path, procs):
    proc = coordinator(tmp_path, "--workers", str(workers), "--checkpoint-dir", "off",
                       "--output", str(tmp_path / "m.npz"), *MODEL)
    procs.append(proc)
    assert proc.wait() == 0, proc.log()
    assert identical(params(tmp_path / "m.npz"), reference)


def test_a_relay_of_two_workers_gives_the_same_bits(reference, tmp_path, procs):
    endpoint, listen = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    coord = coordinator(tmp_path, "--workers", "1", "--bind", endpoint, "--min-workers", "2", "--checkpoint-dir", "off",
                        "--output", str(tmp_path / "m.npz"), *MODEL)
    procs.append(coord)
    # Workers and relays started by hand register with the model they compute: --model as the coordinator's.
    procs.append(Proc(["-m", "worker", "--relay", "--connect", endpoint, "--listen", listen, "--name", "relay0",
                       "--model", "lenet5-1998"], tmp_path / "relay0.log"))
    procs.extend(worker(tmp_path, listen, f"r0w{i}", "--model", "lenet5-1998") for i in range(2))
    assert coord.wait() == 0, coord.log()
    assert identical(params(tmp_path / "m.npz"), reference)


def test_a_checkpoint_of_the_1998_model_is_not_resumed_by_a_lenet5_run(tmp_path, procs):
    """Another model is another run: `--resume` says in one line why none fits, starts afresh, deletes nothing."""
    ckpt = tmp_path / "ckpt"
    first = coordinator(tmp_path, "--workers", "1", "--checkpoint-dir", str(ckpt), "--checkpoint-every", "5",
                        "--output", str(tmp_path / "a.npz"), *MODEL)
    procs.append(first)
    assert first.wait() == 0, first.log()
    second = coordinator(tmp_path, "--workers", "1", "--checkpoint-dir", str(ckpt), "--resume", "--max-steps", "30",
                         "--output", str(tmp_path / "b.npz"), log_name="second.log")
    kept = set(ckpt.glob("ckpt-*.npz"))
    procs.append(second)
    assert second.wait() == 0, second.log()
    line = next(x for x in second.log().splitlines() if "starting from scratch" in x)
    assert "no checkpoint of this run" in line and "lenet5-1998" in line and "Traceback" not in second.log()
    assert kept <= set(ckpt.glob("ckpt-*.npz"))


def test_a_run_stopped_and_resumed_gives_the_uninterrupted_bits(reference, tmp_path, procs):
    ckpt = tmp_path / "ckpt"
    first = coordinator(tmp_path, "--workers", "2", "--checkpoint-dir", str(ckpt), "--checkpoint-every", "5",
                        "--output", str(tmp_path / "a.npz"), *MODEL[:-1], "12")  # --max-steps 12
    procs.append(first)
    assert first.wait() == 0, first.log()
    assert len(list(ckpt.glob("ckpt-*-000000012.npz"))) == 1
    second = coordinator(tmp_path, "--workers", "2", "--checkpoint-dir", str(ckpt), "--resume",
                         "--output", str(tmp_path / "b.npz"), *MODEL, log_name="second.log")
    procs.append(second)
    assert second.wait() == 0, second.log()
    assert "resuming from" in second.log() and "step 12" in second.log()
    assert identical(params(tmp_path / "b.npz"), reference)

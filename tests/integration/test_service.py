"""The training service with real processes and sockets on loopback.

The central promise: after a fixed number of steps the parameters are bit-identical
whatever the number of workers, their arrival order, their failures, and whether
the coordinator was stopped and resumed; and they match the single-process trainer
to float32 rounding.
"""

import signal
import time

import numpy as np
import pytest

from procs import coordinator, external_workers, free_port, identical, params, scrape, trainer_params, worker

STEPS = 150  # 19,200 samples at the default batch of 128: a few seconds per run
FAST_FAILURE = ("--heartbeat-timeout", "2", "--task-timeout", "5")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mnist_dir):
    """A one-worker run: the parameters every other run must reproduce exactly."""
    tmp = tmp_path_factory.mktemp("reference")
    proc = coordinator(tmp, "--workers", "1", "--max-steps", str(STEPS), "--checkpoint-dir", "off",
                       "--output", str(tmp / "ref.npz"))
    try:
        assert proc.wait() == 0, proc.log()
    finally:
        proc.stop()
    return params(tmp / "ref.npz")


@pytest.mark.parametrize("workers", [2, 3, 8])
def test_bit_identical_for_any_worker_count(workers, reference, tmp_path, procs):
    proc = coordinator(tmp_path, "--workers", str(workers), "--max-steps", str(STEPS), "--checkpoint-dir", "off",
                       "--output", str(tmp_path / "m.npz"))
    procs.append(proc)
    assert proc.wait() == 0, proc.log()
    assert f"{workers} workers" in proc.log()
    assert identical(params(tmp_path / "m.npz"), reference)


@pytest.mark.parametrize("workers", [1, 2])
def test_verifying_every_unit_changes_nothing(workers, reference, tmp_path, procs):
    """--verify-fraction 1: every unit computed twice (by the coordinator itself when it has one worker)."""
    port = free_port()
    proc = coordinator(tmp_path, "--workers", str(workers), "--max-steps", str(STEPS), "--checkpoint-dir", "off",
                       "--verify-fraction", "1", "--metrics-port", str(port), "--output", str(tmp_path / "m.npz"))
    procs.append(proc)
    seen = {}
    while proc.popen.poll() is None:
        try:
            seen = scrape(port)
        except OSError:
            pass  # not serving yet, or already gone: the last complete scrape stands
        time.sleep(0.2)
    assert proc.wait() == 0, proc.log()
    assert seen["lenet_units_verified_total"] >= 0.9 * seen["lenet_steps_total"] * (2 if workers == 2 else 1)
    assert seen["lenet_verify_mismatches_total"] == 0 and seen["lenet_workers_banned_total"] == 0
    assert identical(params(tmp_path / "m.npz"), reference)


def test_bit_identical_to_single_process_trainer_with_same_shards(reference, tmp_path, procs):
    assert identical(trainer_params(tmp_path, "--max-steps", str(STEPS)), reference)


def test_agrees_with_whole_batch_trainer_to_float32_rounding(mnist, tmp_path, procs):
    """One gradient per batch differs from a sum of 64 shard gradients only by rounding.

    Compared after a few steps: over hundreds of steps SGD amplifies any rounding
    difference chaotically, which says nothing about correctness.
    """
    from lenet.config import TrainConfig
    from lenet.model import init_params
    from lenet.train import train

    proc = coordinator(tmp_path, "--workers", "2", "--max-steps", "10", "--checkpoint-dir", "off",
                       "--output", str(tmp_path / "m.npz"))
    procs.append(proc)
    assert proc.wait() == 0, proc.log()
    single = train(TrainConfig(max_steps=10), mnist, log=lambda s: None, shards=1).params
    dist = params(tmp_path / "m.npz")
    init = init_params(0)
    for k in dist:
        moved = np.abs(single[k] - init[k]).max()
        assert np.abs(dist[k] - single[k]).max() <= 1e-4 * moved, k


def external(tmp_path, procs, *extra, workers=3, min_workers=3):
    return external_workers(tmp_path, procs, "--max-steps", str(STEPS), "--output", str(tmp_path / "m.npz"),
                            *FAST_FAILURE, *extra, workers=workers, min_workers=min_workers)


def test_worker_killed_mid_run_changes_nothing(reference, tmp_path, procs):
    coord, _, workers = external(tmp_path, procs, "--checkpoint-dir", "off")
    coord.wait_for("training:")
    time.sleep(0.5)
    workers[1].signal(signal.SIGKILL)
    assert coord.wait() == 0, coord.log()
    # Noticed dead at the heartbeat timeout, or (a short run) only overtaken by a backup before that.
    assert "worker w1 lost" in coord.log() or "w1 was overtaken" in coord.log()
    assert identical(params(tmp_path / "m.npz"), reference)




def test_join_mid_training_and_metrics_over_http(tmp_path, procs):
    steps = 400  # long enough for a worker started after training began to join well before the end
    port = free_port()
    coord, endpoint, _ = external(tmp_path, procs, "--checkpoint-dir", "off", "--metrics-port", str(port),
                                  "--max-steps", str(steps), workers=1, min_workers=1)
    coord.wait_for("training:")
    first = scrape(port)
    late = worker(tmp_path, endpoint, "late")
    procs.append(late)
    coord.wait_for("worker late joined (2 live)")
    deadline, seen = time.monotonic() + 30, {}
    while time.monotonic() < deadline and seen.get("lenet_worker_compute_seconds_total{worker=late}", 0) == 0:
        seen = scrape(port)
        time.sleep(0.05)
    assert seen["lenet_worker_compute_seconds_total{worker=late}"] > 0  # the late joiner was put to work
    assert seen["lenet_workers_alive"] == 2
    assert seen["lenet_samples_total"] > first["lenet_samples_total"]
    assert abs(seen["lenet_samples_total"] - 128 * seen["lenet_steps_total"]) <= 128
    assert seen["lenet_sent_bytes_total"] > 0 and seen["lenet_received_bytes_total"] > 0
    assert seen["lenet_step_duration_seconds_count"] >= seen["lenet_steps_total"] - 1
    assert seen["lenet_epoch"] == 1
    assert coord.wait() == 0, coord.log()
    assert identical(params(tmp_path / "m.npz"), trainer_params(tmp_path, "--max-steps", str(steps)))


def test_resume_from_checkpoint_equals_uninterrupted(reference, tmp_path, procs):
    ckpt = tmp_path / "ckpt"
    first = coordinator(tmp_path, "--workers", "2", "--max-steps", "60", "--checkpoint-dir", str(ckpt),
                        "--output", str(tmp_path / "part.npz"), log_name="first.log")
    procs.append(first)
    assert first.wait() == 0, first.log()
    assert len(list(ckpt.glob("ckpt-*-000000060.npz"))) == 1
    second = coordinator(tmp_path, "--workers", "2", "--max-steps", str(STEPS), "--checkpoint-dir", str(ckpt),
                         "--resume", "--output", str(tmp_path / "m.npz"), log_name="second.log")
    procs.append(second)
    assert second.wait() == 0, second.log()
    assert "resuming from" in second.log() and "step 60" in second.log()
    assert identical(params(tmp_path / "m.npz"), reference)


def test_sigterm_checkpoints_and_resume_finishes_identically(reference, tmp_path, procs):
    ckpt = tmp_path / "ckpt"
    args = ("--workers", "2", "--max-steps", str(STEPS), "--checkpoint-dir", str(ckpt),
            "--output", str(tmp_path / "m.npz"))
    first = coordinator(tmp_path, *args, log_name="first.log")
    procs.append(first)
    first.wait_for("training:")
    time.sleep(0.2)  # stop early in the run, so it cannot have finished on a fast machine
    stopped_at = time.monotonic()
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=10) == 130, first.log()
    assert time.monotonic() - stopped_at < 10
    assert "stopped by signal" in first.log() and "with --resume continues from there" in first.log()
    assert not (tmp_path / "m.npz").exists()
    second = coordinator(tmp_path, *args, "--resume", log_name="second.log")
    procs.append(second)
    assert second.wait() == 0, second.log()
    assert identical(params(tmp_path / "m.npz"), reference)


def test_an_old_run_resumes_with_its_own_shard_count(tmp_path, procs):
    """A checkpoint made with --shards 8 (the old default) goes on with 8 shards unless --shards says otherwise."""
    def run(name: str, *args: str) -> str:
        proc = coordinator(tmp_path, "--workers", "2", "--output", str(tmp_path / f"{name}.npz"), *args,
                           log_name=f"{name}.log")
        procs.append(proc)
        assert proc.wait() == 0, proc.log()
        return proc.log()

    run("whole", "--shards", "8", "--max-steps", "20", "--checkpoint-dir", "off")
    for name in ("resumed", "reshard"):
        run(f"{name}-first", "--shards", "8", "--max-steps", "10", "--checkpoint-dir", str(tmp_path / name))
    log = run("resumed", "--max-steps", "20", "--checkpoint-dir", str(tmp_path / "resumed"), "--resume")
    assert "in 8 shards" in log
    assert identical(params(tmp_path / "resumed.npz"), params(tmp_path / "whole.npz"))
    log = run("reshard", "--max-steps", "20", "--checkpoint-dir", str(tmp_path / "reshard"), "--resume",
              "--shards", "16")
    assert "in 16 shards" in log and "made with --shards 8 with --shards 16, as asked" in log


def test_resume_with_other_hyperparameters_is_another_run_and_keeps_the_first(tmp_path, procs):
    ckpt = tmp_path / "ckpt"
    first = coordinator(tmp_path, "--workers", "1", "--max-steps", "5", "--checkpoint-dir", str(ckpt),
                        "--output", str(tmp_path / "m.npz"), log_name="first.log")
    procs.append(first)
    assert first.wait() == 0, first.log()
    kept = sorted(ckpt.glob("ckpt-*.npz"))
    second = coordinator(tmp_path, "--workers", "1", "--max-steps", "10", "--batch-size", "64", "--checkpoint-dir",
                         str(ckpt), "--resume", "--output", str(tmp_path / "m64.npz"), log_name="second.log")
    procs.append(second)
    assert second.wait() == 0, second.log()
    line = next(x for x in second.log().splitlines() if "starting from scratch" in x)
    assert "no checkpoint of this run" in line and "batch_size=128 (this run: 64)" in line
    assert set(kept) <= set(ckpt.glob("ckpt-*.npz")) and "Traceback" not in second.log()


def test_parameters_travel_once_per_step_and_every_worker_has_a_unit(tmp_path, procs):
    """3 workers share 64 shards a step: each gets a unit of 21 or 22 shards, and the parameters once.

    Each says it has a core (--cores 3): on this machine's fewer cores one would otherwise stand by."""
    port, metrics_ports = free_port(), [free_port() for _ in range(3)]
    endpoint = f"tcp://127.0.0.1:{port}"
    coord = coordinator(tmp_path, "--workers", "0", "--bind", endpoint, "--min-workers", "3", "--max-steps", "100",
                        "--checkpoint-dir", "off", "--output", str(tmp_path / "m.npz"))
    procs.append(coord)
    ws = [worker(tmp_path, endpoint, f"w{i}", "--metrics-port", str(p), "--cores", "3")
          for i, p in enumerate(metrics_ports)]
    procs.extend(ws)
    coord.wait_for("training:")
    seen = {}
    while coord.popen.poll() is None:
        try:
            seen = {p: scrape(p) for p in metrics_ports}
        except OSError:
            break  # the workers were told to exit: use the last complete scrape
        time.sleep(0.2)
    assert seen, coord.log()
    received = [m["lenet_worker_params_total"] for m in seen.values()]
    assert min(received) >= 0.9 * max(received) and max(received) >= 50, received  # all of them, nearly every step
    for m in seen.values():
        assert m["lenet_worker_params_total"] <= 100  # at most once per step
        # A task with every broadcast (a scrape may fall between a step's parameters and its task).
        assert m["lenet_worker_tasks_total"] >= m["lenet_worker_params_total"] - 1
        # Its own time computing has a name apart from the coordinator's per-worker accepted seconds.
        assert m["lenet_worker_busy_seconds_total"] > 0 and "lenet_worker_compute_seconds_total" not in m
    assert coord.wait() == 0

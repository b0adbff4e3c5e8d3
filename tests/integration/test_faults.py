"""Faults the service survives, with real processes on loopback.

Every run here trains the same configuration (3 epochs over the first 12,800
images) and must end with exactly the parameters of an undisturbed one-worker run,
having applied every sample of every epoch exactly once.
"""

import os
import random
import signal
import time
from pathlib import Path

import pytest

from hostile import ScriptedWorker, nan_answer
from procs import coordinator, free_port, identical, params, scrape, trainer_params, worker

SUBSET, EPOCHS = 12800, 3
CONFIG = ("--train-subset", str(SUBSET), "--epochs", str(EPOCHS))


def history(path: Path) -> list[dict]:
    from lenet.train import load_model

    return load_model(path)[1]["history"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mnist_dir):
    tmp = tmp_path_factory.mktemp("faults-reference")
    proc = coordinator(tmp, *CONFIG, "--workers", "1", "--checkpoint-dir", "off", "--output", str(tmp / "ref.npz"))
    try:
        assert proc.wait() == 0, proc.log()
    finally:
        proc.stop()
    assert [h["samples"] for h in history(tmp / "ref.npz")] == [SUBSET] * EPOCHS
    return params(tmp / "ref.npz")




def children(pid: int, marker: str) -> list[int]:
    """Live child processes of `pid` whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and marker in cmdline and " Z " not in stat:
            found.append(int(entry.name))
    return found


def test_workers_killed_every_second_change_nothing(reference, tmp_path, procs):
    """kill -9 a random local worker again and again; the supervisor starts replacements."""
    coord = coordinator(tmp_path, *CONFIG, "--workers", "8", "--heartbeat-timeout", "2", "--checkpoint-dir", "off",
                        "--output", str(tmp_path / "m.npz"))
    procs.append(coord)
    coord.wait_for("training:")
    rng, kills = random.Random(0), 0
    while coord.popen.poll() is None:
        time.sleep(rng.uniform(0.5, 1.5))
        victims = children(coord.pid, "-m worker")
        if victims and coord.popen.poll() is None:
            os.kill(rng.choice(victims), signal.SIGKILL)
            kills += 1
    assert coord.wait() == 0, coord.log()
    assert kills >= 3
    assert coord.log().count("starting a replacement") >= 3
    assert [h["samples"] for h in history(tmp_path / "m.npz")] == [SUBSET] * EPOCHS
    assert identical(params(tmp_path / "m.npz"), reference)


def test_hung_worker_is_bypassed_then_put_back_to_work(tmp_path, procs):
    """SIGSTOP one of three workers: the run goes on without it; SIGCONT: its stale answers are refused, it works again.

    Every wait is for an event, not a fixed time, so that a faster machine (a shorter
    run) cannot end the run before the worker is back.
    """
    config = ("--train-subset", str(SUBSET), "--epochs", "8")  # leaves time to be put back to work
    port, metrics_port = free_port(), free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    coord = coordinator(tmp_path, *config, "--workers", "0", "--bind", endpoint, "--min-workers", "3",
                        "--task-timeout", "2", "--heartbeat-timeout", "60", "--checkpoint-dir", "off",
                        "--metrics-port", str(metrics_port), "--output", str(tmp_path / "m.npz"))
    procs.append(coord)
    ws = [worker(tmp_path, endpoint, f"w{i}", "--cores", "3") for i in range(3)]  # all three compute
    procs.extend(ws)
    coord.wait_for("training:")
    time.sleep(0.5)
    ws[1].signal(signal.SIGSTOP)
    # Its units are taken back at the deadline, or overtaken before it by a backup on an idle worker.
    deadline = time.monotonic() + 30
    while not ("missed their 2 s deadline on w1" in coord.log() or "w1 was overtaken" in coord.log()):
        assert time.monotonic() < deadline and coord.popen.poll() is None, coord.log()
        time.sleep(0.05)
    before = scrape(metrics_port)
    time.sleep(1.0)
    stalled = scrape(metrics_port)
    assert stalled["lenet_steps_total"] > before["lenet_steps_total"]  # the run goes on without it
    ws[1].signal(signal.SIGCONT)
    deadline, m = time.monotonic() + 30, stalled
    while time.monotonic() < deadline:
        try:
            m = scrape(metrics_port)
        except OSError:  # urllib's errors and a dropped connection: the coordinator has ended, asserted below
            break
        if m.get("lenet_worker_compute_seconds_total{worker=w1}", 0.0) > stalled.get(
                "lenet_worker_compute_seconds_total{worker=w1}", 0.0):
            break
        time.sleep(0.1)
    assert m["lenet_worker_compute_seconds_total{worker=w1}"] > stalled.get(
        "lenet_worker_compute_seconds_total{worker=w1}", 0.0), "w1 not back at work before the run ended"
    discarded = m["lenet_rejected_messages_total{reason=late}"] + m["lenet_rejected_messages_total{reason=stale_step}"]
    assert discarded >= 1  # its answers to the revoked tasks were refused
    assert m["lenet_workers_lost_total"] == 0  # slow is not dead
    assert coord.wait() == 0, coord.log()
    assert identical(params(tmp_path / "m.npz"), trainer_params(tmp_path, *config))


def test_coordinator_killed_and_resumed_finishes_identically(reference, tmp_path, procs):
    port, metrics_port = free_port(), free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    ckpt = tmp_path / "ckpt"
    every = 20
    args = (*CONFIG, "--workers", "0", "--bind", endpoint, "--min-workers", "2", "--checkpoint-dir", str(ckpt),
            "--checkpoint-every", str(every), "--resume", "--metrics-port", str(metrics_port),
            "--output", str(tmp_path / "m.npz"))
    ws = [worker(tmp_path, endpoint, f"w{i}") for i in range(2)]
    procs.extend(ws)
    rng = random.Random(1)
    for attempt in range(3):
        coord = coordinator(tmp_path, *args, log_name=f"coordinator-{attempt}.log")
        procs.append(coord)
        coord.wait_for("training:")
        deadline = time.monotonic() + 60
        while not list(ckpt.glob("ckpt-*.npz")) and time.monotonic() < deadline:
            time.sleep(0.05)  # a kill before the first checkpoint would only restart from scratch
        time.sleep(rng.uniform(0.0, 1.5))
        steps_before = scrape(metrics_port)["lenet_steps_total"]
        coord.signal(signal.SIGKILL)
        coord.wait()
        newest = max(ckpt.glob("ckpt-*.npz"))
        # What a crash mid-write leaves: a torn temporary file, and (disk damage) a torn newest file.
        (ckpt / f".{newest.name}.999.tmp").write_bytes(newest.read_bytes()[:1000])
        torn = ckpt / "ckpt-999999999.npz"
        torn.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
        restarted = coordinator(tmp_path, *args, log_name=f"resume-{attempt}.log")
        procs.append(restarted)
        restarted.wait_for("resuming from")
        assert "skipping damaged checkpoint" in restarted.log() and "ckpt-999999999.npz" in restarted.log()
        resumed_at = int(restarted.log().split("resuming from")[1].split("(step ")[1].split(")")[0])
        assert resumed_at >= steps_before - every  # at most one checkpoint interval is redone
        restarted.signal(signal.SIGKILL)
        restarted.wait()
        assert (ckpt / "ckpt-999999999.npz.damaged").exists()
        (ckpt / "ckpt-999999999.npz.damaged").unlink()
    final = coordinator(tmp_path, *args, log_name="final.log")
    procs.append(final)
    assert final.wait() == 0, final.log()
    assert all(w.popen.poll() is None or w.popen.returncode == 0 for w in ws)  # the same workers, reconnected
    assert [h["samples"] for h in history(tmp_path / "m.npz")] == [SUBSET] * EPOCHS
    assert identical(params(tmp_path / "m.npz"), reference)


def test_nan_gradients_are_refused_and_recomputed(reference, tmp_path, procs):
    port, metrics_port = free_port(), free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    coord = coordinator(tmp_path, *CONFIG, "--workers", "0", "--bind", endpoint, "--min-workers", "3",
                        "--checkpoint-dir", "off", "--metrics-port", str(metrics_port),
                        "--output", str(tmp_path / "m.npz"))
    procs.append(coord)
    ws = [worker(tmp_path, endpoint, f"w{i}") for i in range(2)]
    procs.extend(ws)
    poisoner = ScriptedWorker(endpoint, "poisoner", nan_answer)
    poisoner.start()
    try:
        assert coord.wait() == 0, coord.log()
    finally:
        poisoner.stop.set()
        poisoner.join(5)
    assert poisoner.tasks >= 1  # its first NaN, contradicted by the coordinator's own computation, bans it
    assert "non_finite" in coord.log() and "worker poisoner banned for the run" in coord.log()
    assert identical(params(tmp_path / "m.npz"), reference)


def test_failed_checkpoint_write_keeps_the_previous_and_training_goes_on(mnist, tmp_path, monkeypatch):
    """The disk fills up mid-run: the error is reported, the last good checkpoint survives."""
    import errno

    from prometheus_client import CollectorRegistry

    from coordinator import checkpoint as ckpt
    from coordinator import runs
    from coordinator.config import ServiceConfig
    from coordinator.metrics import Metrics
    from coordinator.service import run_service
    from coordinator.training import Training
    from lenet import npzfile
    from lenet.config import TrainConfig

    real_fsync, calls = os.fsync, []

    def fsync(fd):  # the 2nd checkpoint's data write fails as on a full disk
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(npzfile.os, "fsync", fsync)
    metrics = Metrics(CollectorRegistry())
    service = ServiceConfig(min_workers=1, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=5)
    training = Training(TrainConfig(max_steps=15, train_subset=2560), 8, mnist)
    outcome = run_service(training, service, metrics, local_workers=1)
    assert outcome.finished and outcome.state.step == 15
    assert metrics.registry.get_sample_value("lenet_checkpoint_failures_total") == 1
    run = runs.identity(training.config, training.num_shards, training.data.checksums).run_id
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == [f"ckpt-{run}-000000005.npz", f"ckpt-{run}-000000015.npz"]  # step 10 failed; nothing half-written
    assert ckpt.load(tmp_path / "ckpt" / f"ckpt-{run}-000000005.npz").step == 5


def test_worker_sigterm_is_a_clean_leave(tmp_path, procs, mnist_dir):
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    coord = coordinator(tmp_path, *CONFIG, "--workers", "0", "--bind", endpoint, "--min-workers", "2",
                        "--checkpoint-dir", "off", "--output", str(tmp_path / "m.npz"))
    procs.append(coord)
    ws = [worker(tmp_path, endpoint, f"w{i}") for i in range(2)]
    procs.extend(ws)
    coord.wait_for("training:")
    ws[0].signal(signal.SIGTERM)
    assert ws[0].wait(timeout=10) == 0
    coord.wait_for("worker w0 left")
    assert coord.wait() == 0, coord.log()
    assert "worker w0 lost" not in coord.log()


def test_a_failed_checkpoint_is_retried_before_the_next_scheduled_one(mnist, tmp_path, monkeypatch):
    """The write at step 10 fails; the coordinator tries again at once (retry interval 0 here, 30 s in
    service), so step 11 is checkpointed instead of waiting for step 15."""
    import errno

    from prometheus_client import CollectorRegistry

    from coordinator import checkpoint as ckpt
    from coordinator.config import ServiceConfig
    from coordinator.metrics import Metrics
    from coordinator.service import run_service
    from coordinator.training import Training
    from lenet import npzfile
    from lenet.config import TrainConfig

    real_fsync, calls = os.fsync, []

    def fsync(fd):  # the 2nd checkpoint's data write fails as on a full disk
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(npzfile.os, "fsync", fsync)
    monkeypatch.setattr(ckpt, "RETRY_EVERY", 0.0)
    metrics = Metrics(CollectorRegistry())
    service = ServiceConfig(min_workers=1, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=5)
    training = Training(TrainConfig(max_steps=15, train_subset=2560), 8, mnist)
    outcome = run_service(training, service, metrics, local_workers=1)
    assert outcome.finished and metrics.registry.get_sample_value("lenet_checkpoint_failures_total") == 1
    names = sorted(p.name.rsplit("-", 1)[1] for p in (tmp_path / "ckpt").iterdir())
    assert names == ["000000005.npz", "000000011.npz", "000000015.npz"]

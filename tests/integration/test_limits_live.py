"""Limits a run meets on real processes: a batch whose units exceed a message trains, a run whose every result
is refused stops with its reason (exit 6), and `--workers 0` without `--bind` says why nobody joins."""

import hostile as H
from procs import coordinator, free_port, identical, params, trainer_params

BIG = ("--batch-size", "10000", "--train-subset", "10000", "--epochs", "1", "--max-steps", "1")


def test_a_batch_too_large_for_one_message_per_worker_is_split_and_trains_identically(tmp_path, procs):
    """One worker, a 10,000-sample batch: its single unit's result (about 32 MB) fits no message, so the
    step is cut into more units than workers; before, every result was refused as too_large, for ever."""
    proc = coordinator(tmp_path, *BIG, "--workers", "1", "--metrics-port", "0", "--checkpoint-dir", "off",
                       "--output", str(tmp_path / "m.npz"))
    procs.append(proc)
    assert proc.wait(timeout=240) == 0, proc.log()[-3000:]
    assert "rejected message" not in proc.log()
    assert identical(params(tmp_path / "m.npz"), trainer_params(tmp_path, *BIG))


def wrong_shard_answer(task, peer):
    """Every answer names a unit that does not exist: what a worker of another protocol build might send."""
    return [H._with(peer.honest(task), first=10**6)]


def test_a_run_whose_every_result_is_refused_stops_with_the_reason(tmp_path, procs):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = coordinator(tmp_path, "--workers", "0", "--bind", endpoint, "--min-workers", "1", "--task-timeout", "1",
                       "--train-subset", "1280", "--metrics-port", "0", "--checkpoint-dir", "off")
    procs.append(proc)
    peer = H.ScriptedWorker(endpoint, "refused", wrong_shard_answer, seconds=120, reregister=True)
    peer.start()
    try:
        code = proc.wait(timeout=120)
    finally:
        peer.stop.set()
    log = proc.log()
    assert code == 6, log[-3000:]
    last = log.strip().splitlines()[-1]
    assert last.startswith("coordinator: error: every result refused") and "unknown_shard" in last, last
    assert "Traceback" not in log


def test_workers_0_without_bind_says_why_nobody_can_join(tmp_path, procs):
    proc = coordinator(tmp_path, "--workers", "0", "--metrics-port", "0", "--checkpoint-dir", "off")
    procs.append(proc)
    proc.wait_for("waiting for 1 worker")
    hint = [line for line in proc.log().splitlines() if "--workers 0 without --bind" in line]
    assert len(hint) == 1 and "--bind tcp://" in hint[0]

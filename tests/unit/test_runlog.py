"""The run log: records per step interval and per epoch, and a resume that leaves one consistent run."""

import json

import pytest

from lenet.runlog import RunLog, read_records, runlog_path, step_interval

CONFIG = {"epochs": 2, "batch_size": 128}


def epoch_stats(epoch: int, step: int) -> dict:
    return {"epoch": epoch, "step": step, "loss": 0.5 / epoch, "train_accuracy": 0.9, "test_accuracy": 0.95,
            "samples": 1280, "samples_per_second": 1000.0, "seconds": 1.28}


def run(log: RunLog, first: int, last: int, per_epoch: int = 10) -> None:
    """Steps first..last (1-based counts), closing epochs at their ends."""
    for step in range(first, last + 1):
        log.step(step, 1.0 / step, 0.01)
        if step % per_epoch == 0:
            log.epoch(epoch_stats(step // per_epoch, step))


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_next_to_the_model_and_about_twenty_step_records_an_epoch():
    assert str(runlog_path("runs/lenet5.npz")) == "runs/lenet5.jsonl"
    assert step_interval(469) == 23 and step_interval(10) == 1 and step_interval(1) == 1


def test_step_records_average_their_interval_and_close_at_the_epoch_end(tmp_path):
    log = RunLog(tmp_path / "m.jsonl", steps_per_epoch=50, config=CONFIG)  # interval 2
    run(log, 1, 51, per_epoch=50)
    log.close()
    records = lines(tmp_path / "m.jsonl")
    assert records[0] == {"kind": "start", "step": 0, "resumed": False, "steps_per_epoch": 50, "config": CONFIG}
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(2, 51, 2)) + [51]  # the stopped run's last step too
    assert steps[0]["loss"] == pytest.approx((1 / 1 + 1 / 2) / 2) and steps[0]["steps"] == 2
    assert steps[0]["epoch"] == 0.04 and steps[-1]["steps"] == 1
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1]
    assert records == log.records


def test_resume_drops_what_came_after_the_checkpoint_and_appends(tmp_path):
    path = tmp_path / "m.jsonl"
    first = RunLog(path, steps_per_epoch=10, config=CONFIG)
    run(first, 1, 17)  # the interrupted run went on past its checkpoint at step 15
    first.best(1, 10, 0.95)
    first.end(17, 0.95, 3.0)
    first.close()
    with open(path, "a") as f:
        f.write('{"kind": "step", "step": 18, "lo')  # a write cut short by a crash
    resumed = RunLog(path, steps_per_epoch=10, config=CONFIG, resume_step=15, resume_epochs=1)
    run(resumed, 16, 20)
    resumed.close()
    records = lines(path)
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]  # no epoch twice
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == list(range(1, 16)) + list(range(16, 21))  # none past 15 from the first run, none twice
    assert [r["kind"] for r in records if r["kind"] not in ("step", "epoch")] == ["start", "start"]
    at = next(i for i, r in enumerate(records) if r["kind"] == "start" and r["resumed"])
    assert records[at]["step"] == 15 and records[at - 1] == {**records[at - 1], "kind": "step", "step": 15}
    assert read_records(path) == records == resumed.records


def test_an_epoch_the_checkpoint_had_not_recorded_is_left_to_the_resumed_run(tmp_path):
    """The coordinator checkpoints an epoch's last step before its test accuracy is known: a resume from
    there records that epoch again, so a record of it written before the restart must go."""
    path = tmp_path / "m.jsonl"
    first = RunLog(path, steps_per_epoch=10, config=CONFIG)
    run(first, 1, 22)  # epoch 2's record (step 20) written, then the run died at step 22
    first.close()
    resumed = RunLog(path, steps_per_epoch=10, config=CONFIG, resume_step=20, resume_epochs=1)
    resumed.epoch(epoch_stats(2, 20))  # closed again by the resumed run
    run(resumed, 21, 30)
    resumed.close()
    assert [r["epoch"] for r in lines(path) if r["kind"] == "epoch"] == [1, 2, 3]
    assert [r["step"] for r in lines(path) if r["kind"] == "step"] == list(range(1, 31))


def test_resume_without_a_log_starts_one_and_a_fresh_run_replaces_it(tmp_path):
    path = tmp_path / "m.jsonl"
    RunLog(path, 10, CONFIG, resume_step=30).close()
    assert [r["kind"] for r in lines(path)] == ["start"]
    log = RunLog(path, 10, CONFIG)
    run(log, 1, 10)
    log.close()
    RunLog(path, 10, CONFIG).close()  # another run to the same output
    assert lines(path) == [{"kind": "start", "step": 0, "resumed": False, "steps_per_epoch": 10, "config": CONFIG}]


def test_non_finite_numbers_are_null_so_the_line_stays_json(tmp_path):
    log = RunLog(tmp_path / "m.jsonl", 1, CONFIG)
    log.step(1, float("nan"), 0.01)
    log.close()
    assert lines(tmp_path / "m.jsonl")[-1]["loss"] is None


def test_steps_and_epochs_done_again_after_a_rewind_are_recorded_once(tmp_path):
    log = RunLog(tmp_path / "m.jsonl", steps_per_epoch=10, config=CONFIG)
    run(log, 1, 14)
    run(log, 8, 20)  # a rewind back to step 7: steps 8-14 and epoch 1 are done again, the same
    log.close()
    records = lines(tmp_path / "m.jsonl")
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, 21))
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]

"""Checkpoints belong to a run: identities, pruning that spares other runs, resume that picks the right one,
and files that are not checkpoints at all (FIFOs, devices, directories, crafted metadata) never hurting."""

import logging
import os
import signal

import pytest

from coordinator import checkpoint as ckpt
from coordinator import runs
from lenet import npzfile
from lenet.config import TrainConfig
from lenet.model import init_params
from lenet.optim import SGD
from lenet.status import UsageError

DATA = {"train": "ab"}
EPOCH = {"epoch": 1, "samples": 128, "loss": 0.3, "train_accuracy": 0.5, "test_accuracy": 0.75}
TRAIN_IMAGES = 1280  # 10 steps per epoch at batch 128 (--train-subset 1280)
CONFIG = TrainConfig(epochs=2, train_subset=TRAIN_IMAGES)


def checkpoint(step: int, config: TrainConfig = CONFIG, shards: int = 8, identity=None) -> ckpt.Checkpoint:
    identity = identity or runs.identity(config, shards, DATA)
    epochs_done, index = divmod(step, 10)
    history = [dict(EPOCH, epoch=e + 1) for e in range(epochs_done)]
    params = init_params(config.seed)
    meta = {"config": config.to_dict(), "num_shards": shards, "data_checksums": DATA, "lineage": identity.to_meta(),
            "run": {"epoch_loss_sum": 1.5, "epoch_correct": index, "epoch_samples": index * 128, "history": history}}
    return ckpt.Checkpoint(step, params, SGD(params).state_dict(), meta)


def names(directory):
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def alarm():
    """Fail instead of hanging: opening a FIFO for reading would block for ever."""
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("hung"))
    signal.alarm(20)
    yield
    signal.alarm(0)


# --------------------------------------------------------------------------- identity


def test_identity_follows_what_decides_the_numbers():
    base = runs.identity(CONFIG, 8, DATA).run_id
    assert runs.RUN_ID.match(base)
    assert runs.identity(TrainConfig(epochs=2, train_subset=TRAIN_IMAGES, max_steps=3), 8, DATA).run_id == base
    others = {runs.identity(TrainConfig(epochs=2, train_subset=TRAIN_IMAGES, seed=1), 8, DATA).run_id,
              runs.identity(TrainConfig(epochs=3, train_subset=TRAIN_IMAGES), 8, DATA).run_id,
              runs.identity(CONFIG, 4, DATA).run_id, runs.identity(CONFIG, 8, {"train": "cd"}).run_id,
              runs.identity(CONFIG, 8, DATA, init_from="0" * 64).run_id,
              runs.identity(CONFIG, 8, DATA, parent=(base, 10)).run_id}
    assert base not in others and len(others) == 6


# --------------------------------------------------------------------------- pruning


def test_pruning_never_touches_another_runs_or_older_format_files(tmp_path):
    theirs = runs.identity(TrainConfig(epochs=2, train_subset=TRAIN_IMAGES, seed=1), 8, DATA)
    ckpt.save(tmp_path, checkpoint(19, TrainConfig(epochs=2, train_subset=TRAIN_IMAGES, seed=1), identity=theirs))
    legacy = tmp_path / "ckpt-000000020.npz"
    legacy.write_bytes((tmp_path / f"ckpt-{theirs.run_id}-000000019.npz").read_bytes())
    ours = runs.identity(CONFIG, 8, DATA)
    for step in range(1, 9):
        ckpt.save(tmp_path, checkpoint(step))
    assert names(tmp_path) == sorted([f"ckpt-{theirs.run_id}-000000019.npz", legacy.name]
                                     + [f"ckpt-{ours.run_id}-{s:09d}.npz" for s in (6, 7, 8)])


def test_a_fresh_attempt_never_deletes_its_own_files_ahead_of_it(tmp_path):
    ours = runs.identity(CONFIG, 8, DATA).run_id
    ckpt.save(tmp_path, checkpoint(15))
    for step in (1, 2, 3, 4):
        ckpt.save(tmp_path, checkpoint(step))
    assert f"ckpt-{ours}-000000015.npz" in names(tmp_path)
    line = ckpt.describe_others(ckpt.list_checkpoints(tmp_path), ours)
    assert line is not None and "this same run up to step 15" in line


# --------------------------------------------------------------------------- resume picks the run


def candidates(directory):
    return [c for c, _ in ckpt.candidates(directory, train_images=TRAIN_IMAGES)]


def test_resume_picks_its_own_run_not_the_furthest_file(tmp_path):
    seed1 = TrainConfig(epochs=2, train_subset=TRAIN_IMAGES, seed=1)
    ckpt.save(tmp_path, checkpoint(19, seed1))
    ckpt.save(tmp_path, checkpoint(4))
    choice = runs.choose(candidates(tmp_path), CONFIG, None, DATA, 10)
    assert choice.candidate is not None and choice.candidate.step == 4
    assert choice.run == runs.identity(CONFIG, 8, DATA) and choice.extension is None
    none = runs.choose(candidates(tmp_path), TrainConfig(epochs=2, train_subset=TRAIN_IMAGES, seed=2), None, DATA, 10)
    assert none.candidate is None and "\n" not in none.why
    assert "seed=1 (this run: 2)" in none.why and "2 other run(s)" in none.why
    other_data = runs.choose(candidates(tmp_path), CONFIG, None, {"train": "zz"}, 10)
    assert other_data.candidate is None and "other MNIST files" in other_data.why


def test_more_epochs_extend_the_run_and_fewer_than_done_are_refused(tmp_path):
    one = TrainConfig(epochs=1, train_subset=TRAIN_IMAGES)
    ckpt.save(tmp_path, checkpoint(10, one))
    four = TrainConfig(epochs=4, train_subset=TRAIN_IMAGES)
    choice = runs.choose(candidates(tmp_path), four, None, DATA, 10)
    parent = runs.identity(one, 8, DATA)
    assert choice.candidate is not None and choice.candidate.run == parent
    assert choice.run == runs.identity(four, 8, DATA, parent=(parent.run_id, 10))
    assert choice.extension is not None and (choice.extension.from_epochs, choice.extension.to_epochs) == (1, 4)
    assert choice.extension.lr_before < choice.extension.lr_after  # cosine over 1 epoch ended near 0
    # The extended run's own checkpoints are what a later resume with --epochs 4 continues.
    ckpt.save(tmp_path, checkpoint(25, four, identity=choice.run))
    again = runs.choose(candidates(tmp_path), four, None, DATA, 10)
    assert again.run == choice.run and again.candidate.step == 25 and again.extension is None
    with pytest.raises(UsageError, match=r"has done 2.5 epochs \(step 25\); --epochs 2 is fewer: pass --epochs 3"):
        runs.choose(candidates(tmp_path), TrainConfig(epochs=2, train_subset=TRAIN_IMAGES), None, DATA, 10)


def test_init_from_is_part_of_the_lineage(tmp_path):
    ckpt.save(tmp_path, checkpoint(4))
    choice = runs.choose(candidates(tmp_path), CONFIG, None, DATA, 10, init_from="a" * 64)
    assert choice.candidate is None and "--init-from" in choice.why


# --------------------------------------------------------------------------- files that are not checkpoints


def test_fifo_device_and_directory_named_like_checkpoints_are_skipped(tmp_path, alarm, caplog):
    ckpt.save(tmp_path, checkpoint(4))
    run_id = runs.identity(CONFIG, 8, DATA).run_id
    os.mkfifo(tmp_path / f"ckpt-{run_id}-000000009.npz")
    (tmp_path / "ckpt-000000999.npz").symlink_to("/dev/zero")
    (tmp_path / f"ckpt-{run_id}-000000008.npz").mkdir()
    with caplog.at_level(logging.WARNING, logger="coordinator"):
        found = ckpt.candidates(tmp_path, train_images=TRAIN_IMAGES)
    assert [c.step for c, _ in found] == [4]
    assert sum("not a regular file" in r.getMessage() for r in caplog.records) == 3
    # Read directly, each is one StorageError, without waiting or reading.
    for name in (f"ckpt-{run_id}-000000009.npz", "ckpt-000000999.npz", f"ckpt-{run_id}-000000008.npz"):
        with pytest.raises(ckpt.StorageError, match="not a regular file"):
            ckpt.load(tmp_path / name)


@pytest.mark.parametrize("history, match", [
    ([{}], "lacks one of epoch"),
    ("loss", "not a list"),
    ([dict(EPOCH, epoch="1")], "is epoch '1', not 1"),
    ([dict(EPOCH, test_accuracy=7.0)], "test_accuracy 7.0 is not between 0 and 1"),
    ([dict(EPOCH, note=[1, 2])], "other fields"),
    ([dict(EPOCH, epoch=e) for e in (1, 2, 3)], "at most 2 epoch records"),
])
def test_crafted_history_with_a_valid_checksum_is_set_aside_and_the_older_one_used(tmp_path, caplog, history, match):
    ckpt.save(tmp_path, checkpoint(4))
    bad = checkpoint(12)
    bad.meta["run"]["history"] = history
    run_id = runs.identity(CONFIG, 8, DATA).run_id
    arrays = {f"params/{k}": v for k, v in bad.params.items()} | {f"optim/{k}": v for k, v in bad.optimizer.items()}
    meta = {"kind": "lenet5-checkpoint", "step": 12, **bad.meta}
    npzfile.write_npz(ckpt.path_for(tmp_path, run_id, 12), arrays, meta)
    with caplog.at_level(logging.WARNING, logger="coordinator"):
        found = ckpt.candidates(tmp_path, train_images=TRAIN_IMAGES)
    assert [c.step for c, _ in found] == [4]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and match in warnings[0]
    assert (tmp_path / f"ckpt-{run_id}-000000012.npz.damaged").exists()


def test_sums_that_disagree_with_the_step_are_set_aside(tmp_path):
    bad = checkpoint(12)
    bad.meta["run"]["epoch_samples"] = 5  # step 12 of 10-step epochs: 2 batches of 128 into epoch 2
    ckpt.save(tmp_path, bad)
    assert ckpt.candidates(tmp_path, train_images=TRAIN_IMAGES) == []
    assert [p.name.endswith(".damaged") for p in tmp_path.iterdir()] == [True]


def test_a_file_named_for_another_run_or_step_is_set_aside(tmp_path):
    ckpt.save(tmp_path, checkpoint(4))
    run_id = runs.identity(CONFIG, 8, DATA).run_id
    (tmp_path / f"ckpt-{run_id}-000000004.npz").rename(tmp_path / f"ckpt-{'0' * 12}-000000004.npz")
    assert ckpt.candidates(tmp_path, train_images=TRAIN_IMAGES) == []
    assert (tmp_path / f"ckpt-{'0' * 12}-000000004.npz.damaged").exists()


def test_setting_aside_never_replaces_a_file_set_aside_before(tmp_path):
    bad = checkpoint(12)
    bad.meta["run"]["epoch_samples"] = 5
    for _ in range(2):
        ckpt.save(tmp_path, bad)
        assert ckpt.candidates(tmp_path, train_images=TRAIN_IMAGES) == []
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".1", ".damaged"]


def test_an_unclosed_epoch_and_a_record_on_its_way_are_consistent_but_more_is_not(tmp_path):
    unclosed = checkpoint(10)
    unclosed.meta["run"].update(history=[], epoch_samples=TRAIN_IMAGES)  # the epoch's last step, not yet closed
    lagging = checkpoint(15)
    lagging.meta["run"]["history"] = []  # epoch 1's test accuracy still being computed
    both = checkpoint(20)
    both.meta["run"].update(history=[], epoch_samples=TRAIN_IMAGES)  # epoch 2 unclosed, epoch 1 still evaluated
    for c in (unclosed, lagging, both):
        assert ckpt.run_problem({"step": c.step, **c.meta}, TRAIN_IMAGES) is None
    ahead = checkpoint(15)
    ahead.meta["run"]["history"] = [dict(EPOCH), dict(EPOCH, epoch=2)]
    assert "holds 2 epochs, step 15 means 1" in ckpt.run_problem({"step": 15, **ahead.meta}, TRAIN_IMAGES)

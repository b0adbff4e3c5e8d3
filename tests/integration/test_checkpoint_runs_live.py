"""Runs a user manages in one checkpoint directory: they never eat each other's checkpoints, a finished run
extends deterministically, a new run starts from a trained model, and crafted files never crash a start."""

import os
import shutil

import numpy as np

from procs import coordinator, identical, params

SMALL = ("--workers", "1", "--train-subset", "1280", "--metrics-port", "0")  # 10 steps per epoch


def run(tmp_path, procs, *args, log_name):
    proc = coordinator(tmp_path, *SMALL, *args, log_name=log_name)
    procs.append(proc)
    return proc.wait(), proc.log()


def ckpt_names(directory):
    return sorted(p.name for p in directory.glob("ckpt-*.npz"))


def test_another_runs_checkpoints_are_never_deleted_and_resume_picks_its_own(tmp_path, procs):
    ck = tmp_path / "ck"
    code, _ = run(tmp_path, procs, "--epochs", "1", "--checkpoint-dir", str(ck), "--checkpoint-every", "2",
                  "--output", str(tmp_path / "a.npz"), log_name="seed0.log")
    assert code == 0
    seed0 = ckpt_names(ck)
    assert len(seed0) == 3  # steps 6, 8, 10: the run's own newest three
    code, log = run(tmp_path, procs, "--epochs", "1", "--seed", "1", "--max-steps", "4", "--checkpoint-dir", str(ck),
                    "--checkpoint-every", "1", "--output", str(tmp_path / "b.npz"), log_name="seed1.log")
    assert code == 0
    assert "holds 3 checkpoints of 1 other run(s)" in log
    names = ckpt_names(ck)
    assert set(seed0) <= set(names) and len(names) == 6  # seed 0's three, and seed 1's steps 2-4
    code, log = run(tmp_path, procs, "--epochs", "1", "--seed", "1", "--resume", "--checkpoint-dir", str(ck),
                    "--output", str(tmp_path / "c.npz"), log_name="resume1.log")
    assert code == 0, log
    assert "resuming from" in log and "(step 4)" in log and "seed=0" not in log
    assert set(seed0) <= set(ckpt_names(ck))
    code, log = run(tmp_path, procs, "--epochs", "1", "--seed", "2", "--resume", "--max-steps", "1",
                    "--checkpoint-dir", str(ck), "--output", str(tmp_path / "d.npz"), log_name="resume2.log")
    assert code == 0, log
    line = next(x for x in log.splitlines() if "starting from scratch" in x)
    assert "no checkpoint of this run" in line and "seed=" in line and "(this run: 2)" in line


def test_a_finished_run_extends_deterministically_and_fewer_epochs_are_refused(tmp_path, procs):
    ck = tmp_path / "ck"
    code, _ = run(tmp_path, procs, "--epochs", "1", "--checkpoint-dir", str(ck), "--output", str(tmp_path / "one.npz"),
                  log_name="one.log")
    assert code == 0
    shutil.copytree(ck, tmp_path / "ck2")
    results = []
    for i, directory in enumerate((ck, tmp_path / "ck2")):
        code, log = run(tmp_path, procs, "--epochs", "3", "--resume", "--checkpoint-dir", str(directory),
                        "--output", str(tmp_path / f"three-{i}.npz"), log_name=f"three-{i}.log")
        assert code == 0, log
        assert "(step 10)" in log and "epochs 1 -> 3: the learning-rate schedule now spans 3 epochs" in log
        assert "training: 20 steps" in log
        results.append(params(tmp_path / f"three-{i}.npz"))
    assert identical(*results)  # an extended run is a pure function of the run it extends and the new epochs
    assert not identical(results[0], params(tmp_path / "one.npz"))
    code, log = run(tmp_path, procs, "--epochs", "3", "--resume", "--checkpoint-dir", str(ck),
                    "--output", str(tmp_path / "again.npz"), log_name="again.log")
    assert code == 0 and "is finished (step 30 of 30)" in log and "pass more --epochs" in log
    assert identical(params(tmp_path / "again.npz"), results[0])
    code, log = run(tmp_path, procs, "--epochs", "2", "--resume", "--checkpoint-dir", str(ck),
                    "--output", str(tmp_path / "fewer.npz"), log_name="fewer.log")
    assert code == 2
    assert log.strip().splitlines()[-1].startswith("coordinator: error: ") and "--epochs 2 is fewer" in log
    assert "Traceback" not in log


def test_init_from_starts_a_new_run_from_trained_parameters(tmp_path, procs):
    code, _ = run(tmp_path, procs, "--epochs", "1", "--checkpoint-dir", str(tmp_path / "ck"),
                  "--output", str(tmp_path / "trained.npz"), log_name="trained.log")
    assert code == 0
    # One step at a vanishing learning rate: the parameters stay those it started from.
    code, log = run(tmp_path, procs, "--init-from", str(tmp_path / "trained.npz"), "--max-steps", "1", "--lr", "1e-12",
                    "--seed", "5", "--checkpoint-dir", str(tmp_path / "ck"), "--output", str(tmp_path / "tuned.npz"),
                    log_name="tuned.log")
    assert code == 0, log
    assert "starting from the parameters of" in log
    trained, tuned = params(tmp_path / "trained.npz"), params(tmp_path / "tuned.npz")
    assert all(np.allclose(trained[k], tuned[k], atol=1e-6) for k in trained)
    checkpoint = next((tmp_path / "ck").glob("ckpt-*.npz"))
    code, log = run(tmp_path, procs, "--init-from", str(checkpoint), "--checkpoint-dir", "off",
                    log_name="from-checkpoint.log")
    assert code == 2 and "is a training checkpoint, not a model" in log and "Traceback" not in log


def test_crafted_and_special_files_in_the_checkpoint_directory_never_crash_a_start(tmp_path, procs):
    """Issue 19.5: a valid-checksum checkpoint with a bad history, a FIFO, a symlink to /dev/zero, a directory:
    each skipped or set aside in one line, the run resumes from the good checkpoint; no traceback."""
    from coordinator import checkpoint as ckpt
    from lenet import npzfile

    ck = tmp_path / "ck"
    code, _ = run(tmp_path, procs, "--epochs", "1", "--max-steps", "4", "--checkpoint-dir", str(ck),
                  "--output", str(tmp_path / "a.npz"), log_name="first.log")
    assert code == 0
    good = next(ck.glob("ckpt-*-000000004.npz"))
    run_id = good.name.split("-")[1]
    arrays, meta = npzfile.read_npz(good)
    for step, history in ((7, [{}]), (6, "loss")):
        crafted = dict(meta, step=step)
        crafted["run"] = dict(meta["run"], history=history)
        npzfile.write_npz(ck / f"ckpt-{run_id}-{step:09d}.npz", arrays, crafted)  # a valid SHA-256
    os.mkfifo(ck / f"ckpt-{run_id}-000000009.npz")
    (ck / "ckpt-000000999.npz").symlink_to("/dev/zero")
    (ck / f"ckpt-{run_id}-000000008.npz").mkdir()
    code, log = run(tmp_path, procs, "--epochs", "1", "--max-steps", "5", "--resume", "--checkpoint-dir", str(ck),
                    "--output", str(tmp_path / "b.npz"), log_name="resume.log")
    assert code == 0, log
    assert "Traceback" not in log
    assert "resuming from" in log and "(step 4)" in log
    assert log.count("not a regular file") == 3
    assert log.count("skipping damaged checkpoint") == 2
    assert sorted(p.name for p in ck.glob("*.damaged")) == [f"ckpt-{run_id}-000000006.npz.damaged",
                                                             f"ckpt-{run_id}-000000007.npz.damaged"]
    assert ckpt.load(next(ck.glob("ckpt-*-000000005.npz"))).step == 5

"""--checkpoint-key signs checkpoints; a run given another key refuses them and starts afresh."""

import subprocess
import sys

from procs import coordinator, env

CONFIG = ("--workers", "1", "--train-subset", "1280", "--epochs", "2", "--checkpoint-every", "5")


def keyfile(path):
    out = subprocess.run([sys.executable, "-m", "coordinator.keys", "--checkpoint-key", str(path)],
                         capture_output=True, text=True, env=env(), timeout=60)
    assert out.returncode == 0, out.stderr
    return path


def test_signed_checkpoints_resume_only_with_their_key(tmp_path, procs, mnist_dir):
    ours, theirs = keyfile(tmp_path / "ours.key"), keyfile(tmp_path / "theirs.key")
    ckpt = tmp_path / "ckpt"
    first = coordinator(tmp_path, *CONFIG, "--max-steps", "7", "--checkpoint-dir", str(ckpt), "--checkpoint-key",
                        str(ours), "--output", str(tmp_path / "a.npz"), log_name="first.log")
    procs.append(first)
    assert first.wait() == 0, first.log()
    written = sorted(p.name.rsplit("-", 1)[1] for p in ckpt.glob("ckpt-*.npz"))
    assert written == ["000000005.npz", "000000007.npz"]

    wrong = coordinator(tmp_path, *CONFIG, "--max-steps", "8", "--checkpoint-dir", str(ckpt), "--resume",
                        "--checkpoint-key", str(theirs), "--output", str(tmp_path / "b.npz"), log_name="wrong.log")
    procs.append(wrong)
    assert wrong.wait() == 0, wrong.log()
    assert "skipping damaged checkpoint" in wrong.log() and "starting from scratch" in wrong.log()

    for p in ckpt.glob("*.damaged"):  # set aside by the refusal: put them back for the rightful key
        p.rename(p.with_name(p.name.removesuffix(".damaged")))
    for p in ckpt.glob("ckpt-*-000000008.npz"):
        p.unlink()
    right = coordinator(tmp_path, *CONFIG, "--max-steps", "8", "--checkpoint-dir", str(ckpt), "--resume",
                        "--checkpoint-key", str(ours), "--output", str(tmp_path / "c.npz"), log_name="right.log")
    procs.append(right)
    assert right.wait() == 0, right.log()
    assert "resuming from" in right.log() and "(step 7)" in right.log()

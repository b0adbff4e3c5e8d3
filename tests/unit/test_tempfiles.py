"""Temporaries: exclusive, unpredictable, never through a symlink; stale ones swept at start."""

import os
import stat

import numpy as np

from lenet.npzfile import write_npz
from lenet.tempfiles import STALE_AFTER_SECONDS, create_beside, sweep_stale_temporaries


def test_temporaries_are_private_unpredictable_and_match_the_sweep(tmp_path):
    fd1, a = create_beside(tmp_path / "m.npz")
    fd2, b = create_beside(tmp_path / "m.npz")
    os.close(fd1)
    os.close(fd2)
    assert a != b and a.name.startswith(".m.npz.") and a.name.endswith(".tmp")
    assert stat.S_IMODE(a.stat().st_mode) == 0o600
    old = 0.0  # mtime at the epoch: long stale
    os.utime(a, (old, old))
    assert sweep_stale_temporaries(tmp_path) == [a]


def test_a_planted_symlink_is_neither_followed_nor_swept(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    # The old predictable name of a temporary, planted as a symlink: the write must not go through it.
    planted = tmp_path / f".m.npz.{os.getpid()}.tmp"
    planted.symlink_to(victim)
    write_npz(tmp_path / "m.npz", {"w": np.zeros(3)}, {})
    assert victim.read_text() == "keep"
    os.utime(planted, (0, 0), follow_symlinks=False)
    assert sweep_stale_temporaries(tmp_path) == [] and planted.is_symlink() and victim.read_text() == "keep"


def test_sweep_leaves_young_temporaries_and_other_files(tmp_path):
    young = tmp_path / ".ckpt-000000001.npz.abcd1234.tmp"
    young.write_bytes(b"x")
    others = [tmp_path / "ckpt-000000001.npz", tmp_path / "notes.tmp", tmp_path / ".hidden"]
    for p in others:
        p.write_bytes(b"x")
        os.utime(p, (0, 0))
    assert sweep_stale_temporaries(tmp_path) == []
    assert sweep_stale_temporaries(tmp_path, now=young.stat().st_mtime + STALE_AFTER_SECONDS + 1) == [young]
    assert all(p.exists() for p in others)


def test_sweep_of_a_missing_directory_is_a_no_op(tmp_path):
    assert sweep_stale_temporaries(tmp_path / "none") == []

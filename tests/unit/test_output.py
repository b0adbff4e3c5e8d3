"""The model file: its path checked before training, the parameters kept when the final write fails."""

import os
import stat

import numpy as np
import pytest

from lenet import output
from lenet.model import LeNet5
from lenet.npzfile import user_file_mode
from lenet.output import check_output, save_final
from lenet.status import StorageError
from lenet.train import load_model, save_model


def test_a_usable_path_is_accepted_and_its_directory_made(tmp_path):
    target = tmp_path / "new" / "dir" / "m.npz"
    assert check_output(target) == target
    assert target.parent.is_dir() and list(target.parent.iterdir()) == []  # the probe is gone


@pytest.mark.parametrize("case", ["parent is a file", "target is a directory", "ancestor is a file"])
def test_unusable_paths_are_refused_in_one_line(tmp_path, case):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    target = {"parent is a file": blocker / "m.npz", "target is a directory": tmp_path,
              "ancestor is a file": blocker / "a" / "b" / "m.npz"}[case]
    with pytest.raises(StorageError) as err:
        check_output(target)
    assert "\n" not in str(err.value) and str(target) in str(err.value)


def test_an_unwritable_directory_is_refused(tmp_path, monkeypatch):
    def refuse(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(output, "create_beside", refuse)  # root ignores modes: refuse the way a kernel would
    with pytest.raises(StorageError, match=f"cannot write in {tmp_path}: Permission denied"):
        check_output(tmp_path / "m.npz")


def test_a_failed_final_write_keeps_the_model_and_says_where(tmp_path):
    params = LeNet5(seed=3).params
    full = tmp_path / "full-disk"
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()

    def write(path):
        if path.parent == full:
            raise StorageError(f"cannot write {path}: No space left on device")
        save_model(path, params, {"step": 1})

    with pytest.raises(StorageError) as err:
        save_final(full / "lenet5.npz", write, keep_in=[None, ckpt_dir])
    message = str(err.value)
    assert "No space left on device" in message and f"saved to {ckpt_dir / 'lenet5.npz'} instead" in message
    kept, _ = load_model(ckpt_dir / "lenet5.npz")
    assert all(np.array_equal(kept[k], params[k]) for k in params)


def test_without_a_checkpoint_directory_the_model_goes_to_a_temporary_one(tmp_path, monkeypatch):
    monkeypatch.setattr(output.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    written = []

    def write(path):
        if path.parent == tmp_path:
            raise StorageError(f"cannot write {path}: No space left on device")
        written.append(path)
        path.write_bytes(b"model")

    with pytest.raises(StorageError, match="saved to .*lenet5-model-.*/m.npz instead"):
        save_final(tmp_path / "m.npz", write)
    assert len(written) == 1 and written[0].parent.parent == tmp_path / "tmp"


def test_the_model_file_is_readable_like_any_user_file_and_checkpoints_stay_private(tmp_path):
    from lenet.npzfile import write_npz

    old = os.umask(0o022)
    try:
        assert user_file_mode() == 0o644 and os.umask(0o022) == 0o022  # and the umask is left as it was
        save_model(tmp_path / "m.npz", LeNet5().params, {})
        write_npz(tmp_path / "c.npz", {"a": np.zeros(2)}, {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.npz").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "c.npz").stat().st_mode) == 0o600


def test_a_model_kept_by_an_earlier_run_is_not_overwritten(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    (ckpt_dir / "lenet5.npz").write_bytes(b"an earlier run's model")

    def write(path):
        if path.parent == tmp_path:
            raise StorageError(f"cannot write {path}: No space left on device")
        path.write_bytes(b"this run's model")

    with pytest.raises(StorageError, match=r"saved to .*/checkpoints/lenet5-\d{8}-\d{6}-\d+\.npz instead"):
        save_final(tmp_path / "lenet5.npz", write, keep_in=[ckpt_dir])
    assert (ckpt_dir / "lenet5.npz").read_bytes() == b"an earlier run's model"
    assert len(list(ckpt_dir.glob("lenet5-*.npz"))) == 1

"""A rewind deletes the checkpoints that hold a convicted liar's answers (coordinator/checkpoint.py
`Checkpointer.discard_after`): a resume must not start from one."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from coordinator.checkpoint import Checkpointer, path_for
from coordinator.metrics import Metrics
from coordinator.runs import RunIdentity

RUN, OTHER = RunIdentity("a" * 12), RunIdentity("b" * 12)


def test_only_the_checkpoints_after_the_step_gone_back_to_are_deleted(tmp_path):
    for step in (3, 7, 12, 20):
        path_for(tmp_path, RUN.run_id, step).write_bytes(b"x")
    path_for(tmp_path, OTHER.run_id, 30).write_bytes(b"x")  # another run's: never touched
    (tmp_path / "notes.txt").write_text("kept")
    assert Checkpointer(tmp_path, Metrics(CollectorRegistry()), RUN).discard_after(7) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"ckpt-{RUN.run_id}-000000003.npz",
                                                          f"ckpt-{RUN.run_id}-000000007.npz",
                                                          f"ckpt-{OTHER.run_id}-000000030.npz", "notes.txt"]


def test_without_a_checkpoint_directory_there_is_nothing_to_delete():
    assert Checkpointer(None, Metrics(CollectorRegistry()), RUN).discard_after(0) == 0

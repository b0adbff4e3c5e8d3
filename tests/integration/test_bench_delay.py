"""bench/bench_delay.py reads what the trainer prints: one tiny run per flag set gives an accuracy and a loss."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import bench_delay  # noqa: E402


def test_a_recipe_run_gives_its_accuracy_and_loss(mnist_dir, tmp_path):
    accuracy, loss = bench_delay.run(["--gradient-delay", "1", "--max-steps", "3"], 1, 512, str(mnist_dir),
                                     tmp_path / "m.npz")
    assert 0.0 <= accuracy <= 1.0 and loss > 0
    assert (tmp_path / "m.npz").exists()

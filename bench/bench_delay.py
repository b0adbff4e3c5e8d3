"""What the one-step gradient delay (`--gradient-delay 1`) costs in accuracy: the trainer, with and without it.

    python bench/bench_delay.py                  # 5 epochs (the default run), every recipe below
    python bench/bench_delay.py --epochs 2       # shorter
    python bench/bench_delay.py --quick          # smoke run: 1 epoch of 6,400 images

Each recipe is one `python -m lenet.train` run (the service gives the same parameters bit for bit, so its
accuracy is the trainer's: tests/integration/test_gradient_delay_service.py).  Training is deterministic,
so one run per recipe is the figure; two run at a time (their speed is not measured here: the speed of
the delay is `python bench/compare.py --parts train,service --gradient-delay 0,1`).  Prints the final
test accuracy and training loss of each recipe, and each delayed recipe's test errors against the
synchronous run's.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's code, whatever the current directory

import argparse  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

from lenet.config import DELAY_MOMENTUM  # noqa: E402

RECIPES: dict[str, list[str]] = {
    "synchronous (the default)": [],
    "delay 1, default flags (momentum 0.9)": ["--gradient-delay", "1"],
    f"delay 1, --momentum {DELAY_MOMENTUM} (the documented recipe)": ["--gradient-delay", "1", "--momentum",
                                                                        str(DELAY_MOMENTUM)],
    "delay 1, --lr 0.025": ["--gradient-delay", "1", "--lr", "0.025"],
}
DONE_LINE = re.compile(r"done: test accuracy ([\d.]+)%")
LOSS_LINE = re.compile(r"epoch \d+/\d+: loss ([\d.]+)")


def run(flags: list[str], epochs: int, subset: int | None, data_dir: str, out: Path) -> tuple[float, float]:
    """(test accuracy, last epoch's training loss) of one trainer run."""
    cmd = [sys.executable, "-m", "lenet.train", *flags, "--epochs", str(epochs), "--data-dir", data_dir,
           "--output", str(out), *(["--train-subset", str(subset)] if subset else [])]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    done, losses = DONE_LINE.search(proc.stdout), LOSS_LINE.findall(proc.stdout)
    if proc.returncode != 0 or done is None or not losses:
        sys.exit(f"bench_delay: {' '.join(cmd[1:])} failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
    return float(done[1]) / 100, float(losses[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1 epoch of 6,400 images")
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DIR") or str(ROOT.parent / "shared" / "mnist"))
    args = parser.parse_args()
    epochs, subset = (1, 6400) if args.quick else (args.epochs, None)
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max_workers=2) as pool:
        futures = {label: pool.submit(run, flags, epochs, subset, args.data_dir, Path(tmp) / f"{i}.npz")
                   for i, (label, flags) in enumerate(RECIPES.items())}
        results = {label: f.result() for label, f in futures.items()}
    base_error = 1 - results["synchronous (the default)"][0]
    print(f"lenet.train, {epochs} epoch(s){f' of {subset} images' if subset else ''}, default flags unless said:")
    print(f"  {'recipe':<52} {'test accuracy':>13} {'loss':>8} {'errors vs synchronous':>22}")
    for label, (accuracy, loss) in results.items():
        print(f"  {label:<52} {accuracy:>12.2%} {loss:>8.4f} {(1 - accuracy) / base_error:>21.2f}x")


if __name__ == "__main__":
    main()

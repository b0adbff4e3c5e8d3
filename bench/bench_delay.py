"""What the one-step gradient delay (`--gradient-delay 1`) costs in accuracy: the trainer, with and without it.

    python bench/bench_delay.py                  # 5 epochs (the default run), every recipe, seeds 0 and 1
    python bench/bench_delay.py --seeds 0,1,2    # more seeds
    python bench/bench_delay.py --quick          # smoke run: 1 epoch of 6,400 images, seed 0

Each recipe is one `python -m lenet.train` run per seed (the service gives the same parameters bit for
bit, so its accuracy is the trainer's: tests/integration/test_gradient_delay_service.py).  Training is
deterministic, so a seed's run is its figure; the seeds show how much of a difference is luck.  Two
run at a time (their speed is not measured here: the delay's speed is `python bench/compare.py --parts
train,service --gradient-delay 0,1`).  Prints each recipe's test accuracy per seed, its final training
loss (seed 0) and its test errors against the synchronous run of the same seed.
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

from lenet.config import DELAY_WARMUP  # noqa: E402

SYNCHRONOUS = "synchronous (the default)"
RECIPES: dict[str, list[str]] = {
    SYNCHRONOUS: [],
    "delay 1, default flags": ["--gradient-delay", "1"],
    f"delay 1, --warmup-steps {DELAY_WARMUP} (the recipe)": ["--gradient-delay", "1", "--warmup-steps",
                                                            str(DELAY_WARMUP)],
    "delay 1, --momentum 0.8": ["--gradient-delay", "1", "--momentum", "0.8"],
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
    parser.add_argument("--seeds", default="0,1", help="comma-separated (default 0,1)")
    parser.add_argument("--quick", action="store_true", help="1 epoch of 6,400 images, seed 0")
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DIR") or str(ROOT.parent / "shared" / "mnist"))
    args = parser.parse_args()
    epochs, subset = (1, 6400) if args.quick else (args.epochs, None)
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",") if s]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max_workers=2) as pool:
        futures = {(label, seed): pool.submit(run, [*flags, "--seed", str(seed)], epochs, subset, args.data_dir,
                                              Path(tmp) / f"{i}-{seed}.npz")
                   for i, (label, flags) in enumerate(RECIPES.items()) for seed in seeds}
        results = {key: f.result() for key, f in futures.items()}
    print(f"lenet.train, {epochs} epoch(s){f' of {subset} images' if subset else ''}, default flags unless said; "
          f"seeds {', '.join(map(str, seeds))}:")
    print(f"  {'recipe':<44} {'test accuracy per seed':>26} {'loss':>8} {'errors vs synchronous':>24}")
    for label in RECIPES:
        accuracy = " / ".join(f"{results[label, seed][0]:.2%}" for seed in seeds)
        errors = " / ".join(f"{(1 - results[label, seed][0]) / (1 - results[SYNCHRONOUS, seed][0]):.2f}x"
                            for seed in seeds)
        print(f"  {label:<44} {accuracy:>26} {results[label, seeds[0]][1]:>8.4f} {errors:>24}")


if __name__ == "__main__":
    main()

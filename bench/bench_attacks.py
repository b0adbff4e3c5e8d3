"""The attack catalogue measured: time and coordinator memory of each attack against an undisturbed run.

    python bench/bench_attacks.py [--attacks negative_compute_seconds,ghosts,...] [--rounds 1]

Each attack (tests/attacks.py, the same runs the tests assert on) trains the same
small run (2,560 images, 2 epochs, 2 honest workers on loopback) beside its
hostile peers.  Printed per attack: wall time and the coordinator's peak RSS as
ratios to the undisturbed run measured next to it, and whether the parameters are
bit-identical.  The README's "Faults and hostile input" table comes from here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from lenet.runtime import pin_blas_threads  # noqa: E402

pin_blas_threads()

from attacks import ATTACKS, undisturbed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated names (default: all)")
    parser.add_argument("--rounds", type=int, default=1, help="undisturbed + attack pairs per attack")
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DIR"), help="MNIST directory ($MNIST_DIR)")
    args = parser.parse_args()
    if args.data_dir:
        os.environ["MNIST_DIR"] = args.data_dir
    names = args.attacks.split(",")
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        parser.error(f"unknown attacks {unknown}; known: {', '.join(ATTACKS)}")
    print(f"{'attack':<26} {'time':>7} {'vs undisturbed':>15} {'peak MB':>8} {'vs undisturbed':>15} "
          f"{'identical':>9} {'checks':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            ratios, extra_mb, runs = [], [], []
            for r in range(args.rounds):  # each attack beside an undisturbed run: the machine's state is shared
                here, there = Path(tmp) / f"{name}-base-{r}", Path(tmp) / f"{name}-{r}"
                here.mkdir()
                there.mkdir()
                base = undisturbed(here)
                run = ATTACKS[name](there)
                ratios.append(run.seconds / base.seconds)
                extra_mb.append(run.peak_mb - base.peak_mb)
                runs.append((run, base))
            run, base = runs[-1]
            checks = "ok" if all(c.holds for c in run.checks) else "FAIL"
            print(f"{name:<26} {run.seconds:>6.1f}s {statistics.median(ratios):>14.2f}x {run.peak_mb:>8.0f} "
                  f"{statistics.median(extra_mb):>+13.0f}MB {str(run.identical_to(base)):>9} {checks:>6}",
                  flush=True)


if __name__ == "__main__":
    main()

"""The attack catalogue measured: time and coordinator memory of each attack against an undisturbed run.

    python bench/bench_attacks.py [--attacks negative_compute_seconds,ghosts,...] [--rounds 1]
    python bench/bench_attacks.py --verify-cost          # an undisturbed run at several --verify-fraction

Each attack (tests/attacks.py, the same runs the tests assert on) trains the same
small run (2,560 images, 2 epochs, 2 honest workers on loopback) beside its
hostile peers.  Printed per attack: wall time and the coordinator's peak RSS as
ratios to the undisturbed run measured next to it, whether the parameters are
bit-identical, and what rewinds cost (steps replayed, seconds: a convicted liar's
answers undone).  The README's "Faults and hostile input" table comes from here.
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

from attacks import ATTACKS, config_of, undisturbed  # noqa: E402

VERIFY_FRACTIONS = ("0", "0.02", "0.1", "1")


def verify_cost(rounds: int) -> None:
    """Wall time of the undisturbed run at each verify fraction, as a ratio to the run without verification."""
    print(f"{'--verify-fraction':<18} {'time':>7} {'vs 0':>6} {'units verified':>15}")
    with tempfile.TemporaryDirectory() as tmp:
        times: dict[str, list[float]] = {f: [] for f in VERIFY_FRACTIONS}
        verified: dict[str, float] = {}
        for r in range(rounds):  # interleaved: the machine's state is shared
            for fraction in VERIFY_FRACTIONS:
                here = Path(tmp) / f"verify-{fraction}-{r}"
                here.mkdir()
                run = undisturbed(here, "--verify-fraction", fraction)
                times[fraction].append(run.seconds)
                verified[fraction] = run.count("lenet_units_verified_total")
        base = statistics.median(times["0"])
        for fraction in VERIFY_FRACTIONS:
            t = statistics.median(times[fraction])
            print(f"{fraction:<18} {t:>6.1f}s {t / base:>5.2f}x {verified[fraction]:>15.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated names (default: all)")
    parser.add_argument("--rounds", type=int, default=1, help="undisturbed + attack pairs per attack")
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DIR") or str(ROOT.parent / "shared" / "mnist"),
                        help="MNIST directory (default: $MNIST_DIR, else ../shared/mnist, as bench/compare.py)")
    parser.add_argument("--verify-cost", action="store_true", help="measure --verify-fraction's cost instead")
    args = parser.parse_args()
    os.environ["MNIST_DIR"] = args.data_dir  # the runs never download: a failed download is no attack
    if args.verify_cost:
        verify_cost(args.rounds)
        return
    names = args.attacks.split(",")
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        parser.error(f"unknown attacks {unknown}; known: {', '.join(ATTACKS)}")
    print(f"{'attack':<26} {'time':>7} {'vs undisturbed':>15} {'peak MB':>8} {'vs undisturbed':>15} "
          f"{'identical':>9} {'checks':>6} {'replayed':>8} {'rewind s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            ratios, extra_mb, runs = [], [], []
            for r in range(args.rounds):  # each attack beside an undisturbed run: the machine's state is shared
                here, there = Path(tmp) / f"{name}-base-{r}", Path(tmp) / f"{name}-{r}"
                here.mkdir()
                there.mkdir()
                base = undisturbed(here, *config_of(name))
                run = ATTACKS[name](there)
                ratios.append(run.seconds / base.seconds)
                extra_mb.append(run.peak_mb - base.peak_mb)
                runs.append((run, base))
            run, base = runs[-1]
            checks = "ok" if all(c.holds for c in run.checks) else "FAIL"
            print(f"{name:<26} {run.seconds:>6.1f}s {statistics.median(ratios):>14.2f}x {run.peak_mb:>8.0f} "
                  f"{statistics.median(extra_mb):>+13.0f}MB {str(run.identical_to(base)):>9} {checks:>6} "
                  f"{run.count('lenet_steps_replayed_total'):>8.0f} {run.count('lenet_rewind_seconds_total'):>8.2f}",
                  flush=True)


if __name__ == "__main__":
    main()

"""Distributed throughput: samples/s with 1, 2, 4 and 8 local workers, same global batch.

    python bench/bench_service.py [--batch-size 512] [--steps 40] [--workers 1,2,4,8] [--rounds 3]

For each worker count, a coordinator (in this process) trains with that many local
worker processes; the clock runs from the end of a short warm-up to the last step,
so process start-up is not counted.  The worker counts are measured in turn, round
after round; the ratios between counts are taken within each round (neighbours in
time share the machine's state) and their median is reported, next to each count's
best throughput.  Also printed: the single-process trainer on
the same batches, the coordinator's own CPU time per step, and the bytes it moved
per step.  The ratios (2 vs 1 workers, 8 vs 2) are what the targets are about.
"""

from __future__ import annotations

from lenet.runtime import pin_blas_threads, tune_malloc

pin_blas_threads()  # before NumPy loads

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from prometheus_client import CollectorRegistry  # noqa: E402

from coordinator.config import ServiceConfig  # noqa: E402
from coordinator.metrics import Metrics  # noqa: E402
from coordinator.service import run_service  # noqa: E402
from coordinator.training import StepReport, Training  # noqa: E402
from lenet.config import TrainConfig  # noqa: E402
from lenet.data import load_mnist  # noqa: E402
from lenet.shards import DEFAULT_SHARDS  # noqa: E402
from lenet.train import train  # noqa: E402

WARMUP = 5


def counter(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


def distributed(data, workers: int, batch: int, steps: int) -> dict[str, float]:
    metrics = Metrics(CollectorRegistry())
    config = TrainConfig(batch_size=batch, max_steps=WARMUP + steps)
    service = ServiceConfig(min_workers=workers)
    marks: dict[str, float] = {}

    def progress(report: StepReport, live: int) -> None:
        if report.step == WARMUP:
            marks["wall"], marks["cpu"] = time.perf_counter(), time.process_time()
            marks["bytes"] = counter(metrics, "lenet_sent_bytes_total") + counter(metrics, "lenet_received_bytes_total")

    run_service(Training(config, DEFAULT_SHARDS, data), service, metrics, local_workers=workers, progress=progress)
    wall, cpu = time.perf_counter() - marks["wall"], time.process_time() - marks["cpu"]
    moved = counter(metrics, "lenet_sent_bytes_total") + counter(metrics, "lenet_received_bytes_total")
    return {"samples_per_s": steps * batch / wall, "coord_ms_per_step": 1000 * cpu / steps,
            "bytes_per_step": (moved - marks["bytes"]) / steps}


def single_process(data, batch: int, steps: int) -> float:
    """The reference trainer on the same batches (its epoch clock excludes evaluation)."""
    stats = train(TrainConfig(batch_size=batch, max_steps=steps), data, log=lambda s: None).history[0]
    return stats.samples_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per configuration")
    parser.add_argument("--workers", default="1,2,4,8", help="comma-separated worker counts")
    parser.add_argument("--rounds", type=int, default=5, help="rounds over all worker counts")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tune_malloc()
    data = load_mnist(args.data_dir)
    counts = [int(w) for w in args.workers.split(",")]
    print(f"global batch {args.batch_size}, {args.steps} timed steps, {os.cpu_count()} cores")
    print(f"single process: {single_process(data, args.batch_size, args.steps):,.0f} samples/s")
    rounds: list[dict[int, dict[str, float]]] = []
    for _ in range(args.rounds):
        rounds.append({n: distributed(data, n, args.batch_size, args.steps) for n in counts})
    best = {n: max((r[n] for r in rounds), key=lambda x: x["samples_per_s"]) for n in counts}

    def ratio(a: int, b: int) -> float:
        return statistics.median(r[a]["samples_per_s"] / r[b]["samples_per_s"] for r in rounds)

    print(f"{'workers':>7} {'best samples/s':>15} {'vs 1 worker (median)':>21} {'coordinator ms/step':>20} "
          f"{'MB/step':>8}")
    for n in counts:
        r = best[n]
        print(f"{n:>7} {r['samples_per_s']:>15,.0f} {ratio(n, counts[0]):>20.2f}x {r['coord_ms_per_step']:>20.1f} "
              f"{r['bytes_per_step'] / 1e6:>8.2f}")
    if 1 in best and 2 in best:
        per_round = ", ".join(f"{r[2]['samples_per_s'] / r[1]['samples_per_s']:.2f}" for r in rounds)
        print(f"2 workers / 1 worker: median {ratio(2, 1):.2f}x over {args.rounds} rounds ({per_round}) "
              "(target >= 1.7x)")
    if 2 in best and 8 in best:
        per_round = ", ".join(f"{r[8]['samples_per_s'] / r[2]['samples_per_s']:.2f}" for r in rounds)
        print(f"8 workers / 2 workers: median {ratio(8, 2):.2f}x ({per_round}) (target >= 0.85x)")


if __name__ == "__main__":
    main()

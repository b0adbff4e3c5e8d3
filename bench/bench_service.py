"""Distributed throughput: samples/s with 1, 2, 4 and 8 local workers, same global batch.

    python bench/bench_service.py [--batch-size 512] [--steps 40] [--workers 1,2,4,8]

For each worker count, a coordinator (in this process) trains with that many local
worker processes; the clock runs from the end of a short warm-up to the last step,
so process start-up is not counted.  Also printed: the single-process trainer on
the same batches, the coordinator's own CPU time per step, and the bytes it moved
per step.  The ratios (2 vs 1 workers, 8 vs 2) are what the targets are about.
"""

from __future__ import annotations

from lenet.runtime import pin_blas_threads, tune_malloc

pin_blas_threads()  # before NumPy loads

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

from prometheus_client import CollectorRegistry  # noqa: E402

from coordinator.local_workers import LocalWorkers  # noqa: E402
from coordinator.metrics import Metrics  # noqa: E402
from coordinator.server import Coordinator, ServiceConfig  # noqa: E402
from lenet.config import TrainConfig  # noqa: E402
from lenet.data import load_mnist  # noqa: E402
from lenet.train import train  # noqa: E402

WARMUP = 5


def counter(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


def distributed(data, workers: int, batch: int, steps: int) -> dict[str, float]:
    metrics = Metrics(CollectorRegistry())
    config = TrainConfig(batch_size=batch, max_steps=WARMUP + steps)
    coord = Coordinator(config, ServiceConfig(min_workers=workers), data, metrics)
    local = LocalWorkers(workers, coord.endpoint)
    marks: dict[str, float] = {}

    def progress(c: Coordinator) -> None:
        if c.state.step == WARMUP:
            marks["wall"], marks["cpu"] = time.perf_counter(), time.process_time()
            marks["bytes"] = counter(metrics, "lenet_sent_bytes_total") + counter(metrics, "lenet_received_bytes_total")

    try:
        coord.run(stop=lambda: False, tick=lambda: coord.forget_exited(local.supervise()), progress=progress)
        wall, cpu = time.perf_counter() - marks["wall"], time.process_time() - marks["cpu"]
        moved = counter(metrics, "lenet_sent_bytes_total") + counter(metrics, "lenet_received_bytes_total")
        coord.broadcast_shutdown("benchmark done")
    finally:
        local.stop()
        coord.close()
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
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tune_malloc()
    data = load_mnist(args.data_dir)
    counts = [int(w) for w in args.workers.split(",")]
    print(f"global batch {args.batch_size}, {args.steps} timed steps, {os.cpu_count()} cores")
    print(f"single process: {single_process(data, args.batch_size, args.steps):,.0f} samples/s")
    results = {}
    print(f"{'workers':>7} {'samples/s':>10} {'vs 1 worker':>12} {'coordinator ms/step':>20} {'MB/step':>8}")
    for n in counts:
        r = results[n] = distributed(data, n, args.batch_size, args.steps)
        base = results.get(counts[0], r)["samples_per_s"]
        print(f"{n:>7} {r['samples_per_s']:>10,.0f} {r['samples_per_s'] / base:>11.2f}x "
              f"{r['coord_ms_per_step']:>20.1f} {r['bytes_per_step'] / 1e6:>8.2f}")
    if 1 in results and 2 in results:
        print(f"2 workers / 1 worker: {results[2]['samples_per_s'] / results[1]['samples_per_s']:.2f}x (target >= 1.7x)")
    if 2 in results and 8 in results:
        print(f"8 workers / 2 workers: {results[8]['samples_per_s'] / results[2]['samples_per_s']:.2f}x "
              "(target >= 0.85x)")


if __name__ == "__main__":
    main()

"""NumPy LeNet-5 against PyTorch on the same cores: kernels, trainers and the service, side by side.

    python bench/compare.py                     # everything, 3 interleaved rounds, 1 epoch per run
    python bench/compare.py --quick             # smoke run: 1 round, short timings, 1 epoch subsets
    python bench/compare.py --parts kernel,gemm # only some parts
    python bench/compare.py --parts train,service,torch --epochs 5   # end to end, 5 epochs
    python bench/compare.py --parts service --workers 2 --shards 8,64  # cost of a shard count
    python bench/compare.py --parts train,service --gradient-delay 0,1  # the one-step gradient delay's gain
    python bench/compare.py --parts train,pair,service --workers 2  # 2 workers against the machine's ceiling

Parts (`--parts`, comma-separated; default all):
  kernel   the kernel step: summed loss and gradients of one batch of real MNIST images
           (no optimizer), 1 thread, NumPy `LeNet5.sum_loss_and_grads` vs PyTorch forward +
           summed cross-entropy + backward, batches 16, 64, 256; plus inference at batch 1000.
  gemm     NumPy sgemm peak (1 thread, 2048^3) and the fraction of the hardware limit the
           kernel step reaches (limit = peak / FLOP per training sample, derived below).
  train    `python -m lenet.train` (the in-process reference trainer) as a subprocess.
  pair     two trainers at once (seeds 1 and 2), one per core: their samples/s added is what two
           cores give two independent processes, the ceiling of any 2-worker service here (shared
           caches, memory bandwidth and clocks can make it less than 2x one trainer).
  service  `python -m coordinator --workers N` (N in --workers, default 1, 2, 8) as subprocesses;
           end to end, start-up and evaluation included, the per-epoch figure its log prints, and
           the per-step breakdown its last line gives (step, worker computing and waiting, the
           waiting split into the critical path, the round trip beyond computing (transfer) and
           the wait for the slowest unit, coordinator CPU and its loop's time by phase: receive,
           checks, reduce, optimizer, plan, send, evaluation, checkpoint).
  torch    PyTorch 1 and 2 threads, and DDP 2x1 (gloo on loopback, 2 processes x 1 thread),
           same data, order, initial weights and recipe (SGD Nesterov 0.9, weight decay 5e-4,
           batch 128, lr 0.05 with 100 warm-up steps then cosine).  Skipped when torch is absent.

Every configuration runs once per round, rounds interleave them (A B C A B C ...), and
the table gives each figure's median with its min-max spread over the rounds; ratios
are taken within each round (neighbours in time share the machine's state) and their
median and spread printed.  Peak RSS (VmHWM) of each process is sampled while it runs.
The product never imports torch: it is used here only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's code, whatever the current directory

from lenet.runtime import pin_blas_threads, single_thread_blas_env, tune_malloc, usable_cores  # noqa: E402

pin_blas_threads()  # before NumPy (and torch) load their BLAS

from lenet.config import DELAY_WARMUP  # noqa: E402

import argparse  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

# Multiply-accumulates per sample, forward: conv1 28*28*6*25, conv2 10*10*16*150, fc 400*120 + 120*84 + 84*10.
FORWARD_MACS = 28 * 28 * 6 * 25 + 10 * 10 * 16 * 150 + 400 * 120 + 120 * 84 + 84 * 10  # 416,520
# Backward: every weight gradient costs its forward product again, every input gradient too,
# except conv1's (the images need none).
BACKWARD_MACS = 2 * FORWARD_MACS - 28 * 28 * 6 * 25  # 715,440
FLOP_PER_SAMPLE = 2 * (FORWARD_MACS + BACKWARD_MACS)  # 2,263,920: products only (pooling, ReLU, loss are < 1 %)

EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+):.*?([\d,]+) samples/s")
# The coordinator's last line about its loop (coordinator/phases.py `StepTimes.line`): "time per step (ms): step 10.85
# coordinator cpu 3.84 (loop thread 2.31  evaluation thread 1.30  other threads 0.23)  worker compute 14.66  coordinator busy 4.46: receive 0.68  checks 0.52 ... idle 8.17
# critical path 1.34: receive 0.16  checks 0.11 ...": the phases after "critical path" are read as "critical <phase>".
BREAKDOWN_LINE = re.compile(r"time per step \(ms\): (.*) \(\d+ steps\)")
BREAKDOWN_ITEM = re.compile(r"([a-z][a-z ]*?) (\d+\.\d+)")
PAIR = "2 trainers at once"  # the label of the pair part's runs


# --------------------------------------------------------------------------- statistics and table


def spread(values: list[float]) -> str:
    return f"[{min(values):,.2f}-{max(values):,.2f}]" if len(values) > 1 else ""


def row(label: str, values: list[float], unit: str, fmt: str = ",.0f") -> str:
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    rng = f"[{lo:{fmt}}-{hi:{fmt}}]" if len(values) > 1 else ""
    return f"  {label:<44} {med:>12{fmt}} {unit:<10} {rng}"


def ratio_row(label: str, ratios: list[float], target: str = "") -> str:
    med = statistics.median(ratios)
    return f"  {label:<44} {med:>11.2f}x {spread(ratios):<18} {target}"


# --------------------------------------------------------------------------- peak RSS of a process tree


class PeakRss:
    """Samples VmHWM (peak resident set) of a process and of its children while it runs."""

    def __init__(self, pid: int, interval: float = 0.1):
        self.pid, self.interval = pid, interval
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _hwm_kb(pid: int) -> int | None:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def _children(self, pid: int) -> list[int]:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                kids = [int(c) for c in f.read().split()]
        except OSError:
            return []
        return kids + [g for k in kids for g in self._children(k)]

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in [self.pid, *self._children(self.pid)]:
                kb = self._hwm_kb(pid)
                if kb:
                    self.peak[pid] = max(self.peak.get(pid, 0), kb)
            self._stop.wait(self.interval)

    def stop(self) -> tuple[float, float]:
        """(MB of the process itself, MB of its largest child; 0 without children)."""
        self._stop.set()
        self._thread.join()
        own = self.peak.get(self.pid, 0) / 1024
        children = [kb for pid, kb in self.peak.items() if pid != self.pid]
        return own, (max(children) / 1024 if children else 0.0)


# --------------------------------------------------------------------------- runs as subprocesses


def epoch_rate(output: str, label: str) -> float:
    """The median of the samples/s a training command's epoch lines print."""
    rates = [float(m.group(3).replace(",", "")) for m in EPOCH_LINE.finditer(output)]
    if not rates:
        raise RuntimeError(f"{label}: no epoch line in its output:\n{output[-3000:]}")
    return statistics.median(rates)


def run_training(cmd: list[str], label: str) -> dict[str, float]:
    """Run a training command; its epoch lines give samples/s, the clock gives end to end."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=single_thread_blas_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    rss = PeakRss(proc.pid)
    output = proc.communicate()[0]
    wall = time.perf_counter() - start
    own_mb, child_mb = rss.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed with status {proc.returncode}:\n{output[-3000:]}")
    figures = {"epoch": epoch_rate(output, label), "e2e": wall, "rss": own_mb, "child_rss": child_mb}
    line = BREAKDOWN_LINE.search(output)
    if line:  # the service: where a step's time went
        loop, _, critical = line.group(1).partition("critical path ")
        figures.update({f"ms {name.strip()}": float(v) for name, v in BREAKDOWN_ITEM.findall(loop)})
        figures.update({f"ms critical {name.strip()}".rstrip(":"): float(v)
                        for name, v in BREAKDOWN_ITEM.findall("path " + critical)})
    return figures


def run_pair(cmds: list[list[str]], label: str) -> dict[str, float]:
    """Run training commands at once; their samples/s added, the clock until the last ends.  (They start
    together; the one that ends last trains its last moments alone, which flatters the sum a little.)"""
    start = time.perf_counter()
    logs = [tempfile.TemporaryFile(mode="w+") for _ in cmds]  # files, not pipes: none can block on a full one
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=single_thread_blas_env(), stdout=log, stderr=subprocess.STDOUT,
                              text=True, stdin=subprocess.DEVNULL) for cmd, log in zip(cmds, logs)]
    for proc in procs:
        proc.wait()
    wall = time.perf_counter() - start
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    for proc, output in zip(procs, outputs):
        if proc.returncode != 0:
            raise RuntimeError(f"{label} failed with status {proc.returncode}:\n{output[-3000:]}")
    return {"epoch": sum(epoch_rate(output, label) for output in outputs), "e2e": wall}


def ours(args: argparse.Namespace, workers: int | None, shards: int | None, out: str, delay: int = 0) -> list[str]:
    common = ["--epochs", str(args.epochs), "--data-dir", args.data_dir, "--output", out]
    if delay:  # with the warm-up it needs (docs/operations.md): the default one diverges with the delay
        common += ["--gradient-delay", str(delay), "--warmup-steps", str(DELAY_WARMUP)]
    if args.train_subset:
        common += ["--train-subset", str(args.train_subset)]
    if workers is None:
        return [sys.executable, "-m", "lenet.train", *common, *(["--shards", str(shards)] if shards else [])]
    return [sys.executable, "-m", "coordinator", *common, "--workers", str(workers), "--checkpoint-dir", "off",
            "--metrics-port", "0", "--no-progress", *(["--shards", str(shards)] if shards else [])]


def theirs(args: argparse.Namespace, threads: int, ddp: int = 0) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--torch-run", "--threads", str(threads),
           "--epochs", str(args.epochs), "--data-dir", args.data_dir]
    if args.train_subset:
        cmd += ["--train-subset", str(args.train_subset)]
    return cmd + (["--ddp", str(ddp)] if ddp else [])


# --------------------------------------------------------------------------- PyTorch trainer (benchmark only)


def torch_net():
    import torch

    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def load_our_init(net, seed: int) -> None:
    """The same initial weights as LeNet5(seed): the state_dict names differ only by index."""
    import torch

    from lenet.model import LeNet5

    params = LeNet5.init_params(seed)
    names = {"0": "conv1", "3": "conv2", "7": "fc1", "9": "fc2", "11": "fc3"}
    net.load_state_dict({k: torch.from_numpy(params[f"{names[k.split('.')[0]]}.{k.split('.')[1]}"])
                         for k in net.state_dict()})


def torch_train(args: argparse.Namespace, rank: int = 0, world: int = 1) -> None:
    """Same data order, recipe and initial weights as `lenet.train`; prints the same epoch lines."""
    import torch
    import torch.nn.functional as F

    from lenet.config import TrainConfig
    from lenet.config import make_schedule
    from lenet.data import epoch_batches, load_mnist, standardize, steps_per_epoch, training_subset

    torch.set_num_threads(args.threads)
    config = TrainConfig(epochs=args.epochs, train_subset=args.train_subset)
    data = training_subset(load_mnist(args.data_dir), config.train_subset)
    net = torch_net()
    load_our_init(net, config.seed)
    model = net
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(net.parameters(), lr=config.base_lr, momentum=config.momentum, nesterov=config.nesterov,
                          weight_decay=config.weight_decay)
    n = len(data.train_labels)
    schedule = make_schedule(config, steps_per_epoch(n, config.batch_size))
    test_x = torch.from_numpy(standardize(data.test_images))
    test_y = torch.from_numpy(data.test_labels.astype(np.int64))
    step = 0
    for epoch in range(config.epochs):
        start = time.perf_counter()
        for idx in epoch_batches(config.seed, epoch, n, config.batch_size):
            part = np.array_split(idx, world)[rank]  # DDP: each rank its share of the global batch
            x = torch.from_numpy(standardize(data.train_images[part]))
            y = torch.from_numpy(data.train_labels[part].astype(np.int64))
            for group in opt.param_groups:
                group["lr"] = schedule(step)
            opt.zero_grad()
            # DDP averages gradients over ranks: scale each rank's sum so the result is the batch mean.
            (F.cross_entropy(model(x), y, reduction="sum") * (world / len(idx))).backward()
            opt.step()
            step += 1
        seconds = time.perf_counter() - start
        if rank == 0:
            with torch.no_grad():
                acc = float((net(test_x).argmax(1) == test_y).float().mean())
            print(f"epoch {epoch + 1}/{config.epochs}: test acc {acc:.2%}  {n / seconds:,.0f} samples/s  "
                  f"{seconds:.1f} s", flush=True)


def _ddp_rank(rank: int, world: int, port: int, args: argparse.Namespace) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch_train(args, rank, world)
    finally:
        dist.destroy_process_group()


def torch_run(args: argparse.Namespace) -> None:
    if not args.ddp:
        torch_train(args)
        return
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_rank, args=(args.ddp, port, args), nprocs=args.ddp)


# --------------------------------------------------------------------------- in-process parts


def rate(step: Callable[[], object], batch: int, seconds: float) -> float:
    step()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        step()
        n += batch
    return n / (time.perf_counter() - start)


def kernel_steps(data, batch: int, have_torch: bool) -> tuple[Callable, Callable | None]:
    from lenet.model import LeNet5

    x, y = LeNet5.prepare(data.train_images[:batch]), data.train_labels[:batch]
    model = LeNet5(seed=0)
    infer = batch > 256
    mine = (lambda: model.forward(x)) if infer else (lambda: model.sum_loss_and_grads(x, y))
    if not have_torch:
        return mine, None
    import torch
    import torch.nn.functional as F

    net = torch_net()
    load_our_init(net, 0)
    tx, ty = torch.from_numpy(x.copy()), torch.from_numpy(y.astype(np.int64))

    def step():
        net.zero_grad()
        F.cross_entropy(net(tx), ty, reduction="sum").backward()

    def forward():
        with torch.no_grad():
            net(tx)

    return mine, (forward if infer else step)


def gemm_gflops(n: int) -> float:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    best = min(timed(lambda: a @ a) for _ in range(3))
    return 2 * n**3 / best / 1e9


def timed(f: Callable[[], object]) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--parts", default="kernel,gemm,train,pair,service,torch", help="comma-separated parts")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing of one kernel measurement")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of every training run (5: end to end)")
    parser.add_argument("--workers", default="1,2,8", help="service worker counts (8 on 2 cores: oversubscribed, "
                        "as `docker compose up --scale worker=8` on a small host)")
    parser.add_argument("--shards", default="", help="service shard counts, comma-separated "
                        "(default: the coordinator's own default)")
    parser.add_argument("--gradient-delay", default="0", help="service runs with these --gradient-delay values, "
                        "comma-separated (0,1: both, side by side; the delayed ones with --warmup-steps "
                        f"{DELAY_WARMUP}, labelled 'delay')")
    parser.add_argument("--train-subset", type=int, default=None, help="train on the first N images only")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, 0.3 s kernel timings, "
                        "a 6,400-image subset, 2048^3 -> 512^3 GEMM")
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DIR") or str(ROOT.parent / "shared" / "mnist"))
    parser.add_argument("--torch-run", action="store_true", help=argparse.SUPPRESS)  # internal: one PyTorch run
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--ddp", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_run:
        torch_run(args)
        return
    if args.quick:
        args.rounds, args.seconds = 1, 0.3
        args.train_subset = args.train_subset or 6400
    parts = set(args.parts.split(","))
    tune_malloc()
    try:
        import torch  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False
    from lenet.data import load_mnist

    data = load_mnist(args.data_dir)
    workers = [int(w) for w in args.workers.split(",") if w]
    shard_counts: list[int | None] = [int(s) for s in args.shards.split(",") if s] or [None]
    delays = [int(d) for d in args.gradient_delay.split(",") if d]
    print(f"{os.cpu_count()} cores, BLAS 1 thread per process, {args.rounds} rounds, "
          f"torch {'installed' if have_torch else 'NOT installed: PyTorch rows skipped'}; "
          f"training runs: {args.epochs} epoch(s){f', {args.train_subset} images' if args.train_subset else ''}")

    kernel_batches = [16, 64, 256, 1000]
    steps = {b: kernel_steps(data, b, have_torch) for b in kernel_batches} if "kernel" in parts else {}
    runs: dict[str, list] = {}  # label -> its command (two commands for the pair)
    with tempfile.TemporaryDirectory() as tmp:
        if "train" in parts:
            runs["trainer"] = ours(args, None, None, f"{tmp}/t.npz")
        if "pair" in parts:  # different seeds: two independent runs, not one computed twice
            runs[PAIR] = [ours(args, None, None, f"{tmp}/p{i}.npz") + ["--seed", str(i + 1)] for i in range(2)]
        if "service" in parts:
            for d in delays:
                for s in shard_counts:
                    for w in workers:
                        label = f"service {w}w" + (f" {s} shards" if s else "") + (" delay" if d else "")
                        runs[label] = ours(args, w, s, f"{tmp}/s.npz", delay=d)
        if "torch" in parts and have_torch:
            runs["torch 1 thread"] = theirs(args, 1)
            runs["torch 2 threads"] = theirs(args, 2)
            runs["torch DDP 2x1"] = theirs(args, 1, ddp=2)
        results: dict[str, list[float]] = defaultdict(list)  # figure -> one value per round
        for r in range(args.rounds):
            order = 1 if r % 2 == 0 else -1  # alternate who goes first
            for b, (mine, other) in steps.items():
                pair = [("numpy", mine), ("torch", other)][::order]
                for who, f in pair:
                    if f is not None:
                        results[f"kernel {b} {who}"].append(rate(f, b, args.seconds))
            if "gemm" in parts:
                results["gemm"].append(gemm_gflops(512 if args.quick else 2048))
            for label, cmd in runs.items():
                res = run_pair(cmd, label) if label == PAIR else run_training(cmd, label)
                for key, value in res.items():
                    results[f"{label} {key}"].append(value)
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    report(results, steps, runs, args)


def breakdown(results: dict[str, list[float]], runs: dict) -> None:
    """Where a service step's time goes: the step, a worker computing and waiting, the coordinator by phase."""
    services = [label for label in runs if results.get(f"{label} ms step")]
    if not services:
        return
    print("\nPer-step breakdown of the service, ms per step (medians over the rounds; worker figures are per "
          "computing worker, at most one per core; between steps: from a step's last result to the next step's work sent, what the workers "
          "wait for the coordinator; coordinator phases are wall time in its loop, cpu is its process's CPU time, split into its loop's "
          "thread (the work per step), the test-set evaluations' thread and the rest (ZeroMQ's I/O thread, the "
          "metrics server); the critical path: the loop's phases from reading a step's last result to the next step's "
          "work sent; a synchronous step is about its critical path + a unit's computing + the unit's round trip beyond "
          "it (transfer both ways, the worker decoding and encoding, the result waiting to be read) + the wait for the "
          "slowest unit, those two over the steps whose units each went out once; with the delay no round trip is "
          "timed):")
    print(f"  {'':<28}" + "".join(f"{label.removeprefix('service '):>12}" for label in services))

    def line(name: str, values: list[float | None]) -> None:
        print(f"  {name:<28}" + "".join(f"{v:>12.2f}" if v is not None else f"{'-':>12}" for v in values))

    def med(label: str, key: str) -> float | None:
        v = results.get(f"{label} ms {key}")
        return statistics.median(v) if v else None

    # Local workers beyond the cores stand by (coordinator/dispatch.py `sharing_cores`): per computing worker.
    computing = [min(int(label.split()[1].rstrip("w")), usable_cores()) for label in services]
    compute = [med(label, "worker compute") / n for label, n in zip(services, computing)]
    line("step", [med(label, "step") for label in services])
    line("worker computing", compute)
    line("worker waiting", [med(label, "step") - c for label, c in zip(services, compute)])
    line("  critical path", [med(label, "critical path") for label in services])
    line("  round trip beyond compute", [med(label, "round trip beyond compute") for label in services])
    line("  waiting for the slowest", [med(label, "waiting for the slowest") for label in services])
    line("between steps", [med(label, "between steps") for label in services])
    line("coordinator cpu", [med(label, "coordinator cpu") for label in services])
    for thread in ("loop thread", "evaluation thread", "other threads"):
        line(f"  {thread}", [med(label, thread) for label in services])
    line("coordinator busy (wall)", [med(label, "coordinator busy") for label in services])
    for phase in ("receive", "checks", "recompute", "reduce", "optimizer", "plan", "send", "evaluation", "checkpoint"):
        line(f"  {phase}", [med(label, phase) for label in services])
    line("coordinator idle", [med(label, "idle") for label in services])
    line("critical path, by phase", [med(label, "critical path") for label in services])
    for phase in ("receive", "checks", "recompute", "reduce", "optimizer", "plan", "send", "checkpoint"):
        line(f"  {phase}", [med(label, f"critical {phase}") for label in services])
    print("  (goal: coordinator cpu <= 1 ms per step at 2 workers, batch 128)")


def report(results: dict[str, list[float]], steps: dict, runs: dict, args: argparse.Namespace) -> None:
    def per_round(a: str, b: str) -> list[float]:
        return [x / y for x, y in zip(results[a], results[b])]

    if steps:
        print("\nKernel step (summed loss and gradients of one batch of real images; inference at 1000), "
              "samples/s, 1 thread:")
        for b in steps:
            print(row(f"batch {b} NumPy", results[f"kernel {b} numpy"], "samples/s"))
            if results.get(f"kernel {b} torch"):
                print(row(f"batch {b} PyTorch", results[f"kernel {b} torch"], "samples/s"))
                print(ratio_row(f"batch {b} NumPy / PyTorch", per_round(f"kernel {b} numpy", f"kernel {b} torch"),
                                "(goal >= 1.3x)" if b <= 256 else ""))
    if results.get("gemm"):
        peak = statistics.median(results["gemm"])
        limit = peak * 1e9 / FLOP_PER_SAMPLE
        print(f"\nGEMM peak, NumPy sgemm 1 thread: {peak:.1f} GFLOP/s {spread(results['gemm'])}")
        print(f"LeNet-5 training FLOP per sample (products: forward {2 * FORWARD_MACS:,}, backward "
              f"{2 * BACKWARD_MACS:,}): {FLOP_PER_SAMPLE:,}; hardware limit {limit:,.0f} samples/s per core")
        for b in steps:
            if b <= 256:
                fractions = [v * FLOP_PER_SAMPLE / (g * 1e9)
                             for v, g in zip(results[f"kernel {b} numpy"], results["gemm"])]
                print(f"  {f'kernel step batch {b}: fraction of the limit':<44} {statistics.median(fractions):>11.1%}  "
                      f"[{min(fractions):.1%}-{max(fractions):.1%}]")
    if runs:
        print(f"\nTraining, {args.epochs} epoch(s), samples/s per epoch as each prints it (training only: the "
              "test-set evaluation is not in it), end to end = wall clock of the whole command:")
        for label in runs:
            print(row(f"{label} per epoch", results[f"{label} epoch"], "samples/s"))
            print(row(f"{label} end to end", results[f"{label} e2e"], "s", ",.1f"))
        breakdown(results, runs)
        print("\nRatios (within each round):")
        pairs = []
        for label in runs:
            if label.startswith("service 1w"):
                pairs += [(label, "trainer", "epoch", "(goal >= 0.95x)"), (label, "trainer", "e2e", "")]
            if label.startswith("service 2w"):
                pairs += [(label, "trainer", "epoch", "(goal >= 1.7x)"),
                          (label, "trainer", "e2e", "(goal >= 1.6x at 5 epochs)")]
                for other in ("torch 2 threads", "torch DDP 2x1"):
                    goal = "(goal >= 1.3x)" if other == "torch 2 threads" else ""
                    pairs += [(label, other, "epoch", goal), (label, other, "e2e", "")]
                pairs.append((label, PAIR, "epoch", ""))
            if label.startswith("service 8w"):
                two = label.replace("service 8w", "service 2w")
                pairs.append((label, two, "epoch", "(goal >= 0.85x)"))
            if label.endswith(" delay"):
                pairs.append((label, label.removesuffix(" delay"), "epoch", ""))
        pairs.append((PAIR, "trainer", "epoch", "(the machine's ceiling for 2 workers)"))
        pairs.append(("trainer", "torch 1 thread", "epoch", ""))
        for a, b, what, goal in pairs:
            if a in runs and b in runs:
                values = per_round(f"{a} {what}", f"{b} {what}")
                if what == "e2e":  # seconds: the faster one has fewer
                    values = [1 / v for v in values]
                print(ratio_row(f"{a} / {b} ({'per epoch' if what == 'epoch' else 'end to end'})", values, goal))
        services = [label for label in runs if label.startswith("service 2w") and "shards" in label]
        for label in services[1:]:
            values = per_round(f"{label} epoch", f"{services[0]} epoch")
            print(ratio_row(f"{label} / {services[0]} (per epoch)", values))
        print("\nPeak RSS (VmHWM), MB:")
        for label in runs:
            if not results.get(f"{label} rss"):
                continue  # the pair: two trainers, each the trainer's size
            print(row(f"{label}", results[f"{label} rss"], "MB"))
            if label.startswith("service"):
                print(row(f"{label}: largest worker", results[f"{label} child_rss"], "MB"))


if __name__ == "__main__":
    main()

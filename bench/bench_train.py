"""Single-process throughput: training at batch 64 and 256, and inference, one BLAS thread.

    python bench/bench_train.py [--seconds 3] [--rounds 3]

If PyTorch is installed (benchmark only: `pip install torch==2.13.0`), the same
network is timed in the same run, alternating rounds, and the ratio is printed.
The product never imports torch.  Random inputs: speed does not depend on values.
"""

from __future__ import annotations

from lenet.runtime import pin_blas_threads, tune_malloc

pin_blas_threads()  # before NumPy (and torch) load their BLAS

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from lenet.config import TrainConfig, make_optimizer  # noqa: E402
from lenet.model import LeNet5  # noqa: E402
from lenet.reduction import mean_gradient  # noqa: E402


def rate(step, batch: int, seconds: float) -> float:
    step()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        step()
        n += batch
    return n / (time.perf_counter() - start)


def numpy_steps(batch: int):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    model = LeNet5(seed=0)
    opt = make_optimizer(TrainConfig(), model.params)

    def train_step():
        sums = model.sum_loss_and_grads(x, y)
        opt.step(model.params, mean_gradient({(0, 1): sums.grads}, 1, batch), 0.01)

    return train_step, lambda: model.forward(x)


def torch_steps(batch: int):
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(400, 120), torch.nn.ReLU(), torch.nn.Linear(120, 84), torch.nn.ReLU(), torch.nn.Linear(84, 10),
    )
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))

    def train_step():
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()

    def infer():
        with torch.no_grad():
            net(x)

    return train_step, infer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of one timed round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each is kept")
    args = parser.parse_args()
    print(f"malloc tuned: {tune_malloc()}; BLAS threads: 1")
    print(f"{'case':<22}{'numpy samples/s':>16}{'torch samples/s':>17}{'numpy/torch':>13}")
    for label, batch, which in (("train batch 64", 64, 0), ("train batch 256", 256, 0), ("inference batch 1000", 1000, 1)):
        ours, theirs = numpy_steps(batch)[which], (torch_steps(batch) or (None, None))[which]
        best_np, best_t = 0.0, 0.0
        for _ in range(args.rounds):
            best_np = max(best_np, rate(ours, batch, args.seconds))
            if theirs is not None:
                best_t = max(best_t, rate(theirs, batch, args.seconds))
        ratio = f"{best_np / best_t:.2f}x" if best_t else "n/a"
        torch_txt = f"{best_t:,.0f}" if best_t else "not installed"
        print(f"{label:<22}{best_np:>16,.0f}{torch_txt:>17}{ratio:>13}")


if __name__ == "__main__":
    main()

"""The 1998 LeNet-5 against the modern one through the service: test error per epoch, a plot and a table.

    python bench/bench_1998.py                          # both models, 20 epochs, 2 local workers
    python bench/bench_1998.py --plot docs/lenet1998.svg --table docs/lenet1998.md
    python bench/bench_1998.py --runs lenet5-1998       # only the reproduction run
    python bench/bench_1998.py --epochs 2 --quick       # smoke run: 2 epochs, 1 worker

Runs, each `python -m coordinator` as a subprocess (start-up and evaluation included):
  lenet5-1998  the documented reproduction command (RECIPE_1998 below, docs/models.md): the paper's
               per-pass learning-rate steps do not depend on the run's length, so its epoch 5 is
               what a 5-epoch run gives, and one run gives both figures;
  lenet5       the default command at --epochs 20, and at --epochs 5 (its cosine schedule depends on
               the run's length: the 5-epoch figure needs its own run).
Prints every epoch's test error as it comes, then a Markdown table (parameters, test error after
5 and 20 epochs, median samples/s per epoch through the service) and writes the plot: test error
per epoch of both 20-epoch runs, the paper's 0.95 % (LeNet-5 without distortions) as a line.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's code, whatever the current directory

import argparse  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from xml.sax.saxutils import escape  # noqa: E402

from lenet.models import get_model  # noqa: E402
from lenet.npzfile import write_bytes_atomic  # noqa: E402

# The reproduction recipe (docs/models.md): SGD with classical momentum 0.9 and the default weight decay
# 5e-4, no warm-up, the paper's learning-rate steps per pass (lenet.optim.PAPER_STEPS) from 0.003.
RECIPE_1998 = ["--model", "lenet5-1998", "--schedule", "paper", "--lr", "0.003", "--no-nesterov", "--warmup-steps", "0"]
PAPER_TEST_ERROR = 0.0095  # LeCun et al. 1998, LeNet-5 trained without distortions
EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+):.*?test acc ([\d.]+)%.*?([\d,]+) samples/s")


def run(label: str, flags: Sequence[str], epochs: int, workers: int, out: Path) -> list[tuple[float, float]]:
    """One coordinator run: (test error, samples/s) per epoch, printed as they come."""
    cmd = [sys.executable, "-m", "coordinator", *flags, "--epochs", str(epochs), "--workers", str(workers),
           "--output", str(out / f"{label}.npz"), "--checkpoint-dir", "off", "--metrics-port", "0",
           "--no-progress"]
    print(f"$ {' '.join(cmd[1:])}", flush=True)
    epochs_seen: list[tuple[float, float]] = []
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            found = EPOCH_LINE.search(line)
            if found:
                error = 1 - float(found[3]) / 100
                epochs_seen.append((error, float(found[4].replace(",", ""))))
                print(f"  {label} epoch {found[1]}/{found[2]}: test error {error:.2%}  "
                      f"{found[4]} samples/s", flush=True)
    if proc.returncode != 0 or len(epochs_seen) != epochs:
        raise SystemExit(f"{label}: the coordinator exited with status {proc.returncode} after "
                         f"{len(epochs_seen)} of {epochs} epochs")
    return epochs_seen


def error_svg(series: Mapping[str, Sequence[float]], reference: float, width: int = 640, height: int = 360) -> str:
    """Test error per epoch, one polyline per run, the paper's figure as a dashed line; self-contained SVG."""
    left, top, plot_w, plot_h = 60, 40, width - 260, height - 90  # 160 px on the right for the legend
    longest = max(len(v) for v in series.values())
    y_hi = max(max(v[1:] or v) for v in series.values()) * 1.1  # the first epoch's error would flatten the rest
    y_hi = max(y_hi, reference * 1.5)

    def px(epoch: int) -> float:
        return left + (epoch - 1) / max(1, longest - 1) * plot_w

    def py(error: float) -> float:
        return top + plot_h - min(error, y_hi) / y_hi * plot_h

    colours = ["#c0392b", "#2471a3", "#229954", "#7d3c98"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="#fafafa"/>',
             f'<text x="{left + plot_w / 2}" y="20" font-size="13" text-anchor="middle">MNIST test error per '
             f'epoch, through the service</text>',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#888"/>']
    for i in range(5):
        v = y_hi * i / 4
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(v):.1f}" y2="{py(v):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{100 * v:.1f}%</text>')
    for e in range(1, longest + 1, max(1, longest // 10)):
        parts.append(f'<text x="{px(e):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{e}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h + 34}" text-anchor="middle">epoch</text>')
    parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(reference):.1f}" y2="{py(reference):.1f}" '
                 f'stroke="#555" stroke-dasharray="5,4"/>')
    legend = [(f"paper, LeNet-5 without distortions: {100 * reference:.2f}%", "#555", True)]
    for (label, errors), colour in zip(series.items(), colours):
        points = " ".join(f"{px(e):.1f},{py(v):.1f}" for e, v in enumerate(errors, 1))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2" '
                     f'data-series="{escape(label)}"/>')
        legend.append((f"{label}: {100 * errors[-1]:.2f}% after {len(errors)} epochs", colour, False))
    y = top + 12
    for text, colour, dashed in legend:  # each entry below the previous one's wrapped lines
        dash = ' stroke-dasharray="5,4"' if dashed else ""
        parts.append(f'<line x1="{left + plot_w + 12}" x2="{left + plot_w + 30}" y1="{y}" y2="{y}" '
                     f'stroke="{colour}" stroke-width="2"{dash}/>')
        chunks = _wrap(text, 24)  # about 6 px a character at 11 px: within the 160 px
        for j, chunk in enumerate(chunks):
            parts.append(f'<text x="{left + plot_w + 34}" y="{y + 4 + 13 * j}">{escape(chunk)}</text>')
        y += 13 * len(chunks) + 10
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line]


def table(results: Mapping[str, list[tuple[float, float]]], short: Mapping[str, list[tuple[float, float]]],
          epochs: int) -> str:
    """The Markdown side-by-side table of the models."""
    rows = ["| model | trainable parameters | test error after 5 epochs | after "
            f"{epochs} epochs | samples/s through the service (median epoch) |",
            "| --- | ---: | ---: | ---: | ---: |"]
    for name, history in results.items():
        params = sum(math.prod(s) for s in get_model(name).PARAM_SHAPES.values())
        five = short.get(name, history)
        after5 = f"{five[4][0]:.2%}" if len(five) >= 5 else "-"
        speed = statistics.median(s for _, s in history)
        rows.append(f"| `{name}` | {params:,} | {after5} | {history[-1][0]:.2%} | {speed:,.0f} |")
    return "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="lenet5-1998,lenet5", help="comma-separated: lenet5-1998, lenet5")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 worker, no 5-epoch run of the modern model")
    parser.add_argument("--plot", type=Path, default=Path("lenet1998.svg"), help="the SVG to write")
    parser.add_argument("--table", type=Path, default=None, help="also write the Markdown table here")
    args = parser.parse_args(argv)
    workers = 1 if args.quick else args.workers
    wanted = [r for r in args.runs.split(",") if r]
    results: dict[str, list[tuple[float, float]]] = {}
    short: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if "lenet5-1998" in wanted:
            results["lenet5-1998"] = run("lenet5-1998", RECIPE_1998, args.epochs, workers, out)
        if "lenet5" in wanted:
            results["lenet5"] = run("lenet5", [], args.epochs, workers, out)
            if not args.quick and args.epochs != 5:
                short["lenet5"] = run("lenet5-5", [], 5, workers, out)
    text = table(results, short, args.epochs)
    print()
    print(text, end="")
    if args.table:
        write_bytes_atomic(args.table, text.encode())
    write_bytes_atomic(args.plot, error_svg({k: [e for e, _ in v] for k, v in results.items()},
                                            PAPER_TEST_ERROR).encode())
    print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

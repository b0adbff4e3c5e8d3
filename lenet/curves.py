"""A run's training curves as one self-contained SVG file: no plotting library, no external assets.

Two panels side by side, per finished epoch: the mean training loss, and the train
and test accuracy.  The input is the run's epoch history, a list of mappings with
`epoch`, `loss`, `train_accuracy` and `test_accuracy` (what both trainers keep).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from lenet.npzfile import write_bytes_atomic

WIDTH, HEIGHT = 760, 320
PANEL_W, PANEL_H = 300, 220  # plotting area of each panel
LEFT, TOP = 60, 50  # where the first panel's plotting area starts
GAP = 80  # between the panels
SERIES = {"loss": "#c0392b", "train_accuracy": "#2471a3", "test_accuracy": "#229954"}


def curves_path(model_path: str | os.PathLike) -> Path:
    """Where a model's curves go: `lenet5.npz` -> `lenet5.svg`."""
    return Path(model_path).with_suffix(".svg")


def _fmt(x: float) -> str:
    return f"{x:.2f}"


def _nice_range(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5 * (abs(lo) or 1.0), hi + 0.5 * (abs(hi) or 1.0)
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad


def _panel(x0: float, title: str, epochs: list[int], series: dict[str, list[float]],
           yrange: tuple[float, float], ylabel: str, percent: bool) -> list[str]:
    """One panel: frame, ticks, one polyline (and its points) per series."""
    out = [f'<g class="panel" data-title="{escape(title)}">',
           f'<text x="{_fmt(x0 + PANEL_W / 2)}" y="{TOP - 18}" class="title">{escape(title)}</text>',
           f'<rect x="{x0}" y="{TOP}" width="{PANEL_W}" height="{PANEL_H}" class="frame"/>']
    e_lo, e_hi = (epochs[0], epochs[-1]) if epochs else (1, 1)
    e_span = max(1, e_hi - e_lo)
    y_lo, y_hi = yrange

    def px(e: float) -> float:
        return x0 + (PANEL_W / 2 if e_hi == e_lo else (e - e_lo) / e_span * PANEL_W)

    def py(v: float) -> float:
        return TOP + PANEL_H - (v - y_lo) / (y_hi - y_lo) * PANEL_H

    for i in range(5):  # horizontal grid and y labels
        v = y_lo + (y_hi - y_lo) * i / 4
        label = f"{100 * v:.1f}%" if percent else f"{v:.3g}"
        out.append(f'<line x1="{x0}" x2="{x0 + PANEL_W}" y1="{_fmt(py(v))}" y2="{_fmt(py(v))}" class="grid"/>')
        out.append(f'<text x="{x0 - 6}" y="{_fmt(py(v) + 4)}" class="ylab">{label}</text>')
    step = max(1, math.ceil(len(epochs) / 10))
    for e in epochs[::step]:
        out.append(f'<text x="{_fmt(px(e))}" y="{TOP + PANEL_H + 16}" class="xlab">{e}</text>')
    out.append(f'<text x="{_fmt(x0 + PANEL_W / 2)}" y="{TOP + PANEL_H + 34}" class="axis">epoch</text>')
    out.append(f'<text x="{x0 - 48}" y="{TOP - 6}" class="axis" text-anchor="start">{escape(ylabel)}</text>')
    for name, values in series.items():
        points = " ".join(f"{_fmt(px(e))},{_fmt(py(v))}" for e, v in zip(epochs, values))
        out.append(f'<polyline class="series" data-series="{name}" points="{points}" '
                   f'fill="none" stroke="{SERIES[name]}" stroke-width="2"/>')
        out.extend(f'<circle cx="{_fmt(px(e))}" cy="{_fmt(py(v))}" r="3" fill="{SERIES[name]}"/>'
                   for e, v in zip(epochs, values))
    out.append("</g>")
    return out


def epoch_curves_svg(history: Sequence[Mapping[str, float]], title: str = "LeNet-5 on MNIST") -> str:
    """The SVG document of loss and train/test accuracy per epoch."""
    epochs = [int(h["epoch"]) for h in history]
    loss = [float(h["loss"]) for h in history]
    train = [float(h["train_accuracy"]) for h in history]
    test = [float(h["test_accuracy"]) for h in history]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
             "<style>.frame{fill:#fff;stroke:#888}.grid{stroke:#ddd}.title{font-size:13px;text-anchor:middle}"
             ".xlab{text-anchor:middle;fill:#444}.ylab{text-anchor:end;fill:#444}.axis{text-anchor:middle;"
             "fill:#444}</style>",
             f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#fafafa"/>',
             f'<text x="{WIDTH / 2}" y="14" font-size="13" text-anchor="middle">{escape(title)}</text>']
    if not history:
        parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no epoch finished</text>')
    else:
        last = history[-1]
        parts += _panel(LEFT, "training loss", epochs, {"loss": loss}, _nice_range(loss), "loss", False)
        acc_lo, acc_hi = _nice_range(train + test)
        parts += _panel(LEFT + PANEL_W + GAP, "accuracy", epochs, {"train_accuracy": train, "test_accuracy": test},
                        (acc_lo, min(acc_hi, 1.0)), "accuracy", True)  # no axis above 100%
        legend_x = LEFT + PANEL_W + GAP
        for i, (name, label) in enumerate([("train_accuracy", f"train {100 * float(last['train_accuracy']):.2f}%"),
                                           ("test_accuracy", f"test {100 * float(last['test_accuracy']):.2f}%")]):
            x = legend_x + 150 * i
            parts.append(f'<line x1="{x}" x2="{x + 18}" y1="{HEIGHT - 12}" y2="{HEIGHT - 12}" '
                         f'stroke="{SERIES[name]}" stroke-width="2"/>')
            parts.append(f'<text x="{x + 22}" y="{HEIGHT - 8}">{label}</text>')
        parts.append(f'<text x="{LEFT}" y="{HEIGHT - 8}">final loss {float(last["loss"]):.4f}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_curves(model_path: str | os.PathLike, history: Sequence[Mapping[str, float]]) -> Path:
    """Write the curves next to the model, atomically; return the path."""
    return write_bytes_atomic(curves_path(model_path), epoch_curves_svg(history).encode())

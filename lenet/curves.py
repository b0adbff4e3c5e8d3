"""A run's training curves as one self-contained SVG file: hand-written, no plotting library, no external assets.

Two panels side by side against the epoch (from 0): the training loss (the run
log's per-step records as a line, each epoch's mean as points; a log axis when it
spans 10x or more) and the train and test accuracy per epoch.  Ticks are 1-2-5
steps (`linear_ticks`, `log_ticks`), margins follow the widest tick label, and
each panel's legend sits between its title and its plot, away from the axis labels.

Why hand-written rather than matplotlib: two panels of lines and points need
about 200 lines here; matplotlib is a 40 MB dependency with its own font and
backend set-up, for one file written at the end of a run, and its SVG (glyph paths,
generated ids) is harder to check in tests than this one, whose series carry
`data-series` attributes.

The input is the run's epoch history (mappings with `epoch`, `loss`,
`train_accuracy`, `test_accuracy`) and optionally the run log's step records
(`epoch` fractional, `loss`; lenet/runlog.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from lenet.npzfile import write_bytes_atomic

FONT = 11  # px
CHAR_W = 0.62 * FONT  # a generous average glyph width of a sans-serif digit or letter: layout estimates
PLOT_W, PLOT_H = 300, 210  # plotting area of each panel
TOP = 74  # where the plotting areas start: title, panel titles and legends above
GAP = 36  # between a panel's right edge and the next panel's tick labels
SERIES = {"step_loss": "#e6a19a", "loss": "#c0392b", "train_accuracy": "#2471a3", "test_accuracy": "#229954"}
MAX_TICKS = 7


def curves_path(model_path: str | os.PathLike) -> Path:
    """Where a model's curves go: `lenet5.npz` -> `lenet5.svg`."""
    return Path(model_path).with_suffix(".svg")


def _fmt(x: float) -> str:
    return f"{x:.2f}"


def _decimals(step: float) -> int:
    """Decimals that show every multiple of a 1-2-5 `step` exactly, and no more."""
    return max(0, -math.floor(math.log10(step) + 1e-9))


def linear_ticks(lo: float, hi: float, max_ticks: int = MAX_TICKS) -> tuple[list[float], int]:
    """Ticks at multiples of a 1-2-5 step covering [lo, hi] (at most `max_ticks`), and their decimals."""
    if not hi > lo:
        lo, hi = lo - (abs(lo) or 1.0) * 0.01, hi + (abs(hi) or 1.0) * 0.01  # one value: a narrow band round it
    raw = (hi - lo) / (max_ticks - 1)
    power = 10.0 ** math.floor(math.log10(raw))
    for step in (m * power for m in (1, 2, 5, 10, 20, 50)):  # the finest that needs no more than max_ticks
        first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
        if last - first + 1 <= max_ticks:
            break
    decimals = _decimals(step)
    return [round(i * step, decimals + 1) for i in range(first, last + 1)], decimals


def log_ticks(lo: float, hi: float, max_ticks: int = 10) -> list[float]:
    """Ticks of a log axis covering [lo, hi] (both > 0): 1-2-5 in each decade, or decades alone if too many."""
    k0, k1 = math.floor(math.log10(lo) + 1e-9), math.ceil(math.log10(hi) - 1e-9)

    def covering(mantissas: tuple[int, ...]) -> list[float]:
        ticks = [round(m * 10.0 ** k, max(0, -k) + 1) for k in range(k0, k1 + 1) for m in mantissas]
        below = [t for t in ticks if t <= lo * (1 + 1e-9)]
        above = [t for t in ticks if t >= hi * (1 - 1e-9)]
        return [t for t in ticks if below[-1] <= t <= above[0]]

    fine = covering((1, 2, 5))
    return fine if len(fine) <= max_ticks else covering((1,))


def _label(v: float, decimals: int, percent: bool) -> str:
    return f"{v:.{decimals}f}%" if percent else f"{v:.{decimals}f}"


def _text_width(text: str) -> float:
    return CHAR_W * len(text)


class _Axis:
    """A y axis: ticks with labels and a value -> pixel map."""

    def __init__(self, values: Sequence[float], percent: bool, log: bool = False):
        self.log = log
        if log:
            self.ticks = log_ticks(min(values), max(values))
            self.labels = [_label(t, max(0, -math.floor(math.log10(t) + 1e-9)), False) for t in self.ticks]
        else:
            # Multiples of the step: no tick below 0 for values >= 0, none above 100 % (the step divides 100).
            self.ticks, decimals = linear_ticks(min(values), max(values))
            self.labels = [_label(t, decimals, percent) for t in self.ticks]
        self.lo, self.hi = self.ticks[0], self.ticks[-1]

    def y(self, v: float) -> float:
        if self.log:
            frac = (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            frac = (v - self.lo) / (self.hi - self.lo)
        return TOP + PLOT_H - frac * PLOT_H

    @property
    def label_width(self) -> float:
        return max(_text_width(label) for label in self.labels)


def _text(x: float, y: float, text: str, cls: str, extra: str = "") -> str:
    return f'<text x="{_fmt(x)}" y="{_fmt(y)}" class="{cls}"{extra}>{escape(text)}</text>'


def _panel(x0: float, title: str, x_ticks: list[float], x_decimals: int, axis: _Axis, ylabel: str,
           lines: dict[str, list[tuple[float, float]]], points: dict[str, list[tuple[float, float]]],
           legend: list[tuple[str, str]]) -> list[str]:
    """One panel: frame, grid, ticks, axis titles, legend above the plot, lines and points."""
    x_lo, x_hi = x_ticks[0], x_ticks[-1]

    def px(e: float) -> float:
        return x0 + (e - x_lo) / (x_hi - x_lo) * PLOT_W

    out = [f'<g class="panel" data-title="{escape(title)}">',
           _text(x0 + PLOT_W / 2, 40, title, "title"),
           f'<rect x="{x0}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}" class="frame"/>']
    for v, label in zip(axis.ticks, axis.labels):
        y = _fmt(axis.y(v))
        out.append(f'<line x1="{x0}" x2="{x0 + PLOT_W}" y1="{y}" y2="{y}" class="grid"/>')
        out.append(_text(x0 - 6, axis.y(v) + FONT * 0.35, label, "ylab"))
    for e in x_ticks:
        out.append(f'<line x1="{_fmt(px(e))}" x2="{_fmt(px(e))}" y1="{TOP + PLOT_H}" y2="{TOP + PLOT_H + 4}" '
                   'class="tick"/>')
        out.append(_text(px(e), TOP + PLOT_H + 16, f"{e:.{x_decimals}f}", "xlab"))
    out.append(_text(x0 + PLOT_W / 2, TOP + PLOT_H + 34, "epoch", "axis"))
    title_x = x0 - 6 - axis.label_width - 8  # left of the widest tick label, rotated
    out.append(_text(title_x, TOP + PLOT_H / 2, ylabel, "axis",
                     f' transform="rotate(-90 {_fmt(title_x)} {_fmt(TOP + PLOT_H / 2)})"'))
    x = x0
    for name, label in legend:  # one row between the panel's title and its plot
        out.append(f'<line x1="{_fmt(x)}" x2="{_fmt(x + 18)}" y1="{TOP - 14}" y2="{TOP - 14}" '
                   f'stroke="{SERIES[name]}" stroke-width="2"/>')
        out.append(_text(x + 22, TOP - 14 + FONT * 0.35, label, "legend"))
        x += 22 + _text_width(label) + 16
    for name, xy in lines.items():
        if xy:
            pts = " ".join(f"{_fmt(px(e))},{_fmt(axis.y(v))}" for e, v in xy)
            out.append(f'<polyline class="series" data-series="{name}" points="{pts}" fill="none" '
                       f'stroke="{SERIES[name]}" stroke-width="{1.2 if name == "step_loss" else 2}"/>')
    for name, xy in points.items():
        pts = " ".join(f"{_fmt(px(e))},{_fmt(axis.y(v))}" for e, v in xy)
        out.append(f'<polyline class="series" data-series="{name}" points="{pts}" fill="none" '
                   f'stroke="{SERIES[name]}" stroke-width="2"/>')
        out.extend(f'<circle cx="{_fmt(px(e))}" cy="{_fmt(axis.y(v))}" r="3" fill="{SERIES[name]}"/>' for e, v in xy)
    out.append("</g>")
    return out


def _finite(pairs: list[tuple[float, Any]]) -> list[tuple[float, float]]:
    return [(e, float(v)) for e, v in pairs if isinstance(v, (int, float)) and math.isfinite(v)]


def epoch_curves_svg(history: Sequence[Mapping[str, Any]], steps: Sequence[Mapping[str, Any]] = (),
                     title: str = "LeNet-5 on MNIST") -> str:
    """The SVG document of the loss (per step and per epoch) and train/test accuracy per epoch."""
    epoch_loss = _finite([(float(h["epoch"]), h["loss"]) for h in history])
    step_loss = _finite([(float(s["epoch"]), s["loss"]) for s in steps])
    train = _finite([(float(h["epoch"]), 100 * h["train_accuracy"]) for h in history])
    test = _finite([(float(h["epoch"]), 100 * h["test_accuracy"]) for h in history])
    header = ["<style>.frame{fill:#fff;stroke:#888}.grid{stroke:#e4e4e4}.tick{stroke:#888}"
              ".title{font-size:13px;text-anchor:middle}.xlab{text-anchor:middle;fill:#444}"
              ".ylab{text-anchor:end;fill:#444}.axis{text-anchor:middle;fill:#444}.legend{fill:#222}</style>"]
    if not history or not (epoch_loss or step_loss) or not (train or test):
        width, height = 2 * PLOT_W + 160, TOP + PLOT_H + 48
        body = [_text(width / 2, height / 2, "no epoch finished", "axis")]
    else:
        last_epoch = max(e for e, _ in epoch_loss + step_loss + train + test)
        x_ticks, x_dec = linear_ticks(0.0, last_epoch)
        if last_epoch >= 2 and x_dec > 0:  # whole epochs when there are several
            x_ticks, x_dec = linear_ticks(0.0, last_epoch, max_ticks=min(MAX_TICKS, int(last_epoch) + 1))
            x_ticks, x_dec = [t for t in x_ticks if t == int(t)], 0
        losses = [v for _, v in epoch_loss + step_loss]
        loss_axis = _Axis(losses, percent=False, log=min(losses) > 0 and max(losses) >= 10 * min(losses))
        acc_axis = _Axis([v for _, v in train + test], percent=True)
        x1 = 16 + FONT + loss_axis.label_width + 14  # y title, tick labels, tick gap
        x2 = x1 + PLOT_W + GAP + FONT + acc_axis.label_width + 14
        width, height = math.ceil(x2 + PLOT_W + 20), TOP + PLOT_H + 48
        last = history[-1]
        loss_legend = [("loss", f"epoch mean (last {float(last['loss']):.4f})")]
        if step_loss:
            loss_legend.insert(0, ("step_loss", "per step"))
        loss_title = "loss (log scale)" if loss_axis.log else "loss"
        body = _panel(x1, "training loss", x_ticks, x_dec, loss_axis, loss_title, {"step_loss": step_loss},
                      {"loss": epoch_loss}, loss_legend)
        body += _panel(x2, "accuracy", x_ticks, x_dec, acc_axis, "accuracy", {},
                       {"train_accuracy": train, "test_accuracy": test},
                       [("train_accuracy", f"train {100 * float(last['train_accuracy']):.2f}%"),
                        ("test_accuracy", f"test {100 * float(last['test_accuracy']):.2f}%")])
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="{FONT}">', *header,
             f'<rect width="{width}" height="{height}" fill="#fafafa"/>',
             f'<text x="{width / 2}" y="16" font-size="13" text-anchor="middle">{escape(title)}</text>', *body,
             "</svg>"]
    return "\n".join(parts) + "\n"


def write_curves(model_path: str | os.PathLike, history: Sequence[Mapping[str, Any]],
                 steps: Sequence[Mapping[str, Any]] = (), title: str = "LeNet-5 on MNIST") -> Path:
    """Write the curves next to the model, atomically; return the path."""
    return write_bytes_atomic(curves_path(model_path), epoch_curves_svg(history, steps, title).encode())

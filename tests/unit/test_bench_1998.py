"""bench/bench_1998.py's pure parts: the epoch lines it reads, the plot and the table it writes."""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import bench_1998  # noqa: E402


def test_reads_the_coordinators_epoch_line():
    line = ("2026-12-03 16:48:10,151 coordinator epoch 3/20: loss 1.6549  train acc 98.48%  test acc 98.53%  "
            "60000 samples  6,594 samples/s  2 workers")
    found = bench_1998.EPOCH_LINE.search(line)
    assert found and (found[1], found[2], found[3], found[4]) == ("3", "20", "98.53", "6,594")


def test_plot_has_one_line_per_run_and_the_papers_figure():
    svg = bench_1998.error_svg({"lenet5-1998": [0.033, 0.018, 0.0099], "lenet5": [0.02, 0.01, 0.008]}, 0.0095)
    root = ET.fromstring(svg)
    lines = [e for e in root.iter() if e.tag.endswith("polyline")]
    assert [e.get("data-series") for e in lines] == ["lenet5-1998", "lenet5"]
    legend = " ".join(e.text for e in root.iter() if e.tag.endswith("text") and e.text)
    assert "0.95%" in legend and "lenet5-1998: 0.99% after 3 epochs" in legend
    ys = [float(e.get("y")) for e in root.iter() if e.tag.endswith("text") and float(e.get("x")) > 400]
    assert len(set(ys)) == len(ys)  # no legend line drawn over another


def test_table_gives_parameters_errors_after_5_and_20_and_speed():
    history = [(0.05 - 0.002 * e, 6000.0 + e) for e in range(20)]
    text = bench_1998.table({"lenet5-1998": history, "lenet5": history}, {"lenet5": history[:5]}, 20)
    rows = text.splitlines()
    assert rows[2] == "| `lenet5-1998` | 60,000 | 4.20% | 1.20% | 6,010 |"
    assert rows[3].startswith("| `lenet5` | 61,706 | 4.20% |")
    short = bench_1998.table({"lenet5": history[:2]}, {}, 2)
    assert "| `lenet5` | 61,706 | - |" in short

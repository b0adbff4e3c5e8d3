"""The end-of-run SVG: valid XML, one polyline per series, 1-2-5 ticks, labels that neither clip nor overlap."""

import math
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lenet.curves import CHAR_W, FONT, curves_path, epoch_curves_svg, linear_ticks, log_ticks, write_curves
from lenet.status import StorageError

SVG = "{http://www.w3.org/2000/svg}"
HISTORY = [{"epoch": e, "loss": 0.5 / e, "train_accuracy": 0.9 + 0.01 * e, "test_accuracy": 0.92 + 0.012 * e}
           for e in range(1, 6)]


def polylines(svg: str) -> dict[str, list[tuple[float, float]]]:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return {p.get("data-series"): [tuple(map(float, xy.split(","))) for xy in p.get("points").split()]
            for p in root.iter(f"{SVG}polyline")}


def test_one_polyline_per_series_with_one_point_per_epoch():
    lines = polylines(epoch_curves_svg(HISTORY))
    assert set(lines) == {"loss", "train_accuracy", "test_accuracy"}
    assert all(len(points) == 5 for points in lines.values())


def test_points_follow_the_values():
    lines = polylines(epoch_curves_svg(HISTORY))
    xs = [x for x, _ in lines["loss"]]
    assert xs == sorted(xs) and len(set(xs)) == 5  # epochs left to right
    loss_y = [y for _, y in lines["loss"]]
    assert loss_y == sorted(loss_y)  # falling loss: SVG y grows downwards
    test_y = [y for _, y in lines["test_accuracy"]]
    assert test_y == sorted(test_y, reverse=True)  # rising accuracy
    # Test accuracy is above train accuracy at every epoch here: drawn higher (smaller y).
    assert all(t < r for (_, t), (_, r) in zip(lines["test_accuracy"], lines["train_accuracy"]))


def test_single_epoch_and_empty_history_are_still_valid_documents():
    one = polylines(epoch_curves_svg(HISTORY[:1]))
    assert all(len(points) == 1 for points in one.values())
    empty = epoch_curves_svg([])
    assert polylines(empty) == {} and "no epoch finished" in empty


def test_written_next_to_the_model(tmp_path):
    path = write_curves(tmp_path / "run" / "lenet5.npz", HISTORY)
    assert path == tmp_path / "run" / "lenet5.svg" == curves_path(tmp_path / "run" / "lenet5.npz")
    assert polylines(path.read_text())["loss"]
    assert [p.name for p in path.parent.iterdir()] == ["lenet5.svg"]  # no temporary left behind


def test_unwritable_place_is_a_storage_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(StorageError, match="cannot write"):
        write_curves(tmp_path / "file" / "lenet5.npz", HISTORY)


# What a real 5-epoch run logs: falling loss, accuracies near 100 %, ~20 step records an epoch.
REAL = [{"epoch": 1, "loss": 0.2689, "train_accuracy": 0.9216, "test_accuracy": 0.9798},
        {"epoch": 2, "loss": 0.0703, "train_accuracy": 0.9787, "test_accuracy": 0.9866},
        {"epoch": 3, "loss": 0.0412, "train_accuracy": 0.9871, "test_accuracy": 0.9890},
        {"epoch": 4, "loss": 0.0230, "train_accuracy": 0.9925, "test_accuracy": 0.9917},
        {"epoch": 5, "loss": 0.0127, "train_accuracy": 0.9966, "test_accuracy": 0.9925}]
STEPS = [{"epoch": i / 20, "loss": 2.3 * math.exp(-i / 8) + 0.01} for i in range(1, 101)]


def one_two_five(step: float) -> bool:
    mantissa = step / 10 ** math.floor(math.log10(step) + 1e-9)
    return any(abs(mantissa - m) < 1e-3 for m in (1, 2, 5))  # float differences of ticks near 1e3 x 1e-7


@given(lo=st.floats(-1e4, 1e4), span=st.floats(1e-6, 1e4))
def test_linear_ticks_are_1_2_5_steps_that_cover_the_values(lo, span):
    hi = lo + span
    ticks, decimals = linear_ticks(lo, hi)
    hair = 1e-9 * span  # values within a rounding hair of a tick are on it
    assert 2 <= len(ticks) <= 7 and ticks[0] <= lo + hair and ticks[-1] >= hi - hair
    steps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert all(x == pytest.approx(max(steps), rel=1e-3) for x in steps) and one_two_five(max(steps))
    labels = [f"{t:.{decimals}f}" for t in ticks]
    assert len(set(labels)) == len(labels)  # enough decimals to tell them apart ...
    assert decimals == 0 or any(not label.endswith("0") for label in labels)  # ... and no more
    if lo >= 0:
        assert ticks[0] >= 0


def test_log_ticks_are_1_2_5_per_decade_and_bracket_the_values():
    assert log_ticks(0.0127, 0.2689) == [0.01, 0.02, 0.05, 0.1, 0.2, 0.5]
    assert log_ticks(0.012, 2.31) == [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5]
    assert log_ticks(1e-4, 3.0) == [1e-4, 1e-3, 0.01, 0.1, 1, 10]  # too many for 1-2-5: decades


def y_labels(svg: str, panel: str) -> list[str]:
    root = ET.fromstring(svg)
    group = next(g for g in root.iter(f"{SVG}g") if g.get("data-title") == panel)
    return [t.text for t in group.iter(f"{SVG}text") if t.get("class") == "ylab"]


def test_axes_of_a_real_run_have_round_labels_and_no_negative_loss():
    svg = epoch_curves_svg(REAL)
    loss = y_labels(svg, "training loss")
    assert loss == ["0.01", "0.02", "0.05", "0.1", "0.2", "0.5"]  # spans 20x: a log axis
    assert "(log scale)" in svg
    assert y_labels(svg, "accuracy") == ["92%", "94%", "96%", "98%", "100%"]
    linear = y_labels(epoch_curves_svg([dict(h, loss=0.05 + h["loss"] / 10) for h in REAL]), "training loss")
    assert linear == ["0.050", "0.055", "0.060", "0.065", "0.070", "0.075", "0.080"]
    for label in loss + linear:
        assert not label.startswith("-") and len(label.split(".")[-1]) <= 3


def text_boxes(svg: str, cls: str | None = None) -> list[tuple[str, float, float, float, float]]:
    """(text, x0, y0, x1, y1) of every label (of class `cls`), with the layout's own glyph-width estimate."""
    boxes = []
    for t in ET.fromstring(svg).iter(f"{SVG}text"):
        size = float(t.get("font-size", FONT))
        width, x, y = CHAR_W * size / FONT * len(t.text), float(t.get("x")), float(t.get("y"))
        anchor = t.get("text-anchor") or {"ylab": "end", "legend": "start"}.get(t.get("class"), "middle")
        x0 = {"start": x, "middle": x - width / 2, "end": x - width}[anchor]
        box = (x0, y - 0.8 * size, x0 + width, y + 0.2 * size)
        if "rotate(-90" in (t.get("transform") or ""):  # turned about (x, y): width runs upwards
            box = (x - 0.8 * size, y - width / 2, x + 0.2 * size, y + width / 2)
        if cls is None or t.get("class") == cls:
            boxes.append((t.text, *box))
    return boxes


@pytest.mark.parametrize("history, steps", [(REAL, STEPS), (REAL[:1], STEPS[:20]), (HISTORY, ()),
                                            ([dict(h, epoch=10 * h["epoch"]) for h in REAL], ())])
def test_no_label_is_clipped_or_overlaps_another(history, steps):
    svg = epoch_curves_svg(history, steps)
    root = ET.fromstring(svg)
    width, height = float(root.get("width")), float(root.get("height"))
    boxes = text_boxes(svg)
    for text, x0, y0, x1, y1 in boxes:
        assert 0 <= x0 and x1 <= width and 0 <= y0 and y1 <= height, text
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            apart = a[3] <= b[1] or b[3] <= a[1] or a[4] <= b[2] or b[4] <= a[2]
            assert apart, (a, b)


def test_the_legend_is_above_the_plot_and_the_x_label_below_it():
    svg = epoch_curves_svg(REAL, STEPS)
    frame_top = min(float(r.get("y")) for r in ET.fromstring(epoch_curves_svg(REAL, STEPS)).iter(f"{SVG}rect")
                    if r.get("class") == "frame")
    legend, axis = text_boxes(svg, "legend"), [b for b in text_boxes(svg, "axis") if b[0] == "epoch"]
    assert len(legend) == 4 and len(axis) == 2
    assert all(b[4] <= frame_top for b in legend) and all(b[2] > frame_top for b in axis)


def test_a_one_epoch_run_draws_its_steps_across_the_epoch():
    lines = polylines(epoch_curves_svg(REAL[:1], STEPS[:20]))
    assert len(lines["step_loss"]) == 20 and len(lines["loss"]) == 1
    xs = [x for x, _ in lines["step_loss"]]
    left, right = xs[0], lines["loss"][0][0]
    assert xs == sorted(xs) and xs[-1] == right and right - left > 250  # a line over the whole epoch, not a dot
    labels = [b[0] for b in text_boxes(epoch_curves_svg(REAL[:1], STEPS[:20]), "xlab")]
    assert labels == 2 * ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]


def test_several_epochs_tick_whole_epochs_from_zero():
    labels = [b[0] for b in text_boxes(epoch_curves_svg(REAL, STEPS), "xlab")]
    assert labels == 2 * ["0", "1", "2", "3", "4", "5"]

"""The end-of-run SVG: valid XML, one polyline per series with one point per epoch, written atomically."""

import xml.etree.ElementTree as ET

import pytest

from lenet.curves import curves_path, epoch_curves_svg, write_curves
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

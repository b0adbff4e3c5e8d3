"""At the end of a coordinator run the epoch and step curves are written next to the model and the path is logged."""

import xml.etree.ElementTree as ET

from procs import coordinator


def test_coordinator_writes_the_curves_next_to_the_model(tmp_path, procs):
    proc = coordinator(tmp_path, "--workers", "1", "--train-subset", "1280", "--epochs", "2", "--checkpoint-dir",
                       "off", "--output", str(tmp_path / "run.npz"))
    procs.append(proc)
    assert proc.wait() == 0, proc.log()
    svg = tmp_path / "run.svg"
    assert f"model saved to {tmp_path / 'run.npz'}, curves to {svg}, run log to {tmp_path / 'run.jsonl'}" in proc.log()
    lines = {p.get("data-series"): p.get("points").split()
             for p in ET.parse(svg).getroot().iter("{http://www.w3.org/2000/svg}polyline")}
    assert {name: len(points) for name, points in lines.items()} == {"loss": 2, "train_accuracy": 2,
                                                                    "test_accuracy": 2, "step_loss": 20}

"""bench/bench_scale.py at a tiny size, and its simulated workers: every one computes, everything ends cleanly."""

import json
import logging
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from procs import env

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import bench_scale  # noqa: E402
import sim_workers  # noqa: E402
from coordinator import protocol as P  # noqa: E402
from lenet.model import FACTOR_WIDTHS, PARAM_SHAPES, TREE_PARAMS  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def coordinator_log_level():
    """main() quietens the coordinator's log for its own run: put it back for the tests that follow."""
    level = logging.getLogger("coordinator").level
    yield
    logging.getLogger("coordinator").setLevel(level)


def test_tiny_run_every_simulated_worker_computes(mnist_dir, tmp_path, capsys, coordinator_log_level):
    plot = tmp_path / "tmp" / "x.svg"
    started = time.monotonic()
    rounds = bench_scale.main(["--workers", "4,8", "--steps", "3", "--rounds", "1", "--plot", str(plot),
                               "--data-dir", str(mnist_dir)])
    assert time.monotonic() - started < 45
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["4"], ["8"])]
    assert [row[:3] for row in rows] == [["4", "4", "128"], ["8", "8", "128"]]
    for row in rows:  # the medians, each followed by its [min-max]; the first six are CPU, bytes and rates
        medians = [float(cell.replace(",", "")) for cell in row[3:] if not cell.startswith("[")]
        assert len(medians) == 9 and all(m > 0 for m in medians[:6]), row
    for workers in (4, 8):
        figures = rounds[0][workers]
        counts = figures["simulators"]
        assert sum(c["workers"] for c in counts) == workers
        # The simulators' own counts: each simulated worker was given a task, in every timed step.
        assert figures["tasked"] == figures["tasked_min"] == workers
        assert all(c["results"] == c["tasks"] > 0 and c["dropped"] == 0 and not c["refused"] for c in counts)
        assert all(c["ended"] in ("shutdown", "stopped") for c in counts)
    root = ET.parse(plot).getroot()
    series = {g.get("data-label"): g for g in root.iter(f"{SVG}g")}
    assert set(series) == {"direct: coordinator CPU ms/step", "direct: MB/step out (to workers)",
                           "direct: MB/step in (from workers)"}
    assert all(len(g.findall(f"{SVG}circle")) == 2 and g.find(f"{SVG}polyline") is not None for g in series.values())
    texts = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert "simulated workers (log scale)" in texts and "coordinator CPU per step, ms (log scale)" in texts


def test_relays_are_refused_until_the_relay_exists(capsys):
    with pytest.raises(SystemExit) as stop:
        bench_scale.main(["--relays", "2"])
    assert stop.value.code == 2 and "relay" in capsys.readouterr().err


def test_a_replayed_result_is_byte_for_byte_what_the_protocol_encodes():
    rng = np.random.default_rng(0)
    result = P.Result(step=3, first=5, shards=2, count=3, loss_sum=6.5, correct=2, compute_seconds=0.01,
                      grads={k: rng.standard_normal((2, *PARAM_SHAPES[k])).astype(np.float32) for k in TREE_PARAMS},
                      factors={k: rng.random((3, w)).astype(np.float32) for k, w in FACTOR_WIDTHS.items()})
    template = sim_workers.ResultTemplate(result)
    for step, seconds in ((3, 0.01), (70_000, 1.25)):
        expected = P.Result(**{**vars(result), "step": step, "compute_seconds": seconds})
        assert template.frame(step, seconds) == P.encode(expected)


def simulator(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "bench" / "sim_workers.py"), *args],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env())


def catches_sigterm(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def test_simulators_end_on_silence_and_on_sigterm():
    nobody = f"tcp://127.0.0.1:{bench_scale.free_port()}"
    silent = simulator("--connect", nobody, "--workers", "3", "--silence", "1")
    stopped = simulator("--connect", nobody, "--workers", "3", "--silence", "60")
    try:
        deadline = time.monotonic() + 20
        while not catches_sigterm(stopped.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        stopped.send_signal(signal.SIGTERM)
        for proc, why in ((silent, "silence"), (stopped, "stopped")):
            out, _ = proc.communicate(timeout=20)
            assert proc.returncode == 0
            counts = json.loads(out.decode().splitlines()[-1])
            assert counts["ended"] == why and counts["workers"] == 3 and counts["registered"] == 0
    finally:
        for proc in (silent, stopped):
            proc.kill()
            proc.wait()

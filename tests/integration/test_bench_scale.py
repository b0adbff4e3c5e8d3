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


def table_rows(out: str, workers: tuple[int, ...]) -> dict[tuple[int, int], list[float | None]]:
    """The table's rows by (workers, relays): the medians, each cell's [min-max] left out; None for "-"."""
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if cells[:1] in ([str(w)] for w in workers) and len(cells) > 4:
            medians = [None if c == "-" else float(c.replace(",", "")) for c in cells[4:] if not c.startswith("[")]
            rows[int(cells[0]), int(cells[1])] = [float(c) for c in cells[2:4]] + medians
    return rows


def check_simulators(figures: dict, workers: int) -> None:
    counts = figures["simulators"]
    assert sum(c["workers"] for c in counts) == workers
    # The simulators' own counts: each simulated worker was given a task, in every timed step.
    assert figures["tasked"] == figures["tasked_min"] == workers
    assert all(c["results"] == c["tasks"] > 0 and c["dropped"] == 0 and not c["refused"] for c in counts)
    assert all(c["ended"] in ("shutdown", "stopped") for c in counts)


def plot_series(plot: Path) -> dict:
    root = ET.parse(plot).getroot()
    texts = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert "simulated workers (log scale)" in texts and "coordinator CPU per step, ms (log scale)" in texts
    return {g.get("data-label"): g for g in root.iter(f"{SVG}g")}


def test_tiny_run_every_simulated_worker_computes(mnist_dir, tmp_path, capsys, coordinator_log_level):
    plot = tmp_path / "tmp" / "x.svg"
    started = time.monotonic()
    rounds = bench_scale.main(["--workers", "4,8", "--steps", "3", "--rounds", "1", "--relays", "0",
                               "--plot", str(plot), "--data-dir", str(mnist_dir)])
    assert time.monotonic() - started < 45
    rows = table_rows(capsys.readouterr().out, (4, 8))
    assert set(rows) == {(4, 0), (8, 0)}
    for (workers, _), row in rows.items():
        assert row[:2] == [workers, 128]  # shards, batch; then coordinator CPU, loop CPU, bytes and rates
        medians = row[2:]
        assert len(medians) == 10 and all(m > 0 for m in medians[:6]) and medians[7] is None, row
    for workers in (4, 8):
        check_simulators(rounds[0][workers, 0], workers)
    series = plot_series(plot)
    assert set(series) == {"direct: coordinator CPU ms/step", "direct: MB/step out (to workers)",
                           "direct: MB/step in (from workers)"}
    assert all(len(g.findall(f"{SVG}circle")) == 2 and g.find(f"{SVG}polyline") is not None for g in series.values())


def test_tiny_run_through_relays(mnist_dir, tmp_path, capsys, coordinator_log_level):
    """Each worker count directly and through 2 relays: the relays carry every simulated worker, and the
    coordinator sends the parameters once per relay instead of once per worker."""
    plot = tmp_path / "relays.svg"
    started = time.monotonic()
    rounds = bench_scale.main(["--workers", "4,8", "--steps", "3", "--rounds", "1", "--relays", "2",
                               "--plot", str(plot), "--data-dir", str(mnist_dir)])
    assert time.monotonic() - started < 50
    out = capsys.readouterr().out
    assert "4 workers through 2 relays" in out and "8 workers through 2 relays" in out
    rows = table_rows(out, (4, 8))
    assert list(rows) == [(4, 0), (4, 2), (8, 0), (8, 2)]  # interleaved, direct first
    for (workers, relays), row in rows.items():
        medians = row[2:]
        assert len(medians) == 10 and all(m > 0 for m in medians[:6]), row
        assert (medians[7] is None) == (relays == 0)  # the relays' CPU: only with relays (may be 0 ticks)
        assert medians[9] == workers  # every simulated worker given work in every timed step
    for workers in (4, 8):
        direct, relayed = rounds[0][workers, 0], rounds[0][workers, 2]
        for figures in (direct, relayed):
            check_simulators(figures, workers)
        # The coordinator's own view: the timed steps were cut for 2 members carrying every worker.
        assert (relayed["members_min"], relayed["planned_min"]) == (2, workers)
        assert (direct["members_min"], direct["planned_min"]) == (workers, workers)
        assert relayed["relay_ms"] >= 0 and direct["relay_ms"] is None
        assert [r["exit"] for r in relayed["relays"]] == [0, 0], relayed["relays"]
        assert all("exiting (shutdown)" in r["ended"] for r in relayed["relays"]), relayed["relays"]
        # The parameters go once per relay, not once per worker: fewer bytes out of the coordinator.
        assert relayed["mb_out"] < direct["mb_out"], (relayed["mb_out"], direct["mb_out"])
    # ...and as many at 8 workers as at 4: what leaves the coordinator no longer grows with the workers.
    assert rounds[0][8, 2]["mb_out"] < 1.1 * rounds[0][4, 2]["mb_out"] < rounds[0][8, 0]["mb_out"]
    series = plot_series(plot)
    assert {"direct: coordinator CPU ms/step", "with 2 relays: coordinator CPU ms/step",
            "with 2 relays: MB/step out (to workers)", "with 2 relays: MB/step in (from workers)"} <= set(series)
    assert len(series) in (6, 7)  # the relays' CPU too, unless under /proc's clock tick at both sizes
    assert all(g.find(f"{SVG}polyline") is not None for g in series.values())


def test_relays_need_a_worker_each(capsys):
    with pytest.raises(SystemExit) as stop:
        bench_scale.main(["--workers", "4,8", "--relays", "5"])
    assert stop.value.code == 2 and "--relays 5" in capsys.readouterr().err


def test_a_replayed_result_is_byte_for_byte_what_the_protocol_encodes():
    rng = np.random.default_rng(0)
    result = P.Result(step=3, first=5, shards=2, count=3, losses=np.array([6.5, 0.25, 1.0], np.float32), correct=2,
                      compute_seconds=0.01,
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

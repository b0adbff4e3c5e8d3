"""Real coordinator and worker processes for integration tests: ports, logs, clean-up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from lenet.shards import DEFAULT_SHARDS

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = str(ROOT) + os.pathsep + out.get("PYTHONPATH", "")
    out.update({k: str(v) for k, v in extra.items()})
    return out


class Proc:
    """A child process whose combined output goes to a log file the test can read."""

    def __init__(self, args: list[str], log: Path, **extra_env: str):
        self.log_path = log
        self.log_file = open(log, "ab")
        self.popen = subprocess.Popen([sys.executable, *args], stdout=self.log_file, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env(**extra_env), cwd=str(log.parent))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.popen.poll() is not None and text not in self.log():
                raise AssertionError(f"process exited ({self.popen.returncode}) before {text!r}:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} within {timeout} s:\n{self.log()[-3000:]}")

    def wait(self, timeout: float = 300.0) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            raise AssertionError(f"still running after {timeout} s:\n{self.log()[-3000:]}") from None

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()
        self.log_file.close()


def keygen(directory: Path, name: str) -> tuple[Path, Path]:
    """A CURVE key pair made by `python -m coordinator.keys`: (public file, secret file)."""
    out = subprocess.run([sys.executable, "-m", "coordinator.keys", str(directory), name], capture_output=True,
                         text=True, env=env(), timeout=60)
    assert out.returncode == 0, out.stderr
    return directory / f"{name}.key", directory / f"{name}.key_secret"


def coordinator(tmp: Path, *args: str, log_name: str = "coordinator.log", **extra_env: str) -> Proc:
    return Proc(["-m", "coordinator", "--metrics-port", "0", *args], tmp / log_name, **extra_env)


def worker(tmp: Path, endpoint: str, name: str, *args: str) -> Proc:
    return Proc(["-m", "worker", "--connect", endpoint, "--name", name, *args], tmp / f"{name}.log")


def external_workers(tmp: Path, running: list, *args: str, workers: int = 3,
                     min_workers: int | None = None) -> tuple[Proc, str, list[Proc]]:
    """A coordinator (`args`) on a loopback port and `workers` worker processes w0, w1, ... of its own, all
    appended to `running`; returns the coordinator, its address and the workers.

    Each worker says it has a core: on this machine's fewer cores one would stand by, and a worker the
    tests kill or watch must be one that computes (standing by: test_standing_by.py).
    """
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    coord = coordinator(tmp, "--workers", "0", "--bind", endpoint, "--min-workers", str(min_workers or workers),
                        *args)
    running.append(coord)
    started = [worker(tmp, endpoint, f"w{i}", "--cores", str(workers)) for i in range(workers)]
    running.extend(started)
    return coord, endpoint, started


def scrape(port: int) -> dict[str, float]:
    """A process's /metrics as {'name{label=value,...}': value} ('name' alone without labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return values


def params(path: Path) -> dict[str, np.ndarray]:
    from lenet.train import load_model

    return load_model(path)[0]


def trainer_params(tmp: Path, *args: str) -> dict[str, np.ndarray]:
    """Parameters from `python -m lenet.train ARGS` with the coordinator's default shard count: the service's
    arithmetic in one process."""
    out = tmp / "trainer.npz"
    proc = Proc(["-m", "lenet.train", *args, "--shards", str(DEFAULT_SHARDS), "--output", str(out)],
                tmp / "trainer.log")
    try:
        assert proc.wait() == 0, proc.log()
    finally:
        proc.stop()
    return params(out)


def identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)

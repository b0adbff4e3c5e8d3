"""The real stack: `docker compose up --scale worker=8` with CURVE on by default, a worker
killed, an outsider without keys kept out, a real Prometheus; and the relay profile,
three workers behind one relay.

Needs a Docker engine (`.ci/run` starts one) and, for promtool, Debian's `prometheus`
package. Without an engine the module is skipped, unless LENET_REQUIRE_SYSTEM=1
(set by CI), where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from lenet.shards import DEFAULT_SHARDS
from procs import ROOT, free_port, identical, params

pytestmark = pytest.mark.system

PROJECT = "lenet5systest"
IMAGE = "lenet5:0.1.0"
STEPS = 2500  # outlasts Prometheus discovering all 8 replicas (<= 15 s) and a kill mid-run: ~35 s


def sh(*cmd: str, timeout: float = 600, check: bool = True, env: dict | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def docker_ready() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True, timeout=30).returncode == 0


def compose_v2() -> bool:
    return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="module")
def engine():
    if not docker_ready():
        if os.environ.get("LENET_REQUIRE_SYSTEM") == "1":
            pytest.fail("no Docker engine answers, but LENET_REQUIRE_SYSTEM=1")
        pytest.skip("no Docker engine")
    if not compose_v2():
        pytest.fail("the `docker compose` v2 plugin is missing (start-dockerd.sh with COMPOSE_V2=1)")


def metrics(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def wait_until(what: str, predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError as err:  # not listening yet
            last = err
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")


def promql(port: int, query: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    body = json.loads(urllib.request.urlopen(url, timeout=5).read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def container_log(name: str) -> str:
    return subprocess.run(["docker", "logs", name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=60).stdout


def metrics_seen_alive_max(prom_port: int) -> float:
    """The most live workers the coordinator ever reported during the run, from Prometheus."""
    result = promql(prom_port, 'max_over_time(lenet_workers_alive{job="coordinator"}[10m])')
    return float(result[0]["value"][1])


def reference_params(mnist_dir, tmp_path, steps: int) -> dict:
    """The single-process trainer, same image, same steps, the service's default shard count: what an
    undisturbed service run must equal bit for bit."""
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    sh("docker", "run", "--rm", "-v", f"{mnist_dir}:/data/mnist:ro", "-v", f"{out}:/out", IMAGE,
       "python", "-m", "lenet.train", "--max-steps", str(steps), "--shards", str(DEFAULT_SHARDS),
       "--output", "/out/ref.npz", timeout=900)
    return params(out / "ref.npz")


def test_prometheus_config_is_valid():
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("LENET_REQUIRE_SYSTEM") == "1":
            pytest.fail("promtool missing (apt-get install prometheus)")
        pytest.skip("promtool missing")
    out = sh(promtool, "check", "config", str(ROOT / "deploy" / "prometheus.yml"))
    assert "SUCCESS" in out


def test_compose_v1_trains_to_completion(engine, mnist_dir):
    """The same file with docker-compose v1.29: `up --exit-code-from coordinator`, CURVE on, a short
    run with 2 workers ends with status 0."""
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose v1 not installed")
    project = f"{PROJECT}v1"
    env = {**os.environ, "DOCKER_BUILDKIT": "0", "COMPOSE_DOCKER_CLI_BUILD": "1", "MNIST_HOST_DIR": str(mnist_dir),
           "LENET_MAX_STEPS": "30", "LENET_MIN_WORKERS": "2", "LENET_RESUME": "false",
           "LENET_METRICS_HOST_PORT": str(free_port()), "PROMETHEUS_HOST_PORT": str(free_port())}
    compose = ("docker-compose", "-p", project)
    sh(*compose, "config", "-q", env=env)
    try:
        sh(*compose, "build", env=env, timeout=900)
        # In the foreground, as users run it: the coordinator generating the CURVE keys in its
        # entrypoint (no one-shot service) is what keeps --exit-code-from meaningful.
        sh(*compose, "up", "--scale", "worker=2", "--exit-code-from", "coordinator", env=env, timeout=600)
        coordinator = sh(*compose, "ps", "-q", "coordinator", env=env).strip()
        assert sh("docker", "wait", coordinator, timeout=60).strip() == "0"
        logs = subprocess.run(["docker", "logs", coordinator], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=60).stdout
        assert "done: test accuracy" in logs and "after 30 steps" in logs, logs[-3000:]
        assert "CURVE on: 1 worker keys admitted" in logs, logs[-3000:]
    finally:
        sh(*compose, "down", "-v", "-t", "5", env=env, check=False)
    assert sh("docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}").strip() == ""


def test_scale_8_kill_one_and_prometheus(engine, mnist_dir, tmp_path):
    metrics_port, prom_port = free_port(), free_port()
    env = {**os.environ, "DOCKER_BUILDKIT": "0", "MNIST_HOST_DIR": str(mnist_dir), "LENET_MAX_STEPS": str(STEPS),
           "LENET_MIN_WORKERS": "8", "LENET_HEARTBEAT_TIMEOUT": "3", "LENET_RESUME": "false",
           "LENET_METRICS_HOST_PORT": str(metrics_port), "PROMETHEUS_HOST_PORT": str(prom_port)}
    compose = ("docker", "compose", "-p", PROJECT)
    sh(*compose, "down", "-v", "-t", "2", env=env, check=False)
    sh(*compose, "build", env=env, timeout=900)

    reference = reference_params(mnist_dir, tmp_path, STEPS)
    outsider = f"{PROJECT}-outsider"

    try:
        sh(*compose, "up", "-d", "--scale", "worker=8", env=env, timeout=300)
        wait_until("8 live workers and training under way", lambda: (m := metrics(metrics_port))
                   and m["lenet_workers_alive"] == 8 and m["lenet_samples_total"] > 0, timeout=120)
        # A container on the compose network, from the same image, but without the worker key
        # (none of the stack's volumes): it reaches coordinator:5555 and cannot register.
        sh("docker", "run", "-d", "--rm", "--name", outsider, "--network", f"{PROJECT}_default", IMAGE,
           "python", "-m", "worker", "--connect", "tcp://coordinator:5555", "--name", "outsider")
        wait_until("the outsider to give up its first registration",
                   lambda: "not answering" in container_log(outsider), timeout=60)
        # The real Prometheus finds and scrapes every replica (DNS service discovery).
        wait_until("Prometheus to scrape 8 workers and the coordinator", lambda: (
            (w := promql(prom_port, 'count(up{job="workers"} == 1)')) and float(w[0]["value"][1]) == 8
            and promql(prom_port, 'lenet_samples_total{job="coordinator"} > 0')), timeout=60)
        before = metrics(metrics_port)["lenet_samples_total"]
        workers = sh(*compose, "ps", "-q", "worker", env=env).split()
        assert len(workers) == 8
        sh("docker", "kill", workers[3])
        wait_until("the killed worker to be declared lost",
                   lambda: metrics(metrics_port)["lenet_workers_lost_total"] >= 1, timeout=60)
        assert metrics(metrics_port)["lenet_samples_total"] > before  # the values move

        coordinator = sh(*compose, "ps", "-q", "coordinator", env=env).strip()
        assert sh("docker", "wait", coordinator, timeout=600).strip() == "0"
        logs = subprocess.run(["docker", "logs", coordinator], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=60).stdout
        assert "done: test accuracy" in logs and "lost" in logs, logs[-3000:]
        assert "CURVE on: 1 worker keys admitted" in logs and "outsider" not in logs, logs[-3000:]
        assert "registered" not in container_log(outsider)
        assert metrics_seen_alive_max(prom_port) == 8  # the outsider was never counted as a worker
        sh("docker", "cp", f"{coordinator}:/runs/lenet5.npz", str(tmp_path / "final.npz"))
        assert identical(params(tmp_path / "final.npz"), reference)

        # Prometheus kept the run's series: samples up to the last scrape, the lost worker.
        samples = promql(prom_port, 'max_over_time(lenet_samples_total{job="coordinator"}[10m])')
        assert float(samples[0]["value"][1]) > before
        lost = promql(prom_port, 'max_over_time(lenet_workers_lost_total{job="coordinator"}[10m])')
        assert float(lost[0]["value"][1]) >= 1
    finally:
        sh("docker", "rm", "-f", outsider, check=False)
        start = time.monotonic()
        sh(*compose, "down", "-v", "-t", "5", env=env, check=False)
        took = time.monotonic() - start
    left = sh("docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}")
    assert left.strip() == ""
    assert took < 10, f"docker compose down took {took:.1f} s"


def test_relay_profile_one_member_for_three_workers(engine, mnist_dir, tmp_path):
    """`--profile relay --scale worker=0 --scale relay-worker=3`: the coordinator sees one member,
    the relay, with CURVE on both hops; the relay and its workers leave when the run ends; the model
    is bit-identical to the single-process trainer's."""
    # Long enough (about 6 s of training) that a relay-worker container started a few seconds
    # after the others, as happens on a cold start, still joins before the run ends.
    project, steps = f"{PROJECT}relay", 200
    prom_port = free_port()
    env = {**os.environ, "DOCKER_BUILDKIT": "0", "MNIST_HOST_DIR": str(mnist_dir), "LENET_MAX_STEPS": str(steps),
           "LENET_MIN_WORKERS": "1", "LENET_RESUME": "false",
           "LENET_METRICS_HOST_PORT": str(free_port()), "PROMETHEUS_HOST_PORT": str(prom_port)}
    compose = ("docker", "compose", "-p", project, "--profile", "relay")
    sh(*compose, "down", "-v", "-t", "2", env=env, check=False)
    sh(*compose, "build", env=env, timeout=900)
    reference = reference_params(mnist_dir, tmp_path, steps)

    try:
        sh(*compose, "up", "-d", "--scale", "worker=0", "--scale", "relay-worker=3", env=env, timeout=300)
        coordinator = sh(*compose, "ps", "-q", "coordinator", env=env).strip()
        relay = sh(*compose, "ps", "-q", "relay", env=env).strip()
        relay_workers = sh(*compose, "ps", "-q", "relay-worker", env=env).split()
        assert len(relay_workers) == 3 and not sh(*compose, "ps", "-q", "worker", env=env).split()
        assert sh("docker", "wait", coordinator, timeout=600).strip() == "0"
        # The coordinator's Shutdown goes through the relay to its workers: all leave, with status 0.
        for container in [relay, *relay_workers]:
            try:
                status = sh("docker", "wait", container, timeout=60).strip()
            except subprocess.TimeoutExpired:
                status = "still running 60 s after the coordinator's exit"
            assert status == "0", (status, container_log(container)[-2000:], container_log(relay)[-2000:])

        logs = container_log(coordinator)
        assert "done: test accuracy" in logs and f"after {steps} steps" in logs, logs[-3000:]
        assert "CURVE on: 1 worker keys admitted" in logs, logs[-3000:]
        joined = [line for line in logs.splitlines() if " joined (" in line]
        assert len(joined) == 1 and " worker relay-" in joined[0], joined  # one member: the relay
        assert "Traceback" not in logs
        relay_log = container_log(relay)
        assert relay_log.count(" joined (") == 3 and "joined (3 workers)" in relay_log, relay_log[-3000:]
        assert "registered with tcp://coordinator:5555" in relay_log and "Traceback" not in relay_log
        for container in relay_workers:
            assert "registered with tcp://relay:5556" in container_log(container)
        sh("docker", "cp", f"{coordinator}:/runs/lenet5.npz", str(tmp_path / "final.npz"))
        assert identical(params(tmp_path / "final.npz"), reference)

        # `worker` is scaled to 0, so its name does not resolve, as `relay-worker`'s does not without
        # the profile: Prometheus's DNS discovery counts that as no targets, not as a failed lookup.
        wait_until("Prometheus to have made DNS lookups", lambda: metrics(prom_port).get(
            "prometheus_sd_dns_lookups_total", 0) > 0, timeout=60)
        assert metrics(prom_port)["prometheus_sd_dns_lookup_failures_total"] == 0  # its own /metrics
        assert promql(prom_port, 'up{job="workers"}') == []
    finally:
        sh(*compose, "down", "-v", "-t", "5", env=env, check=False)
    assert sh("docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}").strip() == ""

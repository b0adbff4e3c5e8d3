"""docker-compose.yml, statically: CURVE on by default, hardened services, pinned images.

checkov has no compose framework, so these are the checks it would make; the stack
itself runs in tests/system/test_compose.py.
"""

from pathlib import Path

import pytest
import yaml

from coordinator import keys

COMPOSE = yaml.safe_load((Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_is_hardened_and_pinned(name):
    service = SERVICES[name]
    assert service["read_only"] is True and service["init"] is True
    assert "no-new-privileges:true" in service["security_opt"]
    assert service["cap_drop"] == ["ALL"] and not service.get("cap_add") and not service.get("privileged")
    assert ":" in service["image"] and not service["image"].endswith(":latest")
    # Published ports only on the host's loopback.
    assert all(p.startswith("127.0.0.1:") for p in service.get("ports", []))


def mounts(service):
    return {v.split(":")[1]: v for v in SERVICES[service]["volumes"]}


def test_curve_is_on_by_default_and_workers_never_see_the_coordinator_secret():
    coordinator, worker = SERVICES["coordinator"]["environment"], SERVICES["worker"]["environment"]
    assert not keys.is_loopback_endpoint(coordinator["LENET_BIND"])
    assert coordinator["LENET_CURVE_SECRET_KEY"].startswith("/keys/server/")
    assert coordinator["LENET_CURVE_AUTHORIZED_DIR"].startswith("/keys/server/")
    assert worker["LENET_CURVE_SECRET_KEY"].startswith("/keys/worker/")
    assert worker["LENET_CURVE_SERVER_KEY"].startswith("/keys/worker/")
    assert mounts("worker") == {"/keys/worker": "curve-worker:/keys/worker:ro"}
    assert {"/keys/server", "/keys/worker"} <= mounts("coordinator").keys()
    # The coordinator's command writes every file the flags name before it starts.
    script = SERVICES["coordinator"]["command"][-1]
    for path in (coordinator["LENET_CURVE_SECRET_KEY"], worker["LENET_CURVE_SECRET_KEY"],
                 worker["LENET_CURVE_SERVER_KEY"]):
        directory, name = path.rsplit("/", 1)
        generated = f"coordinator.keys {directory} {name.split('.')[0]} --if-missing" in script
        assert generated or script.count(f" {path}\n") == 1, path  # a key pair, or the target of one mv
    assert script.rstrip().endswith("exec python -m coordinator")
    assert {"curve-server", "curve-worker"} <= COMPOSE["volumes"].keys()


# ---------------------------------------------------------------- the relay profile


def env_names(parser):
    from lenet.cli import env_name

    return {env_name(opt) for action in parser._actions for opt in action.option_strings if opt.startswith("--")}


def test_every_setting_is_a_real_flag():
    from coordinator.__main__ import build_parser as coordinator_parser
    from worker.__main__ import build_parser as worker_parser

    reads = {"coordinator": coordinator_parser(), "worker": worker_parser(), "relay": worker_parser(),
             "relay-worker": worker_parser()}
    for name, parser in reads.items():
        unknown = set(SERVICES[name]["environment"]) - env_names(parser)
        assert not unknown, (name, sorted(unknown))


def test_the_relay_profile_is_off_by_default():
    profiled = {name: s["profiles"] for name, s in SERVICES.items() if "profiles" in s}
    assert profiled == {"relay": ["relay"], "relay-worker": ["relay"]}
    assert SERVICES["relay-worker"]["depends_on"] == ["relay"] and SERVICES["relay"]["depends_on"] == ["coordinator"]
    # The same image and restart policy as the workers: a relay is `python -m worker --relay`.
    for name in ("relay", "relay-worker"):
        assert SERVICES[name]["image"] == SERVICES["worker"]["image"]
        assert SERVICES[name]["restart"] == "on-failure"


def written(script, directory):
    """The files the coordinator's command leaves in `directory`: targets of `mv` there (temporaries excluded)."""
    targets = [line.split()[-1] for line in script.splitlines() if line.strip().startswith("mv ")]
    return {t.rsplit("/", 1)[1] for t in targets if t.rsplit("/", 1)[0] == directory}


def test_curve_on_both_hops_of_the_relay():
    worker, relay, relay_worker = (SERVICES[s]["environment"] for s in ("worker", "relay", "relay-worker"))
    script = SERVICES["coordinator"]["command"][-1]
    assert relay["LENET_RELAY"] == "true" and "LENET_RELAY" not in relay_worker
    # Upstream the relay is a worker: the coordinator, the workers' key pair, the coordinator's public key.
    assert relay["LENET_CONNECT"] == worker["LENET_CONNECT"]
    assert relay["LENET_CURVE_SECRET_KEY"] == worker["LENET_CURVE_SECRET_KEY"]
    assert relay["LENET_CURVE_SERVER_KEY"] == worker["LENET_CURVE_SERVER_KEY"]
    # Downstream: beyond loopback, so CURVE is what protects it; its workers connect there and know
    # its public key, the public half of the pair it uses (the workers' own, worker.key).
    assert not keys.is_loopback_endpoint(relay["LENET_LISTEN"])
    port = relay["LENET_LISTEN"].rsplit(":", 1)[1]
    assert relay_worker["LENET_CONNECT"] == f"tcp://relay:{port}"
    assert relay_worker["LENET_CURVE_SECRET_KEY"] == worker["LENET_CURVE_SECRET_KEY"]
    assert relay_worker["LENET_CURVE_SERVER_KEY"] == relay["LENET_CURVE_SECRET_KEY"].removesuffix("_secret")
    # The relay admits exactly the workers' key: its directory holds worker.key and nothing else,
    # written whole by the coordinator (a temporary, then a rename), copied from the workers' pair.
    authorized = relay["LENET_CURVE_AUTHORIZED_DIR"]
    assert authorized.startswith("/keys/worker/") and written(script, authorized) == {"worker.key"}
    assert f"cp /keys/worker/worker.key {authorized}/.worker.key.new\n" in script
    assert f"mv {authorized}/.worker.key.new {authorized}/worker.key\n" in script
    # Both see the workers' volume only, read-only: never the coordinator's secret.
    for name in ("relay", "relay-worker"):
        assert mounts(name) == mounts("worker"), name


def test_everyone_waits_for_the_last_key_the_coordinator_writes():
    script = SERVICES["coordinator"]["command"][-1]
    last = [line.split()[-1] for line in script.splitlines() if line.strip().startswith("mv ")][-1]
    assert last == "/keys/worker/coordinator.key"
    for name in ("worker", "relay", "relay-worker"):
        command = SERVICES[name]["command"]
        assert command == SERVICES["worker"]["command"], name  # one script (a YAML anchor)
        assert f"[ -f {last} ] && exec python -m worker" in command[-1], name


def test_prometheus_scrapes_the_relay_workers_as_a_job_of_their_own():
    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    for job, service in (("workers", "worker"), ("relay-workers", "relay-worker")):
        (dns,) = jobs[job]["dns_sd_configs"]
        assert dns["names"] == [service] and dns["type"] == "A", job  # one A record per replica
        assert dns["port"] == int(SERVICES[service]["environment"]["LENET_METRICS_PORT"]), job
        assert SERVICES[service]["environment"]["LENET_METRICS_ADDR"] == "0.0.0.0", job


def test_no_obsolete_version_key():
    """Compose v2 warns that `version` is obsolete on every command: the file must not have one."""
    assert "version" not in COMPOSE


def test_workers_do_not_wait_for_ever_for_a_coordinator_that_has_gone():
    """Exit 0 (a finished run's Shutdown, or --give-up-after) with restart: on-failure leaves a worker down."""
    for name in ("worker", "relay-worker"):
        assert SERVICES[name]["restart"] == "on-failure"
        assert SERVICES[name]["environment"]["LENET_GIVE_UP_AFTER"].startswith("${LENET_GIVE_UP_AFTER:-")
    assert "LENET_GIVE_UP_AFTER" not in SERVICES["relay"]["environment"]  # a relay refuses the flag

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

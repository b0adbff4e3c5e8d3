"""coordinator.keys without sockets: endpoints, key files, Kubernetes Secrets, checkpoint keys."""

import json
import stat

import pytest
import yaml
import zmq.auth

from coordinator import keys
from lenet.status import UsageError


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:5555", "tcp://127.3.2.1:1", "tcp://[::1]:5555",
                                      "tcp://localhost:5555", "ipc:///tmp/x.sock", "inproc://x"])
def test_loopback_endpoints(endpoint):
    assert keys.is_loopback_endpoint(endpoint)


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://[::]:5555", "tcp://10.0.0.4:5555",
                                      "tcp://eth0:5555", "tcp://example.org:5555", "pgm://eth0;239.1.1.1:5555",
                                      "127.0.0.1:5555", "tcp://[::ffff:10.0.0.1]:5555", ""])
def test_endpoints_that_leave_the_host(endpoint):
    assert not keys.is_loopback_endpoint(endpoint)


def test_generate_writes_whole_files_with_private_secret(tmp_path):
    public, secret = keys.generate(tmp_path / "k", "w")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and stat.S_IMODE(public.stat().st_mode) == 0o644
    pair = keys.load_keypair(secret)
    assert keys.load_public(public) == pair.public and zmq.auth.load_certificate(str(public))[1] is None
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["w.key", "w.key_secret"]  # no temporaries


def test_if_missing_keeps_a_complete_pair_and_replaces_a_partial_one(tmp_path):
    public, secret = keys.generate(tmp_path, "w")
    before = secret.read_bytes()
    keys.generate(tmp_path, "w", if_missing=True)
    assert secret.read_bytes() == before
    public.unlink()  # killed between the two files
    keys.generate(tmp_path, "w", if_missing=True)
    assert secret.read_bytes() != before and keys.load_public(public) == keys.load_keypair(secret).public


def test_k8s_secrets_hold_matching_key_pairs(tmp_path):
    docs = [d for d in yaml.safe_load_all(keys._yaml_documents(keys.k8s_secrets())) if d]
    secrets = {d["metadata"]["name"]: d["stringData"] for d in docs}
    assert all(d["kind"] == "Secret" and d["metadata"]["namespace"] == "lenet5" for d in docs)
    for name, files in secrets.items():
        for file_name, text in files.items():
            (tmp_path / f"{name}-{file_name}").write_text(text)

    def load(name, file_name, secret):
        path = tmp_path / f"{name}-{file_name}"
        return keys.load_keypair(path) if secret else keys.load_public(path)

    server = load(keys.K8S_COORDINATOR_SECRET, "coordinator.key_secret", True)
    worker = load(keys.K8S_WORKER_SECRET, "worker.key_secret", True)
    assert load(keys.K8S_WORKER_SECRET, "coordinator.key", False) == server.public
    assert load(keys.K8S_AUTHORIZED_SECRET, "worker.key", False) == worker.public
    assert server.public != worker.public
    # The worker side holds no coordinator secret, the admitted list no secret at all.
    assert "secret-key" not in json.dumps(secrets[keys.K8S_AUTHORIZED_SECRET])
    assert "secret-key" not in secrets[keys.K8S_WORKER_SECRET]["coordinator.key"]


def test_checkpoint_key_is_new_private_and_never_overwritten(tmp_path):
    path = keys.write_checkpoint_key(tmp_path / "ck")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_text().strip()) == 64
    with pytest.raises(UsageError, match="not overwriting"):
        keys.write_checkpoint_key(path)


@pytest.mark.parametrize("argv", [[], ["--k8s-secrets", "--checkpoint-key", "x"], ["dir"], ["dir", "a/b"]])
def test_cli_misuse_is_a_usage_error(argv):
    with pytest.raises(UsageError):
        keys.main(argv)


def test_reload_without_a_directory_is_refused():
    with pytest.raises(UsageError, match="no authorised keys directory"):
        keys.AllowList(frozenset({b"k" * 40})).reload()


def test_allow_list_answers_for_its_domain_only():
    allow = keys.AllowList(frozenset({b"a" * 40}), fixed=frozenset({b"b" * 40}))
    assert allow.callback(keys.ZAP_DOMAIN, b"a" * 40) and allow.callback(keys.ZAP_DOMAIN, b"b" * 40)
    assert not allow.callback("", b"a" * 40) and not allow.callback(keys.ZAP_DOMAIN, b"c" * 40)

"""CURVE: only workers whose public key the coordinator lists can take part."""

import subprocess
import sys
import time

import zmq

from coordinator import protocol as P
from procs import coordinator, env, free_port, identical, params, scrape, trainer_params, worker

STEPS = 30


def keygen(directory, name):
    out = subprocess.run([sys.executable, "-m", "coordinator.keys", str(directory), name], capture_output=True,
                         text=True, env=env(), timeout=60)
    assert out.returncode == 0, out.stderr
    return directory / f"{name}.key", directory / f"{name}.key_secret"




def test_only_listed_workers_get_in(tmp_path, procs, mnist_dir):
    server_pub, server_secret = keygen(tmp_path / "server", "coordinator")
    w1_pub, w1_secret = keygen(tmp_path / "admitted", "w1")
    _, stranger_secret = keygen(tmp_path / "others", "stranger")
    impostor_pub, _ = keygen(tmp_path / "others", "impostor-server")
    assert oct(w1_secret.stat().st_mode & 0o777) == "0o600"

    port, metrics_port = free_port(), free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    coord = coordinator(tmp_path, "--workers", "0", "--bind", endpoint, "--min-workers", "1", "--max-steps",
                        str(STEPS), "--checkpoint-dir", "off", "--metrics-port", str(metrics_port),
                        "--curve-secret-key", str(server_secret), "--curve-authorized-dir", str(tmp_path / "admitted"),
                        "--output", str(tmp_path / "m.npz"))
    procs.append(coord)
    coord.wait_for("waiting for 1 workers")
    outsiders = [
        worker(tmp_path, endpoint, "no-key"),
        worker(tmp_path, endpoint, "wrong-server-key", "--curve-secret-key", str(w1_secret),
               "--curve-server-key", str(impostor_pub)),
        worker(tmp_path, endpoint, "unlisted-key", "--curve-secret-key", str(stranger_secret),
               "--curve-server-key", str(server_pub)),
    ]
    procs.extend(outsiders)
    # A raw plain-text peer, too, sending a well-formed registration.
    ctx = zmq.Context()
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(endpoint)
    for _ in range(20):
        raw.send(P.encode(P.Register(name="raw", pid=1, probe="0" * 64)))
    time.sleep(4)
    m = scrape(metrics_port)
    assert m["lenet_workers_alive"] == 0
    assert sum(v for k, v in m.items() if k.startswith("lenet_rejected_messages_total")) == 0  # nothing got through
    assert "joined" not in coord.log()
    assert all("not answering" in w.log() and "registered" not in w.log() for w in outsiders)
    raw.close()
    ctx.term()

    admitted = worker(tmp_path, endpoint, "admitted", "--curve-secret-key", str(w1_secret),
                      "--curve-server-key", str(server_pub))
    procs.append(admitted)
    assert coord.wait() == 0, coord.log()
    assert "worker admitted joined" in coord.log() and "joined" not in coord.log().replace("admitted joined", "")

    assert identical(params(tmp_path / "m.npz"), trainer_params(tmp_path, "--max-steps", str(STEPS)))


def test_local_workers_get_their_own_keys(tmp_path, procs, mnist_dir):
    _, server_secret = keygen(tmp_path / "server", "coordinator")
    keygen(tmp_path / "admitted", "someone")
    coord = coordinator(tmp_path, "--workers", "2", "--max-steps", "10", "--checkpoint-dir", "off",
                        "--curve-secret-key", str(server_secret), "--curve-authorized-dir", str(tmp_path / "admitted"),
                        "--output", str(tmp_path / "m.npz"))
    procs.append(coord)
    assert coord.wait() == 0, coord.log()
    assert "CURVE on: 2 worker keys admitted" in coord.log()


def test_bad_key_files_are_user_errors(tmp_path, procs, mnist_dir):
    pub, _ = keygen(tmp_path, "coordinator")
    out = subprocess.run([sys.executable, "-m", "coordinator", "--metrics-port", "0", "--curve-secret-key", str(pub),
                          "--curve-authorized-dir", str(tmp_path)], capture_output=True, text=True, env=env(),
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 2 and "holds no secret key" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "worker", "--curve-secret-key", str(tmp_path / "missing"),
                          "--curve-server-key", str(pub)], capture_output=True, text=True, env=env(), timeout=60)
    assert out.returncode == 2 and "cannot read CURVE key file" in out.stderr and "Traceback" not in out.stderr

"""CURVE: only workers whose public key the coordinator lists can take part."""

import subprocess
import sys
import time

import zmq

from coordinator import protocol as P
from procs import coordinator, env, free_port, identical, keygen, params, scrape, trainer_params, worker

STEPS = 30






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
    coord.wait_for("waiting for 1 worker at")
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
        raw.send(P.encode(P.Register(name="raw", pid=1, probe="0" * 64, capacity=1)))
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


def test_sighup_revokes_a_key_and_its_worker_is_dropped(tmp_path, procs, mnist_dir):
    """Remove a worker's public key from the directory, SIGHUP: it is dropped, its messages refused, the run goes on."""
    import signal as sig

    _, server_secret = keygen(tmp_path / "server", "coordinator")
    server_pub = tmp_path / "server" / "coordinator.key"
    keys = {name: keygen(tmp_path / "admitted", name) for name in ("stays", "goes")}
    port, metrics_port = free_port(), free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    coord = coordinator(tmp_path, "--workers", "0", "--bind", endpoint, "--min-workers", "2", "--max-steps", "300",
                        "--checkpoint-dir", "off", "--metrics-port", str(metrics_port), "--curve-secret-key",
                        str(server_secret), "--curve-authorized-dir", str(tmp_path / "admitted"),
                        "--output", str(tmp_path / "m.npz"))
    procs.append(coord)
    procs.extend(worker(tmp_path, endpoint, name, "--curve-secret-key", str(secret), "--curve-server-key",
                        str(server_pub)) for name, (_, secret) in keys.items())
    coord.wait_for("training:")
    keys["goes"][0].unlink()
    coord.signal(sig.SIGHUP)
    coord.wait_for("worker goes dropped: its key was revoked")
    coord.wait_for("1 revoked, 1 worker dropped")
    deadline, m = time.monotonic() + 20, {}
    while time.monotonic() < deadline and m.get("lenet_rejected_messages_total{reason=revoked_key}", 0) == 0:
        m = scrape(metrics_port)
        time.sleep(0.2)
    assert m["lenet_rejected_messages_total{reason=revoked_key}"] > 0  # its heartbeats, unread
    assert m["lenet_workers_alive"] == 1
    assert coord.wait() == 0, coord.log()
    assert identical(params(tmp_path / "m.npz"), trainer_params(tmp_path, "--max-steps", "300"))


def test_a_registered_id_under_another_key_is_refused(tmp_path, procs, mnist_dir):
    """Messages for a registered worker's routing id, sent with another admitted key, are refused and counted."""
    server_pub, server_secret = keygen(tmp_path / "server", "coordinator")
    a_pub, a_secret = keygen(tmp_path / "admitted", "a")
    b_pub, b_secret = keygen(tmp_path / "admitted", "b")
    port, metrics_port = free_port(), free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    coord = coordinator(tmp_path, "--workers", "0", "--bind", endpoint, "--min-workers", "5", "--checkpoint-dir",
                        "off", "--metrics-port", str(metrics_port), "--curve-secret-key", str(server_secret),
                        "--curve-authorized-dir", str(tmp_path / "admitted"), "--output", str(tmp_path / "m.npz"))
    procs.append(coord)
    coord.wait_for("waiting for 5 workers")
    from coordinator import keys as K
    from hostile import this_machines_probe

    ctx = zmq.Context()

    def peer(pub, secret):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.ROUTING_ID, b"the-same-id")
        K.secure_client(s, K.CurveClient(K.load_keypair(secret), K.load_public(server_pub)))
        s.connect(endpoint)
        return s

    first = peer(a_pub, a_secret)
    first.send(P.encode(P.Register(name="a", pid=1, probe=this_machines_probe(), capacity=1)))
    assert first.poll(10_000)  # registered
    first.close(linger=0)
    time.sleep(0.5)
    second = peer(b_pub, b_secret)
    for _ in range(5):
        second.send(P.encode(P.Heartbeat()))
    time.sleep(1.0)
    m = scrape(metrics_port)
    second.close(linger=0)
    ctx.term()
    assert m["lenet_rejected_messages_total{reason=key_mismatch}"] == 5
    assert "worker a joined" in coord.log() and coord.log().count("joined") == 1


# ---------------------------------------------------------------- the CURVE layer at the socket level
# What the coordinator builds on: a ROUTER made secure by keys.secure_server, and
# DEALER clients, with no training in the way.

import contextlib  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from coordinator import keys  # noqa: E402

WAIT_MS = 1500  # a CURVE handshake on loopback takes milliseconds; a refused one never delivers


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@contextlib.contextmanager
def secure_router(ctx, tmp_path: Path, *names: str):
    """A CURVE ROUTER admitting the workers `names` (keys in tmp_path/authorized); yields (router, gate, port)."""
    server_pub, server_secret = keys.generate(tmp_path / "server", "coordinator")
    for name in names:
        keys.generate(tmp_path / "pairs", name)
        (tmp_path / "authorized").mkdir(exist_ok=True)
        (tmp_path / "authorized" / f"{name}.key").write_bytes((tmp_path / "pairs" / f"{name}.key").read_bytes())
    authorized = tmp_path / "authorized"
    curve = keys.CurveServer(keys.load_keypair(server_secret), keys.load_allowed(authorized), authorized_dir=authorized)
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    gate = keys.secure_server(router, curve, ctx)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        yield router, gate, port
    finally:
        gate.stop()
        router.close()


def dealer(ctx, tmp_path: Path, name: str, port: int) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    server_public = keys.load_public(tmp_path / "server" / "coordinator.key")
    keys.secure_client(sock, keys.CurveClient(keys.load_keypair(tmp_path / "pairs" / f"{name}.key_secret"),
                                              server_public))
    sock.connect(f"tcp://127.0.0.1:{port}")
    return sock


def receive(router: zmq.Socket) -> list[zmq.Frame] | None:
    return router.recv_multipart(copy=False) if router.poll(WAIT_MS) else None


def public_key(tmp_path: Path, name: str) -> bytes:
    return keys.load_public(tmp_path / "pairs" / f"{name}.key")


def test_every_message_carries_the_key_that_sent_it(ctx, tmp_path):
    with secure_router(ctx, tmp_path, "w1", "w2") as (router, gate, port):
        clients = [dealer(ctx, tmp_path, name, port) for name in ("w1", "w2")]
        for client, name in zip(clients, ("w1", "w2")):
            client.send(name.encode())
        senders = {}
        for _ in range(2):
            frames = receive(router)
            assert frames is not None
            senders[frames[-1].bytes.decode()] = keys.sender_key(frames[-1])
        assert senders == {"w1": public_key(tmp_path, "w1"), "w2": public_key(tmp_path, "w2")}
        assert all(gate.allows(k) for k in senders.values())


def test_sender_key_is_none_without_curve(ctx):
    router, client = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    client.connect(f"tcp://127.0.0.1:{port}")
    client.send(b"plain")
    frames = receive(router)
    assert frames is not None and keys.sender_key(frames[-1]) is None


def test_reload_revokes_and_admits_keys(ctx, tmp_path):
    with secure_router(ctx, tmp_path, "w1", "w2") as (router, gate, port):
        old_w1 = dealer(ctx, tmp_path, "w1", port)
        old_w1.send(b"before")
        assert receive(router) is not None

        keys.generate(tmp_path / "pairs", "w3")
        (tmp_path / "authorized" / "w3.key").write_bytes((tmp_path / "pairs" / "w3.key").read_bytes())
        (tmp_path / "authorized" / "w1.key").unlink()
        added, removed = gate.reload()
        assert (added, removed) == ({public_key(tmp_path, "w3")}, {public_key(tmp_path, "w1")})

        # The revoked key's established connection still delivers (ZeroMQ cannot drop one
        # peer of a ROUTER), but its User-Id is no longer allowed: the coordinator ignores it.
        old_w1.send(b"after")
        frames = receive(router)
        assert frames is not None and not gate.allows(keys.sender_key(frames[-1]))
        # A new connection with the revoked key fails the handshake; a newly admitted key gets in.
        new_w1, w3 = dealer(ctx, tmp_path, "w1", port), dealer(ctx, tmp_path, "w3", port)
        new_w1.send(b"new w1")
        w3.send(b"w3")
        frames = receive(router)
        assert frames is not None and frames[-1].bytes == b"w3" and gate.allows(keys.sender_key(frames[-1]))
        assert receive(router) is None


def test_reload_keeps_the_old_list_when_the_directory_is_gone(ctx, tmp_path):
    with secure_router(ctx, tmp_path, "w1") as (router, gate, port):
        before = gate.allow_list.keys
        for p in (tmp_path / "authorized").iterdir():
            p.unlink()
        (tmp_path / "authorized").rmdir()
        with pytest.raises(keys.UsageError, match="not a directory"):
            gate.reload()
        assert gate.allow_list.keys == before


def test_no_key_is_admitted_when_the_zap_handler_is_gone(ctx, tmp_path):
    with secure_router(ctx, tmp_path, "w1") as (router, gate, port):
        gate.stop()  # as if its thread had died: libzmq must not fall back to admitting everyone
        assert not gate.alive()
        client = dealer(ctx, tmp_path, "w1", port)
        client.send(b"hello")
        assert receive(router) is None

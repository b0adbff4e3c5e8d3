"""Relays (`python -m worker --relay`): one member per host, the same bits as workers connected directly."""

import signal
import time

import pytest

from procs import Proc, coordinator, free_port, identical, keygen, params, scrape, worker

STEPS = 60
CONFIG = ("--max-steps", str(STEPS), "--checkpoint-dir", "off", "--heartbeat-timeout", "2", "--task-timeout", "5")


def relay(tmp, upstream: str, listen: str, name: str, *args: str) -> Proc:
    return Proc(["-m", "worker", "--relay", "--connect", upstream, "--listen", listen, "--name", name, *args],
                tmp / f"{name}.log")


def run(tmp, procs, direct: int, relays: list[int], *extra: str, during=None):
    """A coordinator with `direct` workers of its own and a relay per entry of `relays` with that many workers."""
    endpoint, port = f"tcp://127.0.0.1:{free_port()}", free_port()
    coord = coordinator(tmp, "--workers", str(direct), "--bind", endpoint, "--min-workers", str(direct + len(relays)),
                        "--metrics-port", str(port), "--output", str(tmp / "m.npz"), *CONFIG, *extra)
    procs.append(coord)
    relay_procs = []
    for r, count in enumerate(relays):
        listen = f"tcp://127.0.0.1:{free_port()}"
        relay_procs.append(relay(tmp, endpoint, listen, f"relay{r}"))
        procs.extend(worker(tmp, listen, f"r{r}w{i}") for i in range(count))
    procs.extend(relay_procs)
    coord.wait_for("training:")
    seen: dict[str, float] = {}  # every series seen, at its largest: members' series go when they leave
    while coord.popen.poll() is None:
        if during is not None:
            during(coord, relay_procs, seen)
        try:
            for k, v in scrape(port).items():
                seen[k] = max(v, seen.get(k, v))
        except OSError:
            pass  # not serving yet, or gone
        time.sleep(0.1)
    assert coord.wait() == 0, coord.log()[-3000:]
    return params(tmp / "m.npz"), seen, coord, relay_procs


@pytest.fixture(scope="module")
def direct(tmp_path_factory, mnist_dir):
    """Four workers connected to the coordinator directly."""
    tmp = tmp_path_factory.mktemp("direct")
    proc = coordinator(tmp, "--workers", "4", "--output", str(tmp / "m.npz"), *CONFIG)
    try:
        assert proc.wait() == 0, proc.log()
    finally:
        proc.stop()
    return params(tmp / "m.npz")


def test_a_relay_of_four_workers_gives_the_parameters_of_four_direct_workers(direct, tmp_path, procs):
    got, seen, coord, relays = run(tmp_path, procs, 0, [4])
    assert identical(got, direct)
    assert "worker relay0 joined" in coord.log() and "overtaken" not in coord.log()
    shards = {k: v for k, v in seen.items() if k.startswith("lenet_worker_accepted_shards_total")}
    assert list(shards) == ["lenet_worker_accepted_shards_total{worker=relay0}"], shards  # one member: the relay
    log = relays[0].log()
    assert "registered with" in log and "Traceback" not in log
    for i in range(4):
        assert f"r0w{i} joined" in log


def test_killing_a_relay_mid_run_changes_nothing(direct, tmp_path, procs):
    """A relay of two workers beside one direct worker; the relay is killed a third of the way through."""
    def kill_when_a_third_done(coord, relays, seen):
        if relays[0].popen.poll() is None and seen.get("lenet_steps_total", 0) >= STEPS // 3:
            relays[0].signal(signal.SIGKILL)

    got, seen, coord, relays = run(tmp_path, procs, 1, [2], during=kill_when_a_third_done)
    assert relays[0].popen.poll() is not None  # it really was killed mid-run
    assert identical(got, direct)
    log = coord.log()
    assert "relay0 was overtaken by a backup" in log or "worker relay0 lost" in log, log[-3000:]  # its unit redone
    done = {k: v for k, v in seen.items() if k.startswith("lenet_worker_accepted_shards_total")}
    assert done.get("lenet_worker_accepted_shards_total{worker=relay0}", 0) > 0 and len(done) == 2, done


def test_a_worker_lost_behind_a_relay_has_its_piece_done_by_another(direct, tmp_path, procs):
    """The relay's own scheduler: one of its three workers is killed mid-run; the relay hands its pieces on."""
    state = {}

    def kill_one_worker(coord, relays, seen):
        if "killed" not in state and seen.get("lenet_steps_total", 0) >= STEPS // 3:
            victim = next(p for p in procs if p.log_path.name == "r0w1.log")
            victim.signal(signal.SIGKILL)
            state["killed"] = True

    got, seen, coord, relays = run(tmp_path, procs, 0, [3], during=kill_one_worker)
    assert state.get("killed")
    assert identical(got, direct)
    assert "Traceback" not in relays[0].log(), relays[0].log()[-2000:]


NONCONFORMING = ("import sys, numpy as np; from lenet import model as m; real = m.LeNet5.stacked_shard_sums\n"
                 "def flipped(self, x, y, sizes):\n"
                 "    r = real(self, x, y, sizes); f = r.factors['fc3.delta']  # per sample: no sum can round it away\n"
                 "    f[0, 0] = np.nextafter(f[0, 0], np.float32(np.inf)); return r  # one unit in the last place\n"
                 "m.LeNet5.stacked_shard_sums = flipped\n"
                 "from worker.__main__ import main; from lenet.status import run_main; sys.exit(run_main(main, 'w'))")


def test_a_relay_applies_the_conformance_probe_to_its_workers(tmp_path, procs):
    """A worker whose arithmetic differs in the last bit (another CPU, simulated) is refused by the relay."""
    endpoint, listen = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    coord = coordinator(tmp_path, "--workers", "0", "--bind", endpoint, "--output", str(tmp_path / "m.npz"), *CONFIG)
    the_relay = relay(tmp_path, endpoint, listen, "relay0")
    odd = Proc(["-c", NONCONFORMING, "--connect", listen, "--name", "other-cpu"], tmp_path / "other-cpu.log")
    procs.extend([coord, the_relay, odd])
    odd.wait_for("refused this worker (nonconforming)", timeout=60)
    procs.append(worker(tmp_path, listen, "good"))
    assert coord.wait() == 0, coord.log()[-3000:]
    assert "other-cpu joined" not in the_relay.log() and "good joined" in the_relay.log()


def test_curve_on_both_hops_keeps_strangers_out(tmp_path, procs):
    """The coordinator admits the relay's key; the relay admits its worker's key; a keyless worker gets nowhere."""
    coord_pub, coord_secret = keygen(tmp_path / "coordinator", "coordinator")
    relay_pub, relay_secret = keygen(tmp_path / "relays", "relay")  # the coordinator's allow-list
    _, worker_secret = keygen(tmp_path / "workers", "w")  # the relay's allow-list
    endpoint, listen = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    coord = coordinator(tmp_path, "--workers", "0", "--bind", endpoint, "--output", str(tmp_path / "m.npz"),
                        "--curve-secret-key", str(coord_secret), "--curve-authorized-dir", str(tmp_path / "relays"),
                        *CONFIG)
    the_relay = relay(tmp_path, endpoint, listen, "relay0", "--curve-secret-key", str(relay_secret),
                      "--curve-server-key", str(coord_pub), "--curve-authorized-dir", str(tmp_path / "workers"))
    stranger = worker(tmp_path, listen, "stranger")
    procs.extend([coord, the_relay, stranger])
    procs.append(worker(tmp_path, listen, "good", "--curve-secret-key", str(worker_secret),
                        "--curve-server-key", str(relay_pub)))
    assert coord.wait() == 0, coord.log()[-3000:]
    assert "good joined" in the_relay.log() and "stranger" not in the_relay.log()
    assert "registered" not in stranger.log()


def test_a_relay_beyond_loopback_needs_curve_or_insecure(tmp_path):
    out = Proc(["-m", "worker", "--relay", "--listen", "tcp://0.0.0.0:5556"], tmp_path / "r.log")
    assert out.wait(60) == 2
    assert "refusing to listen on tcp://0.0.0.0:5556 without CURVE" in out.log() and "Traceback" not in out.log()


def test_a_relay_shrugs_off_garbage_and_lying_workers(direct, tmp_path, procs):
    """Strangers flooding the relay with junk, and a registered worker answering with the wrong number of node
    sums: the run is a direct run's, bit for bit, and the relay's log stays short."""
    import hostile as H
    from attacks import RawPeers
    from coordinator import protocol as P

    def wrong_nodes(task, peer):
        good = peer.honest(task)
        return [H._with(good, grads={k: v[:1].repeat(len(v) + 1, axis=0) for k, v in good.grads.items()})]

    attackers = []

    def attack(coord, relays, seen):
        if attackers or seen.get("lenet_steps_total", 0) < 2:
            return
        listen = relays[0].popen.args[relays[0].popen.args.index("--listen") + 1]
        liar = H.ScriptedWorker(listen, "liar", wrong_nodes, seconds=120)
        liar.start()
        junk = RawPeers(listen, 20)
        for frame in (b"\xc1garbage", P.encode(P.Heartbeat())[:-1], P.encode(P.Leave()), b"\x00" * 5000):
            for _ in range(50):
                junk.send_all(frame)
        attackers.extend([liar, junk])

    try:
        got, seen, coord, relays = run(tmp_path, procs, 0, [3], during=attack)
    finally:
        for a in attackers:
            a.stop() if isinstance(a, RawPeers) else a.stop.set()
    assert attackers and attackers[0].tasks >= 1  # the liar was given pieces
    assert identical(got, direct)
    log = relays[0].log()
    assert "Traceback" not in log and log.count("ignored") <= 6, log[-3000:]


def test_a_relay_joins_the_run_with_its_first_worker(tmp_path, procs):
    """A relay without workers is not a member: it does not start the run on its own."""
    endpoint, listen = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    coord = coordinator(tmp_path, "--workers", "0", "--bind", endpoint, "--output", str(tmp_path / "m.npz"), *CONFIG)
    the_relay = relay(tmp_path, endpoint, listen, "relay0")
    procs.extend([coord, the_relay])
    time.sleep(3)
    assert "training:" not in coord.log() and "relay0 joined" not in coord.log()
    procs.append(worker(tmp_path, listen, "w0"))
    assert coord.wait() == 0, coord.log()[-3000:]
    assert "worker relay0 joined" in coord.log()


def test_a_relay_outlives_its_coordinator(direct, tmp_path, procs):
    """The coordinator is killed and resumed from its checkpoint: the relay registers with the new one
    (told it is unknown, or on hearing nothing), its workers never leave it, and the run ends as 4 direct
    workers' does."""
    endpoint, listen = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    ckpt = tmp_path / "ckpt"
    args = ("--workers", "0", "--bind", endpoint, "--output", str(tmp_path / "m.npz"), *CONFIG[:2],
            "--checkpoint-dir", str(ckpt), "--checkpoint-every", "10", "--resume")
    the_relay = relay(tmp_path, endpoint, listen, "relay0", "--coordinator-timeout", "2")
    procs.append(the_relay)
    procs.extend(worker(tmp_path, listen, f"r0w{i}") for i in range(4))
    first = coordinator(tmp_path, *args, log_name="first.log")
    procs.append(first)
    deadline = time.monotonic() + 60
    while not list(ckpt.glob("ckpt-*.npz")) and time.monotonic() < deadline:
        time.sleep(0.05)
    first.signal(signal.SIGKILL)
    first.wait()
    second = coordinator(tmp_path, *args, log_name="second.log")
    procs.append(second)
    assert second.wait() == 0, second.log()[-3000:]
    assert "resuming from" in second.log() and "worker relay0 joined" in second.log()
    log = the_relay.log()
    assert log.count("registered with") == 2 and "lost" not in log and "left" not in log, log[-2000:]
    assert identical(params(tmp_path / "m.npz"), direct)

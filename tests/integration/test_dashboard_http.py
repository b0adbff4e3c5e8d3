"""The metrics port's HTTP server, in-process on loopback: /metrics unchanged, the page, its JSON, refusals."""

import json
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from coordinator.dashboard import RunHistory, start_dashboard
from coordinator.metrics import Metrics
from procs import free_port


@pytest.fixture
def served():
    metrics = Metrics(CollectorRegistry())
    metrics.steps.inc(7)
    metrics.worker_seen("w0")
    history = RunHistory()
    history.record_step(7, 0.5, 0.05, 128)
    port = free_port()
    server = start_dashboard(metrics.registry, "127.0.0.1", port, history)
    yield metrics, f"http://127.0.0.1:{port}"
    server.shutdown()


def get(url: str, **headers: str):
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
        return r.status, r.headers["Content-Type"], r.read()


@pytest.mark.parametrize("accept", [None, "text/plain", "application/openmetrics-text; version=1.0.0"])
def test_metrics_are_exactly_what_prometheus_client_serves(served, accept):
    """Same bytes and content type as `start_http_server`, which this server replaced, for each Accept."""
    metrics, base = served
    port = free_port()
    theirs, _ = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    try:
        headers = {"Accept": accept} if accept else {}
        code, ctype, body = get(base + "/metrics", **headers)
        assert (code, ctype, body) == get(f"http://127.0.0.1:{port}/metrics", **headers)
    finally:
        theirs.shutdown()
        theirs.server_close()
    assert b"lenet_steps_total 7.0" in body


def test_page_and_status(served):
    _, base = served
    code, ctype, page = get(base + "/")
    assert code == 200 and ctype == "text/html; charset=utf-8" and b"<svg id=\"chart-loss\"" in page
    code, ctype, body = get(base + "/api/status")
    st = json.loads(body)
    assert ctype == "application/json" and st["metrics"]["lenet_steps_total"] == 7
    assert [w["name"] for w in st["workers"]] == ["w0"] and st["history"]["steps"]["step"] == [7]


def test_other_paths_and_methods_are_refused(served):
    _, base = served
    with pytest.raises(urllib.error.HTTPError) as err:
        get(base + "/etc/passwd")
    assert err.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(base + "/metrics", data=b"x", method="POST"), timeout=5)
    assert err.value.code == 501


def test_a_silent_client_does_not_block_others(served):
    _, base = served
    with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=5) as idle:
        idle.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never finishes its request
        assert get(base + "/metrics")[0] == 200


def test_a_client_hanging_up_leaves_no_traceback(served, capfd):
    _, base = served
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=5) as rude:
            rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")  # close with a reset
            rude.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
    assert get(base + "/metrics")[0] == 200  # still serving
    assert "Traceback" not in capfd.readouterr().err


def test_port_in_use_is_an_os_error(served):
    _, base = served
    with pytest.raises(OSError):
        start_dashboard(CollectorRegistry(), "127.0.0.1", int(base.rsplit(":", 1)[1]), RunHistory())


def test_a_slowloris_cannot_open_unbounded_threads(served):
    """200 connections that send nothing (or a byte at a time): the threads stay fixed and /metrics answers."""
    import threading

    _, base = served
    port = int(base.rsplit(":", 1)[1])
    before = threading.active_count()
    idle = []
    try:
        for i in range(200):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 2:
                s.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")  # a head that never ends
            idle.append(s)
        assert get(base + "/metrics")[0] == 200
        assert get(base + "/api/status")[0] == 200
        assert threading.active_count() <= before  # the pool was started with the server: nothing more
    finally:
        for s in idle:
            s.close()
    assert get(base + "/metrics")[0] == 200


def test_an_endless_head_is_cut_off(served):
    _, base = served
    with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=5) as s:
        try:
            for _ in range(40):
                s.sendall(b"X-Filler: " + b"a" * 1000 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        s.settimeout(5)
        try:
            assert s.recv(100) == b""  # closed unanswered
        except ConnectionResetError:
            pass
    assert get(base + "/metrics")[0] == 200


def test_clients_polling_in_a_tight_loop_get_a_bounded_rate(served):
    """4 clients with no pause between requests: answered at the server's pace (20/s, bursts of 10), the
    snapshot built at most 4 times a second, so the training loop's share of the CPU stays its own."""
    import threading
    import time

    _, base = served
    answered, stop = [0], threading.Event()

    def poll():
        while not stop.is_set():
            get(base + "/api/status")
            answered[0] += 1

    threads = [threading.Thread(target=poll) for _ in range(4)]
    start = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    elapsed = time.monotonic() - start
    assert 0 < answered[0] <= 20 * elapsed + 10 + 4, answered[0]  # + the 4 answered as the clients stopped

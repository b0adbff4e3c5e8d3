"""Peers of another release: told why in one line on both sides, not left retrying in silence."""

import msgpack
import zmq

from coordinator import protocol as P
from procs import coordinator, free_port


def test_a_registration_of_another_protocol_version_is_answered_with_why(tmp_path, procs):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    coord = coordinator(tmp_path, "--workers", "0", "--bind", endpoint, "--max-steps", "1", "--checkpoint-dir", "off",
                        "--output", str(tmp_path / "m.npz"))
    procs.append(coord)
    coord.wait_for("listening on")
    old = msgpack.packb({"v": P.PROTOCOL_VERSION - 1, "type": "register", "name": "old", "pid": 1, "probe": "ab" * 32,
                         "capacity": 1, "model": "lenet5", "host": "", "cores": 1}, use_bin_type=True)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(old)
        assert sock.poll(10_000), "no answer to a registration of another version"
        reply = P.decode(sock.recv())
    finally:
        sock.close()
    assert isinstance(reply, P.Error) and reply.code == "version"
    assert f"protocol {P.PROTOCOL_VERSION}" in reply.message and "same release" in reply.message
    coord.stop()
    assert "version" in coord.log()

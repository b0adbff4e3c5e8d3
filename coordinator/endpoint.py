"""The coordinator's (and a relay's) socket: bind (with CURVE if configured), send without blocking, receive what is queued.

Network code only: it moves frames and knows nothing of what they mean.  One ROUTER
socket; each worker's DEALER routing id names it.  Sends never block (a peer whose
queue is full loses that message, and the caller is told), and every wait has a
finite timeout.
"""

from __future__ import annotations

from collections.abc import Iterator

import zmq

from coordinator import protocol as P
from coordinator.keys import CurveServer, secure_server
from lenet.status import NetworkError

RECEIVE_QUEUE = 64  # messages queued per peer before ZeroMQ drops its further ones
SEND_QUEUE = 64  # a step sends a peer its parameters and at most PREFETCH tasks, plus heartbeats


def check_bindable(context: zmq.Context, bind: str) -> None:
    """NetworkError if `bind` cannot be listened on at all (checked before anything else is said of it)."""
    probe = context.socket(zmq.ROUTER)
    try:
        probe.bind(bind)
    except zmq.ZMQError as err:
        raise NetworkError(f"cannot bind {bind}: {err.strerror}") from None
    finally:
        probe.close(linger=0)


class RouterEndpoint:
    def __init__(self, context: zmq.Context, bind: str, curve: CurveServer | None = None,
                 max_message: int = P.MAX_MESSAGE_BYTES):
        self.sock = context.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        # Nothing a peer may send is larger than `max_message` (the coordinator: a Result of a
        # whole batch): larger frames are cut off unread.
        self.sock.setsockopt(zmq.MAXMSGSIZE, max_message)
        # Queues per peer are bounded, so a flooding or stalled peer costs bounded memory.
        self.sock.setsockopt(zmq.RCVHWM, RECEIVE_QUEUE)
        self.sock.setsockopt(zmq.SNDHWM, SEND_QUEUE)
        # No takeover: a connection claiming a connected worker's routing id is refused, and
        # stays unheard.  So a worker that opens a new connection (after the coordinator fell
        # silent) does so under a new routing id, as a new member; the old one is lost at the
        # heartbeat timeout.
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 0)
        self.sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        self.sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
        self.auth = secure_server(self.sock, curve, context) if curve is not None else None
        try:
            self.sock.bind(bind)
        except zmq.ZMQError as err:
            self.close()
            raise NetworkError(f"cannot bind {bind}: {err.strerror}") from None
        self.address = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    @property
    def local_address(self) -> str:
        """Where a process on this machine connects (a wildcard bind is reachable on loopback)."""
        return self.address.replace("0.0.0.0", "127.0.0.1")

    def send(self, identity: bytes, frame: bytes) -> bool:
        """Queue `frame` for `identity`; False if that peer's queue is full and the frame was dropped."""
        try:
            # Copied into ZeroMQ's buffer: a zero-copy send of a large frame wakes pyzmq's
            # garbage-collector thread (which takes the interpreter lock) to release it afterwards,
            # which cost more than the copy of a 250 KB Params frame: measured 0.15 ms of
            # coordinator CPU a step more at 1 and 2 workers.
            self.sock.send_multipart([identity, frame], zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def poll(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a message; True if one is queued."""
        return bool(self.sock.poll(int(timeout * 1000)))

    def receive(self, budget: int) -> Iterator[list[zmq.Frame]]:
        """The multipart messages already queued, at most `budget` of them."""
        for _ in range(budget):
            try:
                # copy=False: gradients are unpacked straight from ZeroMQ's buffer.
                yield self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return

    def close(self, linger_ms: int = 0) -> None:
        """Close the socket; `linger_ms`: how long frames still queued (a Shutdown) may take to leave."""
        self.sock.close(linger=linger_ms)
        if self.auth is not None:
            self.auth.stop()

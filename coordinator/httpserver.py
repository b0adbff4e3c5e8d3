"""A bounded HTTP server: one thread gathers request heads, a fixed pool of threads answers them.

`http.server.ThreadingHTTPServer` starts a thread per connection, so whoever
opens connections and sends nothing (a slowloris) makes the coordinator start
threads without bound.  Here the threads are fixed (one selector thread and
`pool` handler threads, whatever the clients do): the selector thread accepts
connections and reads their request heads without blocking, keeps at most
`max_pending` connections waiting for a head (a new one closes the longest
waiting, so idle connections cannot lock out a real client, which sends its head
at once), closes any whose head has not arrived within `head_timeout` seconds,
and hands complete heads to the pool (at most `max_pending` of them waiting).
The pool answers at most `max_rate` requests a second (bursts of `burst`); more
wait their turn, costing no CPU: clients polling in a tight loop then cost the
process (and the training loop sharing its interpreter lock) a bounded share.  The handlers answer GET requests, which
have no body, with one response per connection (HTTP/1.0 style), each socket
operation bounded by `io_timeout`.
"""

from __future__ import annotations

import io
import queue
import selectors
import socket
import sys
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler
from typing import Any

from coordinator.ratelimit import TokenBucket

MAX_HEAD_BYTES = 16 << 10  # a request line and headers: browsers and Prometheus send well under 2 KiB


class _Pending:
    __slots__ = ("address", "deadline", "head")

    def __init__(self, address: Any, deadline: float) -> None:
        self.address, self.deadline, self.head = address, deadline, b""


class BoundedHTTPServer:
    """Serve `handler` (a HeadReadHandler subclass) on addr:port; OSError if the address is unusable.

    Attributes the handler sees as `self.server` are this object's; `serve_forever`
    runs the selector loop (in the caller's thread) until `shutdown`.
    """

    def __init__(self, addr: str, port: int, handler: type[HeadReadHandler], pool: int = 4,
                 max_pending: int = 64, head_timeout: float = 5.0, io_timeout: float = 5.0,
                 max_rate: float = 20.0, burst: int = 10) -> None:
        self.handler, self.max_pending, self.max_rate = handler, max_pending, max_rate
        self._bucket, self._pace_lock = TokenBucket(max_rate, burst), threading.Lock()
        self.head_timeout, self.io_timeout = head_timeout, io_timeout
        family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0][0]  # IPv4 or IPv6 (e.g. ::1)
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((addr, port))
            self.socket.listen(128)
            self.socket.setblocking(False)
        except OSError:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.socket, selectors.EVENT_READ, None)
        self._pending: OrderedDict[socket.socket, _Pending] = OrderedDict()  # oldest first
        self._jobs: queue.Queue[tuple[socket.socket, Any, bytes] | None] = queue.Queue(maxsize=max_pending)
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._workers = [threading.Thread(target=self._answer_jobs, name=f"http-{i}", daemon=True)
                         for i in range(pool)]
        for t in self._workers:
            t.start()

    # ------------------------------------------------------------------ the selector thread

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        try:
            while not self._stop.is_set():
                for key, _ in self._selector.select(timeout=min(poll_interval, 0.25)):
                    if key.data is None:
                        self._accept()
                    else:
                        self._read(key.fileobj)
                self._expire(time.monotonic())
        finally:
            for conn in list(self._pending):
                self._drop(conn)
            self._stopped.set()

    def _accept(self) -> None:
        while True:
            try:
                conn, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of descriptors, say: serve the waiting ones, and do not spin on the backlog
                time.sleep(0.1)
                return
            conn.setblocking(False)
            if len(self._pending) >= self.max_pending:
                self._drop(next(iter(self._pending)))  # the longest waiting: idle, most likely
            self._pending[conn] = _Pending(address, time.monotonic() + self.head_timeout)
            self._selector.register(conn, selectors.EVENT_READ, True)

    def _read(self, conn: Any) -> None:
        pending = self._pending.get(conn)
        if pending is None:
            return
        try:
            data = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client hung up
            self._drop(conn)
            return
        pending.head += data
        if b"\r\n\r\n" not in pending.head and b"\n\n" not in pending.head:
            if len(pending.head) > MAX_HEAD_BYTES:
                self._drop(conn)
            return
        self._selector.unregister(conn)
        del self._pending[conn]
        try:
            self._jobs.put_nowait((conn, pending.address, pending.head))
        except queue.Full:  # `max_pending` complete requests already wait for a handler: this client tries again
            conn.close()

    def _expire(self, now: float) -> None:
        while self._pending:
            conn, pending = next(iter(self._pending.items()))
            if pending.deadline > now:
                return
            self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        self._pending.pop(conn, None)
        try:
            self._selector.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()

    # ------------------------------------------------------------------ the handler threads

    def _answer_jobs(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            conn, address, head = job
            self._pace()
            try:
                conn.setblocking(True)
                conn.settimeout(self.io_timeout)
                self.handler((conn, head), address, self)
            except (ConnectionError, TimeoutError):
                pass  # a client that hung up or stopped reading: its own business, not a log line
            except Exception:  # a bug in a handler: keep its traceback, keep serving
                sys.excepthook(*sys.exc_info())
            finally:
                conn.close()

    def _pace(self) -> None:
        """Wait for the rate limit's next token (holding the lock: the other handlers wait on it, idle)."""
        with self._pace_lock:
            while not self._bucket.take(time.monotonic()) and not self._stop.is_set():
                time.sleep(0.5 / self.max_rate)

    def shutdown(self) -> None:
        """Stop serving and close every socket; returns once the selector loop has ended."""
        self._stop.set()
        self._stopped.wait(timeout=5.0)
        for _ in self._workers:
            try:
                self._jobs.put_nowait(None)
            except queue.Full:
                break  # daemon threads: they end with the process
        self._selector.close()
        self.socket.close()


class HeadReadHandler(BaseHTTPRequestHandler):
    """A request handler for `BoundedHTTPServer`: `self.request` is (connection, head already read)."""

    def setup(self) -> None:
        self.connection, head = self.request
        self.rfile = io.BytesIO(head)
        self.wfile = self.connection.makefile("wb")

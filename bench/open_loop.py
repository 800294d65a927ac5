"""Open-loop load: requests sent on a schedule of `rate` per second whatever the answers
take, each one's latency counted from when the schedule wanted it sent (no coordinated
omission).

One event loop per process, on non-blocking keep-alive sockets, with just enough HTTP/1.1
to read an answer (status line, Content-Length or chunks, Connection: close). The first
generator ran 128 threads per process on http.client, whose header parsing alone is a few
tens of microseconds: sharing the 2 cores with the server, it sent its requests p95
104 ms late under the overload row and read the answers late as well, so the latency it
reported was partly its own.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import selectors
import socket
import time
from collections import deque
from dataclasses import dataclass

from bench.load import CLIENT_TIMEOUT_S, HOST, MAX_DURATION_S, MAX_IDLE_S, MAX_REQUESTS, RequestSpec

# Niceness added to the generator's processes (negative: ahead of the server's).
PRIORITY_RAISE = -10


@dataclass(frozen=True, slots=True)
class Sent:
    """One request of an open-loop run. Times are wall-clock seconds (time.time())."""

    intended: float  # when the schedule wanted it sent
    sent: float
    answered: float
    status: int  # 0: no answer
    body: bytes  # kept when the caller asked for bodies; the failure's name for status 0


def offer(
    port: int,
    spec: RequestSpec,
    *,
    rate: float,
    duration_s: float,
    connections: int = 256,
    processes: int = 1,
    keep_bodies: bool = False,
    timeout_s: float = CLIENT_TIMEOUT_S,
) -> list[Sent]:
    """Offer `rate` requests per second for `duration_s` over at most `connections`
    connections per process; a request whose time has come while every connection is busy
    waits for one, and that wait counts in its latency."""
    duration_s = min(duration_s, MAX_DURATION_S)
    rate = max(0.1, min(rate, MAX_REQUESTS / max(duration_s, 1.0)))
    schedule = _Schedule(time.time() + 0.5, rate, duration_s, processes)
    args = [
        (port, spec, schedule, k, connections, keep_bodies, timeout_s) for k in range(processes)
    ]
    with multiprocessing.get_context("fork").Pool(processes, _raise_priority) as pool:
        parts = pool.starmap(_run_part, args)
    return [sent for part in parts for sent in part]


def _raise_priority() -> None:
    """The generator's processes run ahead of the server's in the CPU queue, so that its
    sends and timestamps do not wait for a core the server is saturating (a client on
    another machine would not); it needs a few per cent of one. What lateness remains
    under the overload row (p95 60-130 ms) is requests waiting for one of the busy
    connections, not for the CPU. Without the right to raise it (not root), the priority
    stays as it was."""
    with contextlib.suppress(PermissionError):
        os.nice(PRIORITY_RAISE)


@dataclass(frozen=True, slots=True)
class _Schedule:
    start_wall: float
    rate: float
    duration_s: float
    stride: int  # processes: process k sends requests k, k + stride, ...

    def count(self) -> int:
        return int(self.duration_s * self.rate / self.stride)

    def due(self, offset: int, n: int) -> float:
        return self.start_wall + (offset + n * self.stride) / self.rate


def _run_part(
    port: int,
    spec: RequestSpec,
    schedule: _Schedule,
    offset: int,
    connections: int,
    keep: bool,
    timeout_s: float,
) -> list[Sent]:
    return _Loop(port, spec, schedule, offset, connections, keep, timeout_s).run()


class _Connection:
    __slots__ = ("intended", "out", "received", "sent", "sock", "used_at")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.out = b""  # what is left to write of the request in flight
        self.received = bytearray()
        self.intended = self.sent = 0.0
        self.used_at = time.monotonic()


class _Loop:
    def __init__(
        self,
        port: int,
        spec: RequestSpec,
        schedule: _Schedule,
        offset: int,
        max_connections: int,
        keep_bodies: bool,
        timeout_s: float,
    ) -> None:
        self.port = port
        self.timeout_s = timeout_s
        self.spec = spec
        self.schedule = schedule
        self.offset = offset
        self.max_connections = max_connections
        self.keep_bodies = keep_bodies
        self.selector = selectors.DefaultSelector()
        self.idle: list[_Connection] = []  # most recently used last
        self.busy: dict[socket.socket, _Connection] = {}
        self.opened = 0
        self.results: list[Sent] = []
        head = [f"Host: {HOST}:{port}", *(f"{k}: {v}" for k, v in spec.headers)]
        if spec.body is not None:
            head.append(f"Content-Length: {len(spec.body)}")
        self.head = ("\r\n".join(head) + "\r\n\r\n").encode()

    def run(self) -> list[Sent]:
        total, next_n = self.schedule.count(), 0
        waiting: deque[tuple[int, float]] = deque()  # (n, intended) due, with no connection
        next_expiry = 0.0
        try:
            while next_n < total or waiting or self.busy:
                now = time.time()
                while next_n < total and (due := self.schedule.due(self.offset, next_n)) <= now:
                    waiting.append((next_n, due))
                    next_n += 1
                while waiting and (self.idle or self.opened < self.max_connections):
                    n, intended = waiting.popleft()
                    self._start(n, intended)
                if time.monotonic() >= next_expiry:
                    self._expire(time.time())
                    next_expiry = time.monotonic() + 0.5
                until_next = self.schedule.due(self.offset, next_n) - time.time()
                timeout = min(max(until_next, 0.0), 0.05) if next_n < total else 0.05
                for key, mask in self.selector.select(timeout):
                    self._ready(key.fileobj, mask)  # type: ignore[arg-type]
        finally:
            for conn in [*self.idle, *self.busy.values()]:
                self._close(conn)
            self.selector.close()
        return self.results

    # ------------------------------------------------------------------ requests

    def _start(self, n: int, intended: float) -> None:
        index = self.offset + n * self.schedule.stride
        try:
            conn = self._connection()
        except OSError as error:  # no socket or no port left: an unanswered request
            now = time.time()
            self.results.append(Sent(intended, now, now, 0, type(error).__name__.encode()))
            return
        conn.intended = intended
        conn.received.clear()
        conn.out = self._request(index)
        conn.sent = time.time()
        self.busy[conn.sock] = conn
        self._write(conn)

    def _request(self, index: int) -> bytes:
        line = f"{self.spec.method} {self.spec.path(index)} HTTP/1.1\r\n".encode()
        return line + self.head + (self.spec.body or b"")

    def _connection(self) -> _Connection:
        while self.idle:
            conn = self.idle.pop()
            # Gunicorn closes a connection idle for `keepalive` (2 s); one idle for longer
            # than MAX_IDLE_S may be closing as the request goes out.
            if time.monotonic() - conn.used_at <= MAX_IDLE_S:
                return conn
            self._close(conn)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        code = sock.connect_ex((HOST, self.port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            raise OSError(code, os.strerror(code))
        self.opened += 1
        conn = _Connection(sock)
        self.selector.register(sock, selectors.EVENT_READ, conn)
        return conn

    def _write(self, conn: _Connection) -> None:
        try:
            written = conn.sock.send(conn.out)
        except BlockingIOError:  # still connecting, or the buffer is full
            written = 0
        except OSError as error:
            self._fail(conn, type(error).__name__)
            return
        conn.out = conn.out[written:]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
        self.selector.modify(conn.sock, events, conn)

    def _ready(self, sock: socket.socket, mask: int) -> None:
        conn = self.busy.get(sock)
        if conn is None:  # idle: the server closed it (keep-alive timeout)
            self._close(self._take_idle(sock))
            return
        if mask & selectors.EVENT_WRITE and conn.out:
            self._write(conn)
        if not mask & selectors.EVENT_READ:
            return
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as error:
            self._fail(conn, type(error).__name__)
            return
        if not chunk:
            self._fail(conn, "RemoteDisconnected")
            return
        conn.received += chunk
        answer = _parse(conn.received)
        if answer is not None:
            self._answered(conn, *answer)

    def _answered(self, conn: _Connection, status: int, body: bytes, closes: bool) -> None:
        kept = body if self.keep_bodies else b""
        self.results.append(Sent(conn.intended, conn.sent, time.time(), status, kept))
        del self.busy[conn.sock]
        conn.out, conn.used_at = b"", time.monotonic()
        if closes:
            self._close(conn)
        else:
            self.selector.modify(conn.sock, selectors.EVENT_READ, conn)
            self.idle.append(conn)

    def _fail(self, conn: _Connection, why: str) -> None:
        self.results.append(Sent(conn.intended, conn.sent, time.time(), 0, why.encode()))
        self.busy.pop(conn.sock, None)
        self._close(conn)

    def _expire(self, now: float) -> None:
        late = [c for c in self.busy.values() if now - c.sent > self.timeout_s]
        for conn in late:
            self._fail(conn, "TimeoutError")

    def _take_idle(self, sock: socket.socket) -> _Connection:
        conn = next(c for c in self.idle if c.sock is sock)
        self.idle.remove(conn)
        return conn

    def _close(self, conn: _Connection) -> None:
        self.selector.unregister(conn.sock)
        conn.sock.close()
        self.opened -= 1


def _parse(received: bytearray) -> tuple[int, bytes, bool] | None:
    """(status, body, the server closes the connection) once the whole answer is in."""
    end = received.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(received[:end]).decode("latin-1").lower()
    status = int(head[9:12])
    headers = dict(
        (name.strip(), value.strip())
        for name, _, value in (line.partition(":") for line in head.split("\r\n")[1:])
    )
    body_start = end + 4
    closes = headers.get("connection") == "close"
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(received, body_start)
        return None if body is None else (status, body, closes)
    length = int(headers.get("content-length", "0"))
    if len(received) < body_start + length:
        return None
    return status, bytes(received[body_start : body_start + length]), closes


def _dechunk(received: bytearray, at: int) -> bytes | None:
    body = bytearray()
    while True:
        line_end = received.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(bytes(received[at:line_end]).split(b";")[0], 16)
        start = line_end + 2
        if len(received) < start + size + 2:
            return None
        if size == 0:
            return bytes(body)
        body += received[start : start + size]
        at = start + size + 2

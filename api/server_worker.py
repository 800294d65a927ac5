"""The gunicorn worker class of the web process (gunicorn.conf.py names it).

Gunicorn's gthread worker hands each request to a thread pool; when every thread is busy
the request waits in the pool's queue, where the application cannot see it. This worker
notes when each request was queued and tells `api.admission` in the thread that runs it,
so admission control counts that wait too, and how many requests are queued meanwhile.

The admission slot is taken here too, before the WSGI environment and Flask (the
application's own check then takes the slot over): a request that gets none within its
budget is answered 503 here, from bytes made once, without the WSGI environment, Flask,
logging or the problem handlers. Under twice the capacity most requests end this way, and
a 503 made by the application cost a third of an accepted submit, which starved the
accepted ones.

Requests gunicorn cannot read (a request line or headers past its limits, a malformed
line) never reach the application either; gunicorn answers them with an HTML page of its
own. Importing this module makes those answers problem documents too (`error_page`).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from typing import Any

import orjson
import structlog
from gunicorn import util as gunicorn_util
from gunicorn.workers.gthread import _DEFER as DEFER  # "no data yet: back to the poller"
from gunicorn.workers.gthread import ThreadWorker

from api import admission, live, send_bounds
from api.body_deadline import BodyTimedOut, DeadlineSocket
from api.memory_trim import MemoryTrim
from api.metrics import method_label
from api.problems import PROBLEM_MIMETYPE, document
from api.request_context import REQUEST_ID_HEADER
from models.ids import random_uuid
from services.errors import Overloaded
from telemetry import prometheus

log = structlog.get_logger("conveyor.api")
# The route label of requests turned away before routing.
TURNED_AWAY_ROUTE = "(turned away at admission)"
_REPORT_EVERY_S = 1.0
# Heap freed since the last trim that is handed back to the system (api/memory_trim.py).
TRIM_FREED_BYTES = 8 * 1024 * 1024
TRIM_EVERY_S = 2.0


def raw_problem(
    status: int, reason: str, problem: dict[str, object], headers: dict[str, str]
) -> bytes:
    """A whole HTTP/1.1 answer carrying `problem`, for answers made outside the WSGI app."""
    body = orjson.dumps(problem)
    fields = {
        "Content-Type": PROBLEM_MIMETYPE,
        "Content-Length": str(len(body)),
        **headers,
        REQUEST_ID_HEADER: str(problem["request_id"]),
    }
    head = f"HTTP/1.1 {status} {reason}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in fields.items()) + "\r\n"
    return head.encode("latin-1") + body


def overloaded_response(request_id: str, *, close: bool = False) -> bytes:
    """The whole HTTP/1.1 answer: the problem document `enter` would have produced."""
    problem = document(
        Overloaded.status,
        admission.DETAIL,
        slug=Overloaded.slug,
        title=Overloaded.title,
        request_id=request_id,
    )
    headers = {"Retry-After": str(admission.RETRY_AFTER_S)}
    if close:
        headers["Connection"] = "close"
    return raw_problem(Overloaded.status, "Service Unavailable", problem, headers)


def error_page(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's `util.write_error`, replaced: its answer to a request it could not read
    (414, 431, 400), or with a 500 to a response whose streaming failed, as a problem
    document like every other error instead of an HTML page."""
    problem = document(status_int, mesg or reason, request_id=random_uuid().hex)
    answer = raw_problem(status_int, reason, problem, {"Connection": "close"})
    gunicorn_util.write_nonblock(sock, answer)


gunicorn_util.write_error = error_page

# gunicorn drains at most this much of a body the application left unread before it reuses
# the connection (gunicorn.http.parser._DRAIN_MAX_BYTES); past it, it closes the connection.
UNDRAINED_BODY_BYTES = 64 * 1024


def closing_after_unread_bodies(app: Any) -> Any:
    """The WSGI app, answering an error to a body gunicorn may not drain with `Connection:
    close`. gunicorn said `keep-alive` and then closed the connection, so a client's next
    request on it (a pooled connection) failed: a 401 or 413 to a 2 MiB upload did this.
    A body whose reading failed (malformed, or past its deadline: a 400 or a 408) is never
    drained: where the next request would start is unknown. Errors only: a body the
    application took was read whole."""

    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if not length and "HTTP_TRANSFER_ENCODING" not in environ:
            return app(environ, start_response)
        undrained = length > UNDRAINED_BODY_BYTES or "HTTP_TRANSFER_ENCODING" in environ

        def start(status: str, headers: Any, exc_info: Any = None) -> Any:
            response = start_response.__self__  # gunicorn's Response
            if status[:1] in ("4", "5") and (undrained or response.req.body.failed):
                response.force_close()
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return wrapped


# How long a thread waits for a new connection's first bytes before handing it back to the
# poller (gunicorn: 5 s, in which 64 idle connections held every thread of a process).
NEW_CONNECTION_WAIT_S = 0.05


class SlowHeads:
    """Request heads being read in threads, and the time each must have arrived by. The
    main loop (every second at most) shuts down the socket of one past its time: the
    thread's blocked read ends at once, as if the client had hung up. gunicorn sets no
    such bound: a client that sent one byte held a thread for good (a probe: 64 such
    connections starved both processes, /metrics included)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._deadlines: dict[Any, float] = {}

    def reading(self, conn: Any) -> None:
        with self._lock:
            self._deadlines[conn] = time.monotonic() + self.timeout_s

    def read(self, conn: Any) -> None:
        with self._lock:
            self._deadlines.pop(conn, None)

    def cut_overdue(self) -> int:
        now = time.monotonic()
        with self._lock:
            overdue = [conn for conn, deadline in self._deadlines.items() if deadline <= now]
            for conn in overdue:
                del self._deadlines[conn]
        for conn in overdue:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        return len(overdue)


class AdmissionThreadWorker(ThreadWorker):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._turned_away = 0
        self._turned_away_lock = threading.Lock()
        self._reported_at = time.monotonic()
        self._slow_heads = SlowHeads(10.0)
        self._body_timeout_s = 30.0
        self._send_timeout_s = 30.0
        self._memory_trim = MemoryTrim(freed_bytes=TRIM_FREED_BYTES, every_s=TRIM_EVERY_S)

    def load_wsgi(self) -> None:
        super().load_wsgi()
        settings = self.wsgi.extensions["conveyor"].settings
        self._slow_heads = SlowHeads(settings.web_request_head_timeout_s)
        self._body_timeout_s = settings.web_request_body_timeout_s
        self._send_timeout_s = settings.web_send_timeout_s
        send_bounds.install_chunk_deadline(settings.web_send_timeout_s)
        self.wsgi = closing_after_unread_bodies(self.wsgi)

    def murder_pending(self) -> None:
        super().murder_pending()
        cut = self._slow_heads.cut_overdue()
        if cut:
            log.warning("request.head_too_slow", connections=cut)
        free = self._memory_trim.maybe()
        if free is not None:
            log.info("memory.trimmed", free_mb=round(free / 2**20, 1))

    def set_accept_enabled(self, enabled: bool) -> None:
        """gunicorn stops accepting at a graceful stop but keeps its listening sockets
        until it exits, up to `graceful_timeout` later: meanwhile the kernel queued new
        connections there, which hung and were then reset. Closed at once, they are
        refused, and a client or a balancer tries elsewhere; connections already queued on
        them are reset (gunicorn.conf.py, reuse_port). Open live tails end then too
        (`live.STOPPING`): they held the stop until its timeout and were cut mid-body."""
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            for listener in self.sockets:
                listener.close()
            live.STOPPING.set()

    def enqueue_req(self, conn: Any) -> None:
        conn.conveyor_queued_at = time.monotonic()
        admission.mark_queued()
        super().enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        if not conn.initialized and not conn.data_ready:
            # A new connection: its first bytes are waited for briefly here, then in the
            # poller, which holds no thread. The request arrives when they do, not when the
            # connection was accepted: count from when the application sees it.
            if not conn.wait_for_data(NEW_CONNECTION_WAIT_S):
                return DEFER
            # A client that leaves what we send untaken longer, or vanishes, loses its
            # connection, and the thread (and a live tail's waiting slot) is freed.
            send_bounds.bound(conn.sock, self._send_timeout_s)
            admission.mark_arrival(None)
        else:
            admission.mark_arrival(getattr(conn, "conveyor_queued_at", None))
        self._slow_heads.reading(conn)
        try:
            keep = super().handle(conn)
        finally:
            self._slow_heads.read(conn)
        if keep is False:  # gunicorn closes it next, on its main loop
            _linger_briefly(conn.sock)
        return keep

    def handle_request(self, req: Any, conn: Any) -> bool:
        self._slow_heads.read(conn)  # the head is in; the body is the application's to read
        # The body's reads wait only until its deadline (api/body_deadline.py); the
        # connection's own socket is given back before gunicorn drains what is left.
        unreader = conn.parser.unreader
        body_socket = DeadlineSocket(conn.sock, timeout_s=self._body_timeout_s)
        unreader.sock = body_socket
        try:
            return self._sending(req, conn)
        finally:
            unreader.sock = conn.sock
            if body_socket.expired:  # answered 408 (or 503); the connection is closed
                log.warning("request.body_too_slow", path=req.path)

    def _sending(self, req: Any, conn: Any) -> bool:
        try:
            return self._admitted(req, conn)
        except (BlockingIOError, TimeoutError):
            # SO_SNDTIMEO, a chunk's deadline, TCP_USER_TIMEOUT (ETIMEDOUT is a
            # TimeoutError too), or a live tail's client that acknowledged nothing
            # (send_bounds.Stalled): the client has not taken our bytes for that long, or
            # is gone. The answer cannot be finished, so the connection is reset: the kernel
            # drops what it still held to send (megabytes, for a large page), and
            # gunicorn's graceful close, which waits up to 2 s on the main loop for the
            # client, finds the reading side shut.
            log.warning("response.send_timed_out", path=req.path)
            with contextlib.suppress(OSError):
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
                conn.sock.shutdown(socket.SHUT_RD)
            return False

    def _admitted(self, req: Any, conn: Any) -> bool:
        control = admission.installed()
        if control is None or req.path in admission.EXEMPT_PATHS:
            return bool(super().handle_request(req, conn))
        if not control.admit():
            return self._turn_away(req, conn)
        try:
            return bool(super().handle_request(req, conn))
        finally:
            control.release_unclaimed()

    def _turn_away(self, req: Any, conn: Any) -> bool:
        started = time.perf_counter()
        # The connection stays usable only once the body is consumed; a large one (or an
        # endless chunked one, which kept this thread reading) is left, and the connection
        # closed.
        try:
            whole = len(req.body.read(UNDRAINED_BODY_BYTES + 1)) <= UNDRAINED_BODY_BYTES
        except BodyTimedOut:
            whole = False
        conn.sock.sendall(overloaded_response(random_uuid().hex, close=not whole))
        prometheus.observe_request(
            method_label(req.method),
            TURNED_AWAY_ROUTE,
            Overloaded.status,
            time.perf_counter() - started,
        )
        self._count_turned_away()
        return whole and bool(self.alive) and not req.should_close()

    def _count_turned_away(self) -> None:
        """One warning a second at most, with the count, instead of a line per request."""
        with self._turned_away_lock:
            self._turned_away += 1
            now = time.monotonic()
            if now - self._reported_at < _REPORT_EVERY_S:
                return
            count, self._turned_away, self._reported_at = self._turned_away, 0, now
        log.warning("admission.turned_away", requests=count, detail=admission.DETAIL)


_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
# How long a connection to be closed is kept, after its answer, for the client to take the
# answer and close first (RFC 9112 9.6: a close with unread bytes is a reset, which can
# destroy an answer not yet acknowledged).
CLOSE_LINGER_S = 1.0


def _linger_briefly(sock: socket.socket) -> None:
    """gunicorn's graceful close, done here in the request's thread for at most
    CLOSE_LINGER_S: half-close, and drop what the client still sends until it closes.
    gunicorn does it on the main loop, for up to 2 s each: a client that asked for
    `Connection: close` and then kept the connection open, or that trickles a body past
    its deadline, stopped the whole process that long (10 such connections: a request
    waited 20 s). The reading side is then shut, so gunicorn's close waits for nothing."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + CLOSE_LINGER_S
        dropped = 0
        while (left := deadline - time.monotonic()) > 0 and dropped <= UNDRAINED_BODY_BYTES:
            sock.settimeout(left)
            data = sock.recv(65536)
            if not data:
                break
            dropped += len(data)
    with contextlib.suppress(OSError):
        sock.settimeout(None)
        sock.shutdown(socket.SHUT_RD)

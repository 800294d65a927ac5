"""A real HTTP receiver for webhook tests: a threaded http.server on loopback that records
every request and answers each one as the test scripted it."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook

from tests.helpers import poll

Behaviour = Callable[["_Handler", "Receiver"], None]


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def verify(self, secret: str) -> Any:
        """The parsed body, if `secret` signed it (raises WebhookVerificationError if not)."""
        return Webhook(secret).verify(self.body, self.headers)


def answer(status: int, body: bytes = b"ok", **headers: str) -> Behaviour:
    def behave(handler: _Handler, _: Receiver) -> None:
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name.replace("_", "-"), value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return behave


def raw(data: bytes) -> Behaviour:
    """These bytes as the whole answer, HTTP or not, then the connection closes."""

    def behave(handler: _Handler, _: Receiver) -> None:
        handler.wfile.write(data)
        handler.close_connection = True

    return behave


def slow(delay_s: float, status: int = 200) -> Behaviour:
    """Answer after `delay_s` (sooner if the receiver is closed)."""

    def behave(handler: _Handler, receiver: Receiver) -> None:
        receiver.released.wait(delay_s)
        with contextlib.suppress(OSError):
            answer(status)(handler, receiver)

    return behave


def endless(status: int = 200) -> Behaviour:
    """A 2xx status, then a chunked body that never ends (until the client goes away)."""

    def behave(handler: _Handler, receiver: Receiver) -> None:
        handler.send_response(status)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        chunk = b"x" * 16384
        with contextlib.suppress(OSError):
            while not receiver.released.is_set():
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                receiver.bytes_sent += len(chunk)

    return behave


def hold(status: int = 200) -> Behaviour:
    """Keep the request waiting until the test calls `release()`."""

    def behave(handler: _Handler, receiver: Receiver) -> None:
        receiver.released.wait()
        with contextlib.suppress(OSError):
            answer(status)(handler, receiver)

    return behave


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        receiver = self.server.receiver
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        headers = {name.lower(): value for name, value in self.headers.items()}
        with receiver.lock:
            receiver.requests.append(Received(self.path, headers, body))
            behaviour = receiver.script.popleft() if receiver.script else receiver.default
        behaviour(self, receiver)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: Receiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up (timeouts, endless answers) is part of the test


class Receiver:
    """Answers scripted behaviours in order, then `default` (200)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.requests: list[Received] = []
        self.script: deque[Behaviour] = deque()
        self.default: Behaviour = answer(200)
        self.lock = threading.Lock()
        self.released = threading.Event()
        self.bytes_sent = 0
        server_class = _Server
        if ":" in host:
            server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
        self.server = server_class((host, 0), _Handler)
        self.server.receiver = self
        self.port = self.server.server_address[1]
        self.host = host
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/hook"

    def then(self, *behaviours: Behaviour) -> Receiver:
        self.script.extend(behaviours)
        return self

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        poll(lambda: len(self.requests) >= count, timeout=timeout)
        return list(self.requests)

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def receiver(host: str = "127.0.0.1") -> Iterator[Receiver]:
    running = Receiver(host)
    try:
        yield running
    finally:
        running.close()


class Listener:
    """A bare TCP listener that accepts nothing: the SSRF tests prove no connection came."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def connections(self) -> int:
        """Accept whatever is queued; how many connections there were."""
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1

    def close(self) -> None:
        self.sock.close()

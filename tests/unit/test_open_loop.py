"""The benchmark's open-loop generator (bench/open_loop.py) against a real HTTP/1.1 server:
it must read every kind of answer the service gives, and count what gets none."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.load import RequestSpec
from bench.open_loop import offer
from tests.ports import closed_port


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the answer says close
    release = threading.Event()

    def do_GET(self) -> None:
        if self.path == "/chunked":
            chunks = b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
            self._answer(200, [("Transfer-Encoding", "chunked")], chunks)
        elif self.path == "/close":
            self.close_connection = True
            self._answer(201, [("Connection", "close"), ("Content-Length", "5")], b"bye!\n")
        elif self.path == "/silent":
            self.release.wait(5)
        else:
            self._answer(200, [("Content-Length", "2")], b"ok")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._answer(202, [("Content-Length", str(len(body)))], body.upper())

    def _answer(self, status: int, headers: list[tuple[str, str]], raw_body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw_body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    _Handler.release.set()
    server.shutdown()
    server.server_close()


def test_every_scheduled_request_is_sent_and_its_answer_read(port: int) -> None:
    spec = RequestSpec("GET", ("/plain", "/chunked", "/close"))
    sent = offer(port, spec, rate=300, duration_s=1, connections=8, keep_bodies=True)
    assert len(sent) == 300
    answers = Counter((s.status, s.body) for s in sent)
    assert answers == {(200, b"ok"): 100, (200, b"abcde"): 100, (201, b"bye!\n"): 100}
    assert all(s.intended <= s.sent <= s.answered for s in sent)


def test_a_body_goes_out_with_its_length(port: int) -> None:
    spec = RequestSpec("POST", ("/echo",), b'{"a": 1}', (("Content-Type", "application/json"),))
    sent = offer(port, spec, rate=100, duration_s=0.5, processes=2, keep_bodies=True)
    assert [(s.status, s.body) for s in sent] == [(202, b'{"A": 1}')] * 50


def test_an_unanswered_request_counts_as_no_answer(port: int) -> None:
    sent = offer(port, RequestSpec("GET", ("/silent",)), rate=10, duration_s=0.3, timeout_s=0.2)
    assert [(s.status, s.body) for s in sent] == [(0, b"TimeoutError")] * 3


def test_a_server_that_is_not_there_counts_as_no_answer() -> None:
    sent = offer(closed_port(), RequestSpec("GET", ("/",)), rate=20, duration_s=0.25)
    assert [(s.status, s.body) for s in sent] == [(0, b"ConnectionRefusedError")] * 5

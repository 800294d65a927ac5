"""Slow and silent clients against the real gunicorn worker (api/server_worker.py): each
gunicorn thread serves one connection at a time, so a client that holds one without
sending (or without reading) takes it from everyone else. A probe starved a whole server
with 64 connections that sent one byte each, or nothing at all.

One gunicorn process (32 threads), with short bounds so that each case takes seconds.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Servers
from tests.helpers import poll
from tests.stack import Api, Stack, stack_on

pytestmark = pytest.mark.e2e

THREADS = 32  # gunicorn.conf.py
HEAD_TIMEOUT_S = 1.0
SEND_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def running(
    servers: Servers, worker_id: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, Api]]:
    workdir: Path = tmp_path_factory.mktemp("e2e-slow-clients")
    with stack_on(servers, worker_id, workdir, "slow") as scenario:
        stack = scenario.stack
        api = stack.start_web(
            WEB_CONCURRENCY="1",
            WEB_REQUEST_HEAD_TIMEOUT_S=str(HEAD_TIMEOUT_S),
            WEB_SEND_TIMEOUT_S=str(SEND_TIMEOUT_S),
        )
        with stack.logs_on_failure():
            api.sign_up()
            yield stack, api
            stack.assert_no_server_errors()


def _connect(api: Api) -> socket.socket:
    host, port = api.base_url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


@contextlib.contextmanager
def _connections(api: Api, count: int, first_bytes: bytes) -> Iterator[list[socket.socket]]:
    sockets = [_connect(api) for _ in range(count)]
    try:
        for sock in sockets:
            if first_bytes:
                sock.sendall(first_bytes)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def _answers_within(api: Api, seconds: float) -> float:
    started = time.monotonic()
    assert api.get("/healthz", timeout=seconds).status == 200
    return time.monotonic() - started


def _closed_by_the_server(sock: socket.socket) -> bool:
    """Whether the server has closed the connection: EOF or a reset, read without waiting
    for more than is there (whatever the server sent before is skipped)."""
    sock.setblocking(False)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def test_connections_that_send_nothing_hold_no_thread(running: tuple[Stack, Api]) -> None:
    """gunicorn waited 5 s for a new connection's first bytes in a thread: twice as many
    silent connections as threads kept everyone else waiting seconds."""
    _, api = running
    with _connections(api, 2 * THREADS, b""):
        assert _answers_within(api, 10) < 1.0


def test_a_request_head_that_never_ends_is_cut_at_its_deadline(
    running: tuple[Stack, Api],
) -> None:
    """One byte each, more connections than threads: gunicorn read each head in a thread
    with no bound, for ever. The others are served again within the deadline, and the
    slow connections are closed."""
    stack, api = running
    with _connections(api, THREADS + 8, b"G") as slow:
        assert _answers_within(api, 10) < 2 * HEAD_TIMEOUT_S + 2
        poll(lambda: all(_closed_by_the_server(sock) for sock in slow), timeout=10)
    assert stack.log_count("web*", "request.head_too_slow") > 0


def test_a_client_that_does_not_read_its_answer_frees_the_thread(
    running: tuple[Stack, Api],
) -> None:
    """gunicorn's send blocked for as long as the client did not read: the thread, and
    the answer's memory, were held for good."""
    stack, api = running
    big = {"events": [{"type": "big", "data": {"x": "y" * 60_000}} for _ in range(30)]}
    for _ in range(4):  # 120 events of 60 KB: a page of 7 MB, more than loopback buffers
        assert api.post("/v1/streams/big/events", big).status == 201
    request = (
        f"GET /v1/streams/big/events?limit=1000 HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {api.token}\r\n\r\n"
    ).encode()
    sock = _connect(api)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.sendall(request)
        poll(lambda: stack.log_count("web*", "response.send_timed_out") > 0, timeout=20)
        poll(lambda: _closed_by_the_server(sock), timeout=10)
    finally:
        sock.close()
    assert _answers_within(api, 10) < 1.0

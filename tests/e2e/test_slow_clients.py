"""Slow and silent clients against the real gunicorn worker (api/server_worker.py): each
gunicorn thread serves one connection at a time, so a client that holds one without
sending (or without reading) takes it from everyone else. A probe starved a whole server
with 64 connections that sent one byte each, or nothing at all.

One gunicorn process (32 threads), with short bounds so that each case takes seconds.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import prom
from tests.conftest import Servers
from tests.helpers import Paced, poll
from tests.stack import Api, Stack, one_web_process
from tests.vanishing_peer import available, vanishing_peer

pytestmark = pytest.mark.e2e

THREADS = 32  # gunicorn.conf.py
HEAD_TIMEOUT_S = 1.0
SEND_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.0
CLOSE_LINGER_S = 1.0  # api/server_worker.py
TRICKLE_EVERY_S = 0.1


@pytest.fixture(scope="module")
def running(
    servers: Servers, worker_id: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, Api]]:
    workdir: Path = tmp_path_factory.mktemp("e2e-slow-clients")
    with one_web_process(
        servers,
        worker_id,
        workdir,
        "slow",
        WEB_REQUEST_HEAD_TIMEOUT_S=str(HEAD_TIMEOUT_S),
        WEB_SEND_TIMEOUT_S=str(SEND_TIMEOUT_S),
        WEB_REQUEST_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
    ) as running:
        yield running


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


class Trickle(Paced):
    """Sends one more byte of each connection's body every TRICKLE_EVERY_S, in a thread,
    for as long as the connection takes them: a client on a very slow link, or one that
    means to hold the server."""

    every_s = TRICKLE_EVERY_S

    def __init__(self, sockets: list[socket.socket], next_byte: bytes) -> None:
        super().__init__()
        self.live = list(sockets)
        self.next_byte = next_byte

    def step(self) -> bool:
        for sock in list(self.live):
            try:
                sock.send(self.next_byte)
            except OSError:  # closed by the server
                self.live.remove(sock)
        return True


def _slow_bodies(api: Api, count: int, *, chunked: bool) -> list[socket.socket]:
    """`count` connections, each with a submit's head and the first bytes of its body sent:
    a valid submit, once the padding after it has come (1,000 spaces, or chunks of one
    space until a last chunk: never, here)."""
    agent_id = api.create_echo_agent(0)
    body = json.dumps({"agent_id": agent_id, "input": {"text": "slow"}})
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body) + 1000}"
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api.token}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    )
    first = f"{len(body):x}\r\n{body}\r\n" if chunked else body
    sockets = [_connect(api) for _ in range(count)]
    for sock in sockets:
        sock.sendall(head.encode() + first.encode())
    return sockets


def _answer(sock: socket.socket) -> bytes:
    """What the server sent on a connection it has closed (a reset may come after it)."""
    sock.setblocking(True)
    sock.settimeout(5)
    received = b""
    with contextlib.suppress(OSError):
        while data := sock.recv(65536):
            received += data
    return received


def _job_count(api: Api) -> int:
    reply = api.get("/v1/jobs?limit=100")
    assert reply.status == 200, reply
    return len(reply.body["items"])


def test_a_body_sent_slowly_is_cut_at_its_deadline(running: tuple[Stack, Api]) -> None:
    """gunicorn waited for each byte of a body for as long as the client kept sending them:
    more such submits than threads (each holding an admission slot, or read by a
    turn-away) starved the process for good. Past WEB_REQUEST_BODY_TIMEOUT_S each is
    answered 408 (or 503, turned away) and closed, the others are served again, and no
    job is made of a body that never came whole."""
    stack, api = running
    jobs_before = _job_count(api)
    slow = _slow_bodies(api, THREADS + 8, chunked=False)
    try:
        with Trickle(slow, b" ") as trickle:
            # Every thread is taken: the first wave ends after its deadline and a linger.
            assert _answers_within(api, 15) < BODY_TIMEOUT_S + CLOSE_LINGER_S + 2
            poll(lambda: not trickle.live, timeout=2 * (BODY_TIMEOUT_S + 2) + 5)
            assert _job_count(api) == jobs_before
        answers = [_answer(sock) for sock in slow]
    finally:
        for sock in slow:
            sock.close()
    statuses = sorted({answer[:12] for answer in answers})
    assert statuses == [b"HTTP/1.1 408", b"HTTP/1.1 503"], statuses
    timed_out = next(answer for answer in answers if answer.startswith(b"HTTP/1.1 408"))
    assert b"Connection: close" in timed_out and b"/problems/request-timeout" in timed_out
    assert stack.log_count("web*", "request.body_too_slow") > 0
    assert api.get("/v1/jobs?limit=1").status == 200  # a slot for a normal client


def test_a_chunked_body_trickled_is_cut_too(running: tuple[Stack, Api]) -> None:
    """A chunked body has no length to wait for: its chunks, one byte each, came for ever."""
    _, api = running
    jobs_before = _job_count(api)
    started = time.monotonic()
    (slow,) = _slow_bodies(api, 1, chunked=True)
    try:
        with Trickle([slow], b"1\r\n \r\n") as trickle:
            poll(lambda: not trickle.live, timeout=BODY_TIMEOUT_S + CLOSE_LINGER_S + 5)
            took = time.monotonic() - started
        answer = _answer(slow)
    finally:
        slow.close()
    assert BODY_TIMEOUT_S <= took < BODY_TIMEOUT_S + CLOSE_LINGER_S + 2, took
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert _job_count(api) == jobs_before


def test_a_long_poll_outlasts_the_body_deadline(running: tuple[Stack, Api]) -> None:
    """The deadline ends with the body: a request that has read its body may wait much
    longer (no worker runs here, so the job stays queued for the whole wait)."""
    _, api = running
    agent_id = api.create_echo_agent(0)
    job_id = api.submit(agent_id, "waits").body["id"]
    started = time.monotonic()
    reply = api.get(f"/v1/jobs/{job_id}?wait={2 * BODY_TIMEOUT_S + 1:g}", timeout=20)
    assert reply.status == 200, reply
    assert reply.body["status"] == "queued"
    assert time.monotonic() - started >= 2 * BODY_TIMEOUT_S + 1


def test_clients_that_ask_for_a_close_and_keep_the_connection_stall_nobody(
    running: tuple[Stack, Api],
) -> None:
    """gunicorn waited for each connection it closed to be closed by its client too, up to
    2 s, on its main loop and one after the other: 10 clients that asked for `Connection:
    close` and kept the connection open held every new request for 20 s."""
    _, api = running
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with _connections(api, 10, request) as held:
        for _ in range(3):
            assert _answers_within(api, 30) < 1.0
        poll(lambda: all(_closed_by_the_server(sock) for sock in held), timeout=CLOSE_LINGER_S + 5)


def _waiting(api: Api) -> float:
    metrics = api.get("/metrics", headers={"Accept": "text/plain"}).body
    return prom.value(prom.parse(metrics), "conveyor_waiting_requests")


def _tail_request(api: Api, stream: str) -> bytes:
    return (
        f"GET /v1/streams/{stream}/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream"
        f"\r\nAuthorization: Bearer {api.token}\r\n\r\n"
    ).encode()


def _big_stream(api: Api, stream: str) -> None:
    """7 MB of events: more than the loopback buffers hold and a slow client takes."""
    big = {"events": [{"type": "big", "data": {"x": "z" * 60_000}} for _ in range(30)]}
    for _ in range(4):
        assert api.post(f"/v1/streams/{stream}/events", big).status == 201


def _open_tail(api: Api, stream: str) -> socket.socket:
    """A tail's connection whose client's receive buffer is small (set before connecting,
    so the window is scaled for it): its window closes after a few KB, so the server
    waits on what the client reads."""
    host, port = api.base_url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((host, int(port)))
    sock.sendall(_tail_request(api, stream))
    return sock


def test_a_live_tail_read_slowly_is_kept_past_the_send_timeout(
    running: tuple[Stack, Api],
) -> None:
    """A client that takes 2 KB every 0.1 s, slower than the tail sends but steadily: each
    chunk (an event of 60 KB) takes it 3 s, and a deadline per chunk cut it every send
    timeout (it reconnected and was cut again, for ever). It acknowledges bytes every
    ~0.3 s, so it keeps its tail."""
    stack, api = running
    poll(lambda: _waiting(api) == 0, timeout=10)
    _big_stream(api, "read-slowly")
    cut_before = stack.log_count("web*", "response.send_timed_out")
    sock = _open_tail(api, "read-slowly")
    received = 0
    started = time.monotonic()
    try:
        while time.monotonic() - started < 4 * SEND_TIMEOUT_S:
            data = sock.recv(2048)
            assert data, f"the tail was cut after {time.monotonic() - started:.1f} s"
            received += len(data)
            time.sleep(0.1)  # the client's pace, not a wait for the server
        assert _waiting(api) == 1
    finally:
        sock.close()
    assert received < 200_000  # the tail was slowed by the client, all along
    assert stack.log_count("web*", "response.send_timed_out") == cut_before
    poll(lambda: _waiting(api) == 0, timeout=5)


def test_a_live_tail_not_read_is_cut_after_the_send_timeout(
    running: tuple[Stack, Api],
) -> None:
    """The same tail, its client reading nothing: it acknowledges nothing past the first
    few KB, and the tail gives its slot back once the send timeout has passed so."""
    stack, api = running
    poll(lambda: _waiting(api) == 0, timeout=10)
    _big_stream(api, "unread")
    cut_before = stack.log_count("web*", "response.send_timed_out")
    started = time.monotonic()
    sock = _open_tail(api, "unread")
    try:
        poll(lambda: stack.log_count("web*", "response.send_timed_out") > cut_before, timeout=20)
        took = time.monotonic() - started
        poll(lambda: _closed_by_the_server(sock), timeout=5)
    finally:
        sock.close()
    assert SEND_TIMEOUT_S <= took < 3 * SEND_TIMEOUT_S + 2, took
    poll(lambda: _waiting(api) == 0, timeout=5)


def test_a_tail_whose_client_stopped_reading_ends_while_it_waits_for_events(
    running: tuple[Stack, Api],
) -> None:
    """120 KB fit in the kernel's buffers (under TCP_NOTSENT_LOWAT), so the tail is not
    blocked in a send: it waits for the next event, and its client, alive, advertises a
    zero window. Nothing ended it before MAX_STREAM_S (300 s; a keepalive of 14 bytes a
    quarter-minute fits too). Its wait now looks at what the client acknowledged too."""
    stack, api = running
    poll(lambda: _waiting(api) == 0, timeout=10)
    events = {"events": [{"type": "big", "data": {"x": "s" * 60_000}} for _ in range(2)]}
    assert api.post("/v1/streams/stalled/events", events).status == 201
    cut_before = stack.log_count("web*", "response.send_timed_out")
    sock = _open_tail(api, "stalled")
    try:
        poll(lambda: _waiting(api) == 1, timeout=5)
        poll(lambda: _waiting(api) == 0, timeout=5 + 4 * SEND_TIMEOUT_S)
    finally:
        sock.close()
    assert stack.log_count("web*", "response.send_timed_out") > cut_before


@pytest.mark.skipif(available() is not None, reason=str(available()))
def test_a_client_gone_without_a_word_frees_its_tails_slot(running: tuple[Stack, Api]) -> None:
    """A client whose network is cut sends no FIN and no reset; the tail's next event is
    never acknowledged, and the kernel retransmitted it for 15 minutes or so
    (tcp_retries2), past MAX_STREAM_S: the slot was held that long. With TCP_USER_TIMEOUT
    the kernel gives up after the send timeout, and the tail sees the connection gone."""
    _, api = running
    poll(lambda: _waiting(api) == 0, timeout=10)
    port = int(api.base_url.rsplit(":", 1)[1])
    with vanishing_peer() as peer, peer.request(port, _tail_request(api, "vanishing")) as status:
        assert status.startswith("HTTP/1.1 200")
        assert _waiting(api) == 1
        peer.cut()
        one = {"events": [{"type": "tick", "data": {}}]}
        assert api.post("/v1/streams/vanishing/events", one).status == 201
        poll(lambda: _waiting(api) == 0, timeout=5 + 4 * SEND_TIMEOUT_S)

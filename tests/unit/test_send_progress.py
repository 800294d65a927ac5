"""A followed connection's sends, bounded by what its client acknowledges
(api/send_bounds.py, api/tcp_info.py), over real TCP connections on loopback: a client that
takes nothing is cut after the timeout, one that takes a little at a time is not, one that
has taken everything is never stalled however long nothing is sent."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator

import pytest
from gunicorn import util as gunicorn_util

from api import send_bounds, tcp_info
from tests.helpers import Paced, poll

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="TCP_INFO is Linux's")

SECONDS = 1.0
# A client's receive buffer this small makes the server's window close after a few KB; a
# client taking 2 KB every 0.1 s from it reopens it often (acknowledgements ~0.3 s apart).
CLIENT_RCVBUF = 4096
TAKE_BYTES = 2048
TAKE_EVERY_S = 0.1
CHUNK = b"e" * 65536


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(server's end, client's end) of one TCP connection, the client's buffer small."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    send_bounds.bound(server, SECONDS)
    try:
        yield server, client
    finally:
        send_bounds.unfollow(server)
        server.close()
        client.close()


def _sent(sock: socket.socket) -> tcp_info.Sent:
    sent = tcp_info.sent(sock)
    assert sent is not None
    return sent


def _option(sock: socket.socket, name: int) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, name)


def _fill(sock: socket.socket) -> int:
    """Write without blocking until the kernel takes no more; the bytes it took."""
    sock.setblocking(False)
    taken = 0
    try:
        while True:
            taken += sock.send(CHUNK)
    except BlockingIOError:
        return taken
    finally:
        sock.setblocking(True)


class SlowReader(Paced):
    """Takes TAKE_BYTES every TAKE_EVERY_S from the client's end, in a thread."""

    every_s = TAKE_EVERY_S

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    def step(self) -> bool:
        return bool(self.sock.recv(TAKE_BYTES))


def test_the_kernel_tells_what_the_client_acknowledged(connection) -> None:
    server, _ = connection
    assert _sent(server) == tcp_info.Sent(acked=0, waiting=False)
    server.sendall(b"x" * 1000)
    # Acknowledged once in the client's kernel, read by the client or not.
    assert poll(lambda: _sent(server) == tcp_info.Sent(acked=1000, waiting=False), timeout=5)
    taken = _fill(server)
    assert taken > 100_000
    sent = _sent(server)
    assert sent.waiting and sent.acked < 1000 + taken


def test_a_client_that_takes_nothing_is_stalled_after_the_timeout(connection) -> None:
    server, _ = connection
    progress = send_bounds.follow(server, SECONDS)
    assert progress is not None
    started = time.monotonic()
    _fill(server)
    with pytest.raises(send_bounds.Stalled):
        poll(lambda: progress.check(), timeout=SECONDS + 5, interval=0.05)
    assert SECONDS <= time.monotonic() - started < SECONDS + 2


def test_a_client_that_has_taken_everything_is_never_stalled(connection) -> None:
    server, client = connection
    progress = send_bounds.follow(server, SECONDS)
    assert progress is not None
    server.sendall(b"x" * 1000)
    assert client.recv(1000)
    deadline = time.monotonic() + 3 * SECONDS
    while time.monotonic() < deadline:  # a quiet tail: nothing to send for a while
        progress.check()
        time.sleep(0.1)


def test_a_send_to_a_client_taking_a_little_at_a_time_goes_on_past_the_timeout(
    connection,
) -> None:
    """A chunk's deadline cut this client: 64 KB chunks at 20 KB/s take 3 s each."""
    server, client = connection
    send_bounds.follow(server, SECONDS)
    write = send_bounds.ChunkSender(SECONDS).write
    started = time.monotonic()
    with SlowReader(client):
        while time.monotonic() - started < 4 * SECONDS:
            write(server, CHUNK, chunked=True)


def test_a_streams_last_chunk_waits_for_a_slow_client_too(connection, monkeypatch) -> None:
    """gunicorn sends a stream's last chunk itself (`util.write_chunk`), past `util.write`:
    behind a full buffer its 5 bytes wait for the unsent bytes to fall under
    TCP_NOTSENT_LOWAT, longer than SO_SNDTIMEO when the client reads slowly."""
    server, client = connection
    send_bounds.follow(server, SECONDS)
    for name in ("write", "write_chunk"):  # given back after the test
        monkeypatch.setattr(gunicorn_util, name, getattr(gunicorn_util, name))
    send_bounds.install_chunk_deadline(SECONDS)
    _fill(server)
    with SlowReader(client):
        started = time.monotonic()
        gunicorn_util.write_chunk(server, b"")
    assert time.monotonic() - started > SECONDS  # it did wait on the client


def test_a_send_to_a_client_taking_nothing_is_cut_after_the_timeout(connection) -> None:
    server, _ = connection
    send_bounds.follow(server, SECONDS)
    write = send_bounds.ChunkSender(SECONDS).write
    started = time.monotonic()
    with pytest.raises(send_bounds.Stalled):
        for _ in range(200):  # 13 MB: more than any buffer takes
            write(server, CHUNK, chunked=True)
    assert SECONDS <= time.monotonic() - started < SECONDS + 2


def test_following_keeps_the_unsent_bytes_small_and_drops_the_user_timeout(
    connection,
) -> None:
    """Unfollowed, the kernel took megabytes for a client that reads nothing (its send
    buffer grows on loopback); followed, about TCP_NOTSENT_LOWAT."""
    server, _ = connection
    user_timeout_ms = round(SECONDS * 1000)
    assert _option(server, socket.TCP_USER_TIMEOUT) == user_timeout_ms
    send_bounds.follow(server, SECONDS)
    assert _option(server, socket.TCP_USER_TIMEOUT) == 0
    assert _option(server, socket.TCP_NOTSENT_LOWAT) == send_bounds.NOTSENT_LOWAT_BYTES
    taken = _fill(server)
    assert taken < 2 * send_bounds.NOTSENT_LOWAT_BYTES + 64 * 1024, taken
    send_bounds.unfollow(server)
    assert _option(server, socket.TCP_USER_TIMEOUT) == user_timeout_ms
    assert _option(server, socket.TCP_NOTSENT_LOWAT) == 0


def test_an_unfollowed_chunk_keeps_its_deadline(connection) -> None:
    server, client = connection
    write = send_bounds.ChunkSender(SECONDS).write
    with SlowReader(client), pytest.raises(TimeoutError):
        for _ in range(200):
            write(server, CHUNK, chunked=True)

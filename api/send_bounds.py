"""How long a client may leave what we send it untaken (`WEB_SEND_TIMEOUT_S`).

Every connection, from its accept (`bound`):
- `SO_SNDTIMEO` bounds one `send`: a thread blocked in `sendall` for a client that does
  not read was held for good, with the answer's memory.
- A chunk of a streamed answer gets the same time for its whole send. `sendall` calls
  `send` again after every partial send, so each time a client's window opened a little,
  `SO_SNDTIMEO` began again: an SSE tail that was never read held its waiting slot ~70 s
  with a 30 s timeout. With a socket timeout set, Python's `sendall` keeps one deadline
  for all its sends (since 3.5) and raises TimeoutError, which ends the answer as a
  `SO_SNDTIMEO` failure does. Only chunked answers (the streams) get it: a plain answer's
  page, up to `PAGE_MAX_BYTES` in one write, would need a client that takes 140 KB/s; it
  ends with its last byte anyway, where a stream never does.
- `TCP_USER_TIMEOUT` (Linux): the kernel drops a connection whose sent bytes stay
  unacknowledged that long, or stay unsent behind a zero window (in recent kernels, even
  when the client acknowledges the window probes; seen on 6.18). A client gone without a
  FIN or a reset (a cut network, a machine switched off) loses its connection. Connections
  that send nothing while they wait (long-polls, idle keep-alive ones) are not affected:
  no byte is outstanding.

A live tail, while it holds its slot, is `follow`ed instead (Linux, where `TCP_INFO` tells
what the client acknowledged): it is cut only once its client has acknowledged none of
our bytes for `WEB_SEND_TIMEOUT_S` while some wait for it (`Progress`), in a send or
between events. A deadline per chunk cut a client that reads steadily but slower than a
chunk a timeout (under ~45 KB/s on loopback, every 30 s), and so did `TCP_USER_TIMEOUT`
behind a window that only a slow reader keeps reopening; so it is off meanwhile.
`TCP_NOTSENT_LOWAT` keeps what the kernel holds unsent for the tail small: a tail never
read pinned the whole send buffer (megabytes on loopback) until it was cut.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
import weakref
from collections.abc import Callable, Iterator

from gunicorn import util as gunicorn_util

from api import tcp_info

# Not in every platform's socket module (macOS has none): there, only the other bounds.
_TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", None)
# What a followed connection lets the kernel hold unsent: a blocked send, and `poll`,
# wait until less than this is left (half of it, for `poll`).
NOTSENT_LOWAT_BYTES = 128 * 1024
# How often a followed send, blocked, looks at what the client acknowledged.
CHECK_EVERY_S = 1.0


def bound(sock: socket.socket, seconds: float) -> None:
    """Set the per-send and the unacknowledged-data bounds on an accepted connection."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(seconds))
    _set_user_timeout(sock, seconds)


class Stalled(TimeoutError):
    """The client acknowledged none of our bytes for the send timeout while some waited:
    a TimeoutError, so the server ends the answer as for any send past its time."""


class Progress:
    """What a connection's client has acknowledged (`tcpi_bytes_acked`), and since when it
    has acknowledged nothing while bytes of ours waited for it. A client that has taken
    everything is not stalled, however long the tail stays quiet."""

    def __init__(self, sock: socket.socket, seconds: float, first: tcp_info.Sent) -> None:
        self.sock = sock
        self.seconds = seconds
        self._acked = first.acked
        self._since = time.monotonic()

    def check(self) -> None:
        """Raise `Stalled` once the client has taken nothing for `seconds`."""
        now = time.monotonic()
        sent = tcp_info.sent(self.sock)
        if sent is None or sent.acked != self._acked or not sent.waiting:
            self._acked = sent.acked if sent is not None else self._acked
            self._since = now
        elif now - self._since >= self.seconds:
            raise Stalled(f"the client took nothing for {now - self._since:.1f} s")


# Each of its operations is one dict operation, atomic under the GIL: no lock needed.
_followed: weakref.WeakKeyDictionary[socket.socket, Progress] = weakref.WeakKeyDictionary()


def follow(sock: socket.socket, seconds: float) -> Progress | None:
    """Bound `sock`'s sends by the client's progress from now on (see the module's
    docstring); None where the kernel does not tell it, and the usual bounds stay."""
    first = tcp_info.sent(sock)
    if first is None:
        return None
    progress = Progress(sock, seconds, first)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, NOTSENT_LOWAT_BYTES)
    _set_user_timeout(sock, 0)  # 0: the kernel's default, no such bound
    _followed[sock] = progress
    return progress


def unfollow(sock: socket.socket) -> None:
    """Back to the connection's usual bounds (a keep-alive connection serves on)."""
    progress = _followed.pop(sock, None)
    if progress is None:
        return
    with contextlib.suppress(OSError):  # a connection already reset
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, 0)  # 0: the sysctl's
        _set_user_timeout(sock, progress.seconds)


@contextlib.contextmanager
def following(sock: socket.socket | None, seconds: float) -> Iterator[Callable[[], None]]:
    """`follow` for as long as the block lasts; gives the check to call while nothing is
    being sent (a tail waiting for events), which raises `Stalled`. Without a socket (the
    test client) or `TCP_INFO`, a check that never raises."""
    progress = follow(sock, seconds) if sock is not None else None
    if progress is None:
        yield _unchecked
        return
    try:
        yield progress.check
    finally:
        unfollow(progress.sock)


def _unchecked() -> None:
    pass


class ChunkSender:
    """gunicorn's `util.write`, with `seconds` for each chunk of a chunked answer, and a
    followed connection's sends bounded by its client's progress instead."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def write(self, sock: socket.socket, data: bytes, chunked: bool = False) -> None:
        if not chunked:  # every plain answer: nothing to look up (tails are chunked)
            sock.sendall(data)
            return
        framed = b"%X\r\n%s\r\n" % (len(data), data)
        progress = _followed.get(sock)
        if progress is not None:
            _send_while_taken(sock, framed, progress)
        else:
            _send_within(sock, framed, self.seconds)

    def write_chunk(self, sock: socket.socket, data: bytes) -> None:
        """gunicorn's `util.write_chunk`, which sends a stream's last (empty) chunk."""
        self.write(sock, data, chunked=True)


def _send_within(sock: socket.socket, data: bytes, seconds: float) -> None:
    blocking = sock.gettimeout()
    sock.settimeout(seconds)
    try:
        sock.sendall(data)
    finally:
        sock.settimeout(blocking)


def _send_while_taken(sock: socket.socket, data: bytes, progress: Progress) -> None:
    """Send all of `data` for as long as the client keeps acknowledging some of it."""
    blocking = sock.gettimeout()
    sock.settimeout(min(CHECK_EVERY_S, progress.seconds / 4))
    try:
        left = memoryview(data)
        while left:
            try:
                left = left[sock.send(left) :]
            except TimeoutError:
                progress.check()
    finally:
        sock.settimeout(blocking)


def install_chunk_deadline(seconds: float) -> None:
    """gunicorn's responses look `util.write` up on each write, and `util.write_chunk` for
    a stream's last chunk: from now on they use ours. A tail that ended (`MAX_STREAM_S`)
    to a slow reader sent its last chunk with `SO_SNDTIMEO` alone, and was reset when the
    kernel took the 5 bytes only after its unsent bytes fell under TCP_NOTSENT_LOWAT."""
    sender = ChunkSender(seconds)
    gunicorn_util.write = sender.write
    gunicorn_util.write_chunk = sender.write_chunk


def _set_user_timeout(sock: socket.socket, seconds: float) -> None:
    if _TCP_USER_TIMEOUT is not None:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT, round(seconds * 1000))


def _timeval(seconds: float) -> bytes:
    """A `struct timeval`, as SO_SNDTIMEO takes it."""
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))

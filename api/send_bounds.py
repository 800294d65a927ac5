"""How long a client may leave what we send it untaken (`WEB_SEND_TIMEOUT_S`), three ways.

- `SO_SNDTIMEO` bounds one `send`: a thread blocked in `sendall` for a client that does
  not read was held for good, with the answer's memory.
- A chunk of a streamed answer gets the same time for its whole send. `sendall` calls
  `send` again after every partial send, so each time a client's window opened a little,
  `SO_SNDTIMEO` began again: an SSE tail that was never read held its waiting slot ~70 s
  with a 30 s timeout (the kernel's send buffer still grows for a while), and a client that
  took 8 KB every 0.1 s held its slot until `MAX_STREAM_S`. With a socket timeout set,
  Python's `sendall` keeps one deadline for all its sends (since 3.5) and raises
  TimeoutError, which ends the answer as a `SO_SNDTIMEO` failure does. Only chunked answers
  (the streams) get it: their chunks are single events (64 KB of data at most), while a
  plain answer's page, up to `PAGE_MAX_BYTES` in one write, would need a client that
  takes 140 KB/s; it ends with its last byte anyway, where a stream never does.
- `TCP_USER_TIMEOUT` (Linux): the kernel drops a connection whose sent bytes stay
  unacknowledged that long, or stay unsent behind a zero window (in recent kernels, even
  when the client acknowledges the window probes; seen on 6.18). A client gone without a
  FIN or a reset (a cut network, a machine switched off) held its tail's slot until
  `MAX_STREAM_S`; now the next event or keepalive it does not acknowledge ends it, and so
  does a tail whose client stopped reading while the tail itself waits for events (not
  blocked in a send). Connections that send nothing while they wait (long-polls, idle
  keep-alive ones) are not affected: no byte is outstanding.
"""

from __future__ import annotations

import socket
import struct

from gunicorn import util as gunicorn_util

# Not in every platform's socket module (macOS has none): there, only the other two bounds.
_TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", None)


def bound(sock: socket.socket, seconds: float) -> None:
    """Set the per-send and the unacknowledged-data bounds on an accepted connection."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(seconds))
    if _TCP_USER_TIMEOUT is not None:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT, round(seconds * 1000))


class ChunkSender:
    """gunicorn's `util.write`, with `seconds` for each chunk of a chunked answer."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def write(self, sock: socket.socket, data: bytes, chunked: bool = False) -> None:
        if not chunked:
            sock.sendall(data)
            return
        framed = b"%X\r\n%s\r\n" % (len(data), data)
        blocking = sock.gettimeout()
        sock.settimeout(self.seconds)
        try:
            sock.sendall(framed)
        finally:
            sock.settimeout(blocking)


def install_chunk_deadline(seconds: float) -> None:
    """gunicorn's responses look `util.write` up on each write: from now on they use ours."""
    gunicorn_util.write = ChunkSender(seconds).write


def _timeval(seconds: float) -> bytes:
    """A `struct timeval`, as SO_SNDTIMEO takes it."""
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))

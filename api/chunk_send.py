"""A deadline on the whole send of each chunk of a streamed answer, not on each syscall.

`SO_SNDTIMEO` (api/server_worker.py) bounds one `send`, and `sendall` calls `send` again
after every partial send: each time a client's window opened a little, the timeout began
again. An SSE tail that was never read held its waiting slot ~70 s with a 30 s timeout (the
kernel's send buffer still grows for a while), and a client that read 2 KB every 0.1 s held
its slot until `MAX_STREAM_S`. With a socket timeout set, Python's `sendall` keeps one
deadline for all its sends (since 3.5), so a chunk not taken within `WEB_SEND_TIMEOUT_S`
fails with TimeoutError, which ends the answer as a `SO_SNDTIMEO` failure does.

Only chunked answers (the streams) get it: their chunks are single events (64 KB of data at
most), while a page of a plain answer, up to `PAGE_MAX_BYTES` in one write, would need a
client reading 140 KB/s to be taken in 30 s. Those keep the per-send bound: their end
comes with their last byte, a stream's never does.
"""

from __future__ import annotations

import socket

from gunicorn import util as gunicorn_util


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


def install(seconds: float) -> None:
    """gunicorn's responses look `util.write` up on each write: from now on they use ours."""
    gunicorn_util.write = ChunkSender(seconds).write

"""A deadline on the arrival of a request's body.

gunicorn reads a body as the application asks for it, one `recv` at a time, each allowed
to wait for ever: a client that sent its head and then a byte now and then held a thread
and an admission slot for as long as it kept at it. The server worker (api/server_worker.py)
hands gunicorn's body reader a `DeadlineSocket` for the time of each request: every `recv`
waits at most until the request's deadline, counted from when its head was read, and past
it the read raises `BodyTimedOut`, a 408 (RFC 9110 15.5.9).

Only reads of the body wait on it. Once the body is in (its Content-Length, or the chunked
terminator) nothing reads the socket any more until the answer is sent, so a long-poll or a
live tail that has read its body waits as long as it likes.
"""

from __future__ import annotations

import socket
import time

from werkzeug.exceptions import RequestTimeout


class BodyTimedOut(RequestTimeout):
    """The body did not arrive by its deadline. An HTTP error, not an OSError: werkzeug
    turns an OSError from the input stream into a 400 "client disconnected"."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            f"The request body did not arrive within {timeout_s:g} s; the connection is "
            "closed. Send it again, at once (or through a proxy that buffers it)."
        )


class DeadlineSocket:
    """What gunicorn's body reader reads from instead of the connection's socket: the
    same socket, with every `recv` bounded by the time left until `deadline`."""

    def __init__(self, sock: socket.socket, *, timeout_s: float) -> None:
        self.sock = sock
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.expired = False

    def recv(self, size: int) -> bytes:
        # Past the deadline, bytes already received are still taken (a body that arrived
        # in time but was read late, after an admission wait); only waiting is refused.
        left = max(0.0, self.deadline - time.monotonic())
        self.sock.settimeout(left)
        try:
            return self.sock.recv(size)
        except (TimeoutError, BlockingIOError):  # timeout > 0, and 0 (non-blocking)
            self.expired = True
            raise BodyTimedOut(self.timeout_s) from None
        finally:
            # Back to blocking: answers are sent with SO_SNDTIMEO, which a Python-level
            # timeout would replace.
            self.sock.settimeout(None)

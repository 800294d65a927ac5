"""Whether the client of a waiting request is still there.

A long-poll or an SSE tail holds one of the process's waiting slots (`MAX_WAITING_REQUESTS`)
until it ends. A client that closed its connection used to keep its slot until the wait was
over or the next keepalive write failed (15 to 30 s), so a burst of clients reconnecting
could find every slot held by their own dead connections. Waiters now look at the socket
every `CHECK_S` while they wait (one `poll` each) and give up when it is closed.

A connection counts as closed once the client's end of it is: a client that half-closes
after sending its request (rare in HTTP) would lose its answer. A connection that vanished
without a FIN or a reset cannot be seen this way: a tail's next event or keepalive goes
unacknowledged, and after `WEB_SEND_TIMEOUT_S` its progress check (api/send_bounds.py)
ends it; a long-poll's answer is dropped by the kernel after TCP_USER_TIMEOUT.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable
from functools import partial
from threading import Event

from flask import request

CHECK_S = 1.0

Gone = Callable[[], bool]


def client_socket() -> socket.socket | None:
    """The current request's connection; None from servers that do not hand the
    application their socket (the test client, the dev server)."""
    return request.environ.get("gunicorn.socket")


def watcher() -> Gone:
    """For the current request: whether its client has closed the connection. Without its
    socket: never."""
    sock = client_socket()
    return partial(_closed, sock) if sock is not None else _never


def wait_while_connected(changed: Event, timeout_s: float, gone: Gone) -> bool | None:
    """`changed.wait(timeout_s)`, looking at the client every CHECK_S: True when `changed`
    was set, False when the time ran out, None when the client has gone."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if changed.wait(max(0.0, min(left, CHECK_S))):
            return True
        if gone():
            return None
        if left <= CHECK_S:
            return False


def _never() -> bool:
    return False


def _closed(sock: socket.socket) -> bool:
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        events = poller.poll(0)
        if not events:
            return False
        if events[0][1] & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
            return True
        # Readable: either the end of the stream or bytes of a pipelined next request.
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except (OSError, ValueError):  # reset, or closed on our side already
        return True

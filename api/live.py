"""Live tails over SSE: read in short sessions, sleep on the notifier between reads.

An open tail holds no database connection. It closes after `max_s` (clients reconnect
with `Last-Event-ID`), and sends a keepalive comment when nothing happened for a while.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from threading import Event as Signal
from typing import Any

import structlog
from flask import Response
from sqlalchemy.exc import DBAPIError

from api import send_bounds
from api.disconnect import Gone, client_socket, wait_while_connected, watcher
from api.notifier import Busy, Notifier
from api.sse import KEEPALIVE, OPEN, frame, streaming_response
from services.errors import Overloaded

log = structlog.get_logger("conveyor.api")
# Set by the server when its process begins a graceful stop (api/server_worker.py): open
# tails end within a second, as when `max_s` is up, and their clients resume elsewhere with
# `Last-Event-ID`. They used to hold the stop for its whole `graceful_timeout`, then be cut.
STOPPING = Signal()
KEEPALIVE_S = 15.0
# Without the notifier's subscription (Redis away), re-read this often instead.
FALLBACK_POLL_S = 1.0
RECHECK_FIRST_S = 0.1
RECHECK_MAX_S = 3.2
# Rows a read asks for: PAGE_ROWS at first, then twice what the last page held (at least
# MIN_ROWS). A page bounded by bytes is sized row by row in PostgreSQL over all the rows
# asked for (services.pagination.bounded_rows): catching up on 60 KB events, each read
# sized 201 rows (12 MB of JSON text) to keep 17 of them.
PAGE_ROWS = 200
MIN_ROWS = 16


@dataclass(frozen=True)
class Page:
    """What one read found: frames as (id, event type, body), and whether the tail is over."""

    frames: list[tuple[int, str, Any]]
    ended: bool = False
    full: bool = False


# A page after the given cursor, of at most the given number of rows.
Reader = Callable[[int, int], Page]


def next_rows(page: Page) -> int:
    return min(PAGE_ROWS, max(MIN_ROWS, 2 * len(page.frames)))


def tail(
    read: Reader,
    changed: Signal,
    connected: Signal,
    gone: Gone,
    *,
    after: int,
    max_s: float,
    first: Page | None = None,
) -> Iterator[bytes]:
    """The stream's bytes; `first`, read before the response began, is its first page.
    A read that fails later (the database went away) ends the stream as `max_s` does, and
    the client resumes from its `Last-Event-ID`: the body used to stop without its last
    chunk, a broken response, and a traceback in the log."""
    deadline = time.monotonic() + max_s
    quiet_since = time.monotonic()
    # After an announcement the read may still find nothing (the feed holds back events
    # while an older transaction is open): look again soon, backing off, instead of
    # sleeping until the next announcement.
    recheck_s: float | None = None
    opened = False
    rows = PAGE_ROWS
    while True:
        if first is not None:
            page, first = first, None
        else:
            changed.clear()
            try:
                page = read(after, rows)
            except DBAPIError:
                log.warning("live.read_failed", after=after, exc_info=True)
                return
        rows = next_rows(page)
        for event_id, event_type, body in page.frames:
            after = event_id
            quiet_since = time.monotonic()
            opened = True
            yield frame(event_id, event_type, body)
        if page.ended:
            return
        if not opened:  # a tail resumed at the end, a quiet stream: answer now all the same
            opened = True
            yield OPEN
        if page.full:
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        if page.frames:
            recheck_s = None
        idle_s = KEEPALIVE_S if connected.is_set() else FALLBACK_POLL_S
        woke = wait_while_connected(changed, min(recheck_s or idle_s, remaining), gone)
        if woke is None:  # the client has gone, or the server stops: give the slot back now
            return
        if woke:
            recheck_s = RECHECK_FIRST_S
        elif recheck_s is not None:
            recheck_s = recheck_s * 2 if recheck_s < RECHECK_MAX_S else None
        if time.monotonic() - quiet_since >= KEEPALIVE_S:
            quiet_since = time.monotonic()
            yield KEEPALIVE


def open_tail(
    notifier: Notifier,
    key: str,
    read: Reader,
    *,
    after: int,
    max_s: float,
    send_timeout_s: float,
) -> Response:
    """An SSE response tailing `key`, holding one of the process's waiting slots until the
    client goes away, or acknowledges none of what it was sent for `send_timeout_s`
    (api/send_bounds.py, `follow`); 503 when every slot is taken."""
    slot = ExitStack()
    try:
        changed = slot.enter_context(notifier.watch(key))
    except Busy:
        raise Overloaded("too many open streams; try again shortly", retry_after_s=5) from None
    try:
        # Read once before answering: a database that is away is a 503 like for any request
        # (the first read used to fail inside the body, a 500 logged as a 200).
        changed.clear()
        first = read(after, PAGE_ROWS)
        check_taken = slot.enter_context(send_bounds.following(client_socket(), send_timeout_s))
    except BaseException:
        slot.close()
        raise
    client_gone = watcher()

    def gone() -> bool:
        # Between events too: a client that stopped reading (or vanished) while its bytes
        # fitted in the buffers leaves this tail waiting, not blocked in a send.
        check_taken()  # raises send_bounds.Stalled, which the server ends as a send timeout
        return STOPPING.is_set() or client_gone()

    stream = tail(read, changed, notifier.connected, gone, after=after, max_s=max_s, first=first)
    response = streaming_response(stream)
    response.call_on_close(slot.close)
    return response

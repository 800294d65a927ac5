"""A job's events as a live SSE stream that ends after the terminal event.

The stream reads in short sessions and sleeps on the notifier between reads, so an open
stream holds no database connection. It closes after `max_s` (clients reconnect with
`Last-Event-ID`), and sends a keepalive comment when nothing happened for a while.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from threading import Event as Signal

from sqlalchemy.orm import Session, sessionmaker

from api.representations import event_json
from api.sse import KEEPALIVE, frame
from services import jobs
from services.event_types import TERMINAL_JOB_EVENTS

KEEPALIVE_S = 15.0
PAGE = 200


def job_events(
    session_factory: sessionmaker[Session],
    changed: Signal,
    connected: Signal,
    *,
    owner_id: uuid.UUID,
    job_id: uuid.UUID,
    after_version: int,
    max_s: float,
) -> Iterator[bytes]:
    deadline = time.monotonic() + max_s
    last = after_version
    quiet_since = time.monotonic()
    while True:
        changed.clear()
        with session_factory() as session:
            events = jobs.events(
                session, owner_id=owner_id, job_id=job_id, from_version=last + 1, limit=PAGE
            )
            ended = not events and jobs.is_terminal(
                jobs.get(session, owner_id=owner_id, job_id=job_id).status
            )
        for event in events:
            last = event.version
            quiet_since = time.monotonic()
            yield frame(event.version, event.type, event_json(event))
            if event.type in TERMINAL_JOB_EVENTS:
                return
        if ended:
            return
        if len(events) == PAGE:
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        # Without the notifier's subscription (Redis away), re-read every second instead.
        changed.wait(min(KEEPALIVE_S if connected.is_set() else 1.0, remaining))
        if time.monotonic() - quiet_since >= KEEPALIVE_S:
            quiet_since = time.monotonic()
            yield KEEPALIVE

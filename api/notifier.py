"""One Redis subscription per web process that wakes every request waiting on a change.

Long-polls and live tails register the key they wait on (`job:<id>`, `events:<owner>`) and
sleep on an Event; a single
listener thread receives the announcements workers publish after each commit and sets the
events. Waiting requests hold no database connection and no Redis connection of their own.

`slots` bounds how many requests of this process may wait at once, so waiting clients
can never take every thread from short requests such as submits.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import redis
import structlog

from services.after_commit import CHANNEL_PREFIX, channel
from telemetry.prometheus import WAITING_REFUSED, WAITING_REQUESTS

log = structlog.get_logger("conveyor.api")
_PATTERN = channel("*")
_PREFIX_LENGTH = len(CHANNEL_PREFIX)


class Busy(Exception):
    """Every waiting slot of this process is taken."""


class Notifier:
    def __init__(self, client: redis.Redis, *, slots: int) -> None:
        self._client = client
        self._slots = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = defaultdict(set)
        self._pid: int | None = None
        # Set while the listener is subscribed; waiters poll more often when it is not.
        self.connected = threading.Event()
        self._closed = threading.Event()

    @contextmanager
    def watch(self, key: str) -> Iterator[threading.Event]:
        """An Event set whenever `key` changes; raises `Busy` when no slot is free."""
        if not self._slots.acquire(blocking=False):
            WAITING_REFUSED.inc()
            raise Busy
        WAITING_REQUESTS.inc()
        self._ensure_listener()
        event = threading.Event()
        with self._lock:
            self._waiters[key].add(event)
        try:
            yield event
        finally:
            with self._lock:
                self._waiters[key].discard(event)
                if not self._waiters[key]:
                    del self._waiters[key]
            self._slots.release()
            WAITING_REQUESTS.dec()

    def _ensure_listener(self) -> None:
        # Started lazily, and again after a fork: threads do not survive into a child.
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            threading.Thread(target=self._listen, name="job-notifier", daemon=True).start()

    def close(self) -> None:
        """Stop the listener (tests; a web process simply exits)."""
        self._closed.set()
        # Any announcement wakes the listener, which then sees it is closed.
        self._client.publish(channel(f"closing:{id(self)}"), "")

    def _listen(self) -> None:
        while not self._closed.is_set():
            pubsub = self._client.pubsub()
            try:
                pubsub.psubscribe(_PATTERN)
                for message in pubsub.listen():
                    if self._closed.is_set():
                        break
                    kind = message.get("type")
                    if kind == "pmessage":
                        self._wake(message["channel"][_PREFIX_LENGTH:].decode())
                    elif kind == "psubscribe":
                        self._subscribed()
            except Exception as error:
                # The listener must outlive any failure: waiters depend on it.
                if not self._closed.is_set():
                    log.warning("notifier.disconnected", error=type(error).__name__)
            finally:
                self.connected.clear()
                pubsub.close()
            # Whatever happened meanwhile is unknown: wake everyone to re-read.
            self._wake_all()
            self._closed.wait(1.0)

    def _subscribed(self) -> None:
        """Redis confirmed the subscription: the first, or redis-py's own after a lost
        connection. Announcements made before it reached nobody, among them changes that
        waiters read too early to see: every waiter reads again. Connected only from here:
        set when the PSUBSCRIBE was merely sent, it let a waiter that read before the
        subscription held sleep out its whole wait on a change already announced."""
        self.connected.set()
        self._wake_all()

    def _wake(self, key: str) -> None:
        with self._lock:
            for event in self._waiters.get(key, ()):
                event.set()

    def _wake_all(self) -> None:
        with self._lock:
            for events in self._waiters.values():
                for event in events:
                    event.set()

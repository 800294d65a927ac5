"""Small helpers shared by the tests."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery staple"
T = TypeVar("T")


def terminate_backend(database_url: str, pid: int) -> None:
    """Have PostgreSQL drop the connection of backend `pid`, as a server restart would, and
    wait until it is gone."""
    import psycopg

    libpq = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(libpq, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        poll(
            lambda: (
                admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
                is None
            ),
            interval=0.01,
        )


def waiting_for_locks(engine: Any, query_like: str = "%") -> int:
    """How many sessions of the engine's database wait for a lock, in a statement whose text
    is LIKE `query_like`."""
    from sqlalchemy import text

    with engine.connect() as connection:
        found = connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE :query_like"
            ),
            {"query_like": query_like},
        )
    return int(found or 0)


def age(session_factory: Any, job_id: Any, seconds: float) -> None:
    """As if the job had been submitted `seconds` earlier: its queue deadline moves with it."""
    from sqlalchemy import update

    from models import Job

    earlier = dt.timedelta(seconds=seconds)
    with session_factory.begin() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                created_at=Job.created_at - earlier,
                queue_deadline_at=Job.queue_deadline_at - earlier,
            )
        )


def queue_wait(session_factory: Any, job_id: Any) -> dt.timedelta:
    """How long the queued job may wait once it may run: from now, or from its backoff's end."""
    from sqlalchemy import func, select

    from models import Job

    runnable = func.greatest(func.now(), func.coalesce(Job.run_after, func.now()))
    with session_factory() as session:
        wait: dt.timedelta = session.scalar(
            select(Job.queue_deadline_at - runnable).where(Job.id == job_id)
        )
        return wait


def poll(check: Callable[[], T | None], *, timeout: float = 10.0, interval: float = 0.05) -> T:
    """Call `check` until it returns something truthy; fail when `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


class Paced:
    """A client acting at its own pace: `step()` every `every_s` seconds, in a thread, from
    the start of `with` to its end or until a step returns False."""

    every_s: float

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def step(self) -> bool:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):  # the client's pace, not a wait for a server
            if not self.step():
                return


class Clock:
    """A time source a test moves by hand (a gate's `clock`): windows roll over when the test
    says so, not when the wall clock does."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# A multiple of 600 s (so `WINDOWS_START + 50` is second 50 of a minute, of a 10 s window...),
# far from today: counters of tests that read the real time never share its windows.
WINDOWS_START = 600.0 * 2_900_000


def run_together(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run `work(i)` in `count` threads released at once; their results or exceptions."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(i: int) -> None:
        barrier.wait(timeout=10)
        try:
            results[i] = work(i)
        except Exception as error:
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    return results


@dataclass
class AuthClient:
    """A test client that sends one user's bearer token."""

    client: Any
    email: str
    tokens: dict[str, Any]

    @classmethod
    def register(cls, client: Any, email: str) -> AuthClient:
        response = client.post("/v1/auth/register", json={"email": email, "password": PASSWORD})
        assert response.status_code == 201, response.json
        response = client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert response.status_code == 200, response.json
        return cls(client, email, response.json)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens['access_token']}"}

    def get(self, url: str, **kwargs: Any) -> Any:
        return self.client.get(url, headers={**self.headers, **kwargs.pop("headers", {})}, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Any:
        return self.client.post(
            url, headers={**self.headers, **kwargs.pop("headers", {})}, **kwargs
        )

    def patch(self, url: str, **kwargs: Any) -> Any:
        return self.client.patch(
            url, headers={**self.headers, **kwargs.pop("headers", {})}, **kwargs
        )

    def delete(self, url: str, **kwargs: Any) -> Any:
        return self.client.delete(
            url, headers={**self.headers, **kwargs.pop("headers", {})}, **kwargs
        )

    def create_agent(self, **fields: Any) -> dict[str, Any]:
        body = {"name": "echo", "provider": "echo", **fields}
        response = self.post("/v1/agents", json=body)
        assert response.status_code == 201, response.json
        return response.json

    def submit(self, agent_id: str, text: str = "hello", **fields: Any) -> dict[str, Any]:
        body = {"agent_id": agent_id, "input": {"text": text}, **fields}
        response = self.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.json
        return response.json


def stream_versions(client: Any, stream: str) -> list[int]:
    """The versions of a stream's events, as its first page lists them."""
    return [e["version"] for e in client.get(f"/v1/streams/{stream}/events").json["items"]]


def sent_twice(client: Any, url: str, body: Any, headers: dict[str, str], status: int) -> Any:
    """POST the same request twice with its `Idempotency-Key` (in `headers`): both answer
    `status`, the second the first's bytes, marked replayed. The two responses."""
    first = client.post(url, json=body, headers=headers)
    second = client.post(url, json=body, headers=headers)
    assert first.status_code == second.status_code == status, first.json
    assert second.get_data() == first.get_data()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    return first, second


def every_item(client: Any, url: str, *, limit: int) -> list[dict[str, Any]]:
    """All items of a list, walked `limit` at a time by each page's `next_cursor`."""
    items: list[dict[str, Any]] = []
    cursor = None
    first = f"{url}{'&' if '?' in url else '?'}limit={limit}"
    while True:
        page = client.get(first + (f"&cursor={cursor}" if cursor else ""))
        assert page.status_code == 200, page.json
        items += page.json["items"]
        cursor = page.json["next_cursor"]
        if cursor is None:
            return items


POST_DOCUMENT = b"POST /v1/documents HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"


def answer(sock: socket.socket) -> http.client.HTTPResponse:
    """The next HTTP answer on a raw connection, body read."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.read()
    return response


def post_document_body(port: int, body: bytes, headers: bytes = b"") -> http.client.HTTPResponse:
    """POST `body` to /v1/documents of the server on 127.0.0.1:`port`, on a connection of
    its own, and its answer; the server may answer before it has read the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(POST_DOCUMENT + headers + b"Content-Length: %d\r\n\r\n" % len(body))
        with contextlib.suppress(OSError):  # it stopped reading: it has answered
            sock.sendall(body)
        return answer(sock)

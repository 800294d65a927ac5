"""Waiting slots in the real gunicorn worker: a long-poll or an SSE tail whose client
closed its connection gives its slot back within a check (api/disconnect.py), not when its
wait or its next keepalive write would have ended it.

One gunicorn process with two waiting slots and no Celery worker: jobs stay queued, so a
long-poll waits its whole time.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import Servers
from tests.helpers import poll
from tests.stack import Api, one_web_process

pytestmark = pytest.mark.e2e

SLOTS = 2


@pytest.fixture(scope="module")
def api(
    servers: Servers, worker_id: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    workdir: Path = tmp_path_factory.mktemp("e2e-waiting")
    with one_web_process(
        servers, worker_id, workdir, "waiting", MAX_WAITING_REQUESTS=str(SLOTS)
    ) as (_, api):
        yield api


def _open(api: Api, path: str, accept: str) -> socket.socket:
    """Send a GET on a raw connection and leave it waiting for the answer."""
    host, port = api.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: {accept}\r\n"
        f"Authorization: Bearer {api.token}\r\n\r\n".encode()
    )
    return sock


def _free_slots(api: Api, job: str) -> int:
    """How many waiting slots are free: that many concurrent long-polls of half a second
    wait it out, and the rest are answered at once (every slot taken). A long-poll that
    ends gives its slot back as it ends, so probing leaves none taken."""

    def had_a_slot(_: int) -> bool:
        started = time.monotonic()
        assert api.get(f"/v1/jobs/{job}?wait=0.5").status == 200
        return time.monotonic() - started >= 0.4

    with ThreadPoolExecutor(SLOTS) as pool:
        return sum(pool.map(had_a_slot, range(SLOTS)))


@pytest.mark.parametrize("kind", ["sse", "long-poll"])
def test_a_closed_client_gives_its_waiting_slot_back_promptly(api: Api, kind: str) -> None:
    job = api.submit(api.create_echo_agent(delay_ms=0), "waits").body["id"]
    poll(lambda: _free_slots(api, job) == SLOTS, timeout=10)
    holders = []
    try:
        for _ in range(SLOTS):
            if kind == "sse":  # the stream begins at once when it has a slot (503 if not)
                holders.append(_open(api, f"/v1/jobs/{job}/events", "text/event-stream"))
                assert holders[-1].recv(64).startswith(b"HTTP/1.1 200 ")
            else:  # a long-poll without a slot answers at once; with one, it waits 30 s
                holders.append(_open(api, f"/v1/jobs/{job}?wait=30", "application/json"))
                holders[-1].settimeout(2)
                with pytest.raises(TimeoutError):
                    holders[-1].recv(64)
        assert _free_slots(api, job) == 0
    finally:
        for sock in holders:
            sock.close()
    closed_at = time.monotonic()
    # Without the check the slots stayed taken for 15 s (SSE keepalive) or 30 s (the wait).
    poll(lambda: _free_slots(api, job) == SLOTS, timeout=5)
    assert time.monotonic() - closed_at < 5

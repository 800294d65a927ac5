"""Admission control in the real gunicorn worker (api/server_worker.py): the worker takes a
request's slot before the application runs and answers 503 itself when none comes in
time; the application takes that slot over, and every slot comes back, whether the
request was served or failed before the application's hooks. (A long-poll giving its
slot back while it waits is tests/security/test_admission.py's.)

One gunicorn process with one slot, so that every figure is this process's.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import prom
from tests.conftest import Servers
from tests.helpers import answer, post_document_body
from tests.stack import Api, stack_on

pytestmark = pytest.mark.e2e

TURNED_AWAY = "(turned away at admission)"  # api/server_worker.py's route label


@pytest.fixture(scope="module")
def api(
    servers: Servers, worker_id: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    workdir: Path = tmp_path_factory.mktemp("e2e-admission")
    budget_ms = "100"
    with stack_on(servers, worker_id, workdir, "admission") as scenario:
        stack = scenario.stack
        api = stack.start_web(
            WEB_CONCURRENCY="1",
            ADMISSION_SLOTS="1",
            ADMISSION_MAX_WAIT_MS=budget_ms,
            ADMISSION_BEHIND_WAIT_MS=budget_ms,
            ADMISSION_BEHIND_QUEUE="1",
        )
        with stack.logs_on_failure():
            api.sign_up()
            yield api
            stack.assert_no_server_errors()


def test_a_burst_past_the_one_slot_is_answered_by_the_server_and_every_slot_comes_back(
    api: Api,
) -> None:
    def twenty(_: int) -> list[tuple[int, str]]:
        answers = []
        for _ in range(20):
            reply = api.get("/v1/agents")
            answers.append(
                (reply.status, reply.body.get("type", "") if reply.status != 200 else "")
            )
        return answers

    with ThreadPoolExecutor(48) as pool:
        answers = Counter(a for part in pool.map(twenty, range(48)) for a in part)
    assert set(answers) <= {(200, ""), (503, "/problems/overloaded")}, answers
    assert answers[(503, "/problems/overloaded")] > 0, answers
    assert _turned_away(api) > 0  # answered by the worker, before the application
    # One at a time, each gets the slot: none was lost, and none was given back twice
    # (a bounded semaphore released twice raises, which would have been a 500).
    assert [api.get("/v1/agents").status for _ in range(10)] == [200] * 10


def test_a_request_that_fails_before_the_applications_hooks_gives_the_slot_back(
    api: Api,
) -> None:
    for _ in range(3):
        refused = _post_text(api, "/v1/jobs")  # 415 before admission's hook runs
        assert refused == 415
        assert api.get("/v1/agents").status == 200  # a lost slot would make this a 503


def test_a_large_body_turned_away_is_not_read_and_its_connection_is_closed(api: Api) -> None:
    """The worker read a turned-away request's whole body to keep the connection, however
    large, an endless chunked one for ever; now past 64 KiB it answers `Connection: close`."""
    host, port = api.base_url.removeprefix("http://").split(":")
    auth = f"Authorization: Bearer {api.token}\r\n".encode()
    with socket.create_connection((host, int(port)), timeout=10) as holder:
        # A chunked body that does not come: its request holds the one slot while the
        # application waits to read it.
        holder.sendall(
            b"POST /v1/documents HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
            + auth
            + b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n"
        )
        # Held once a small request is turned away.
        deadline = time.monotonic() + 10
        while api.get("/v1/agents").status != 503:
            assert time.monotonic() < deadline, "the holder never took the slot"
        response = post_document_body(int(port), b"x" * (256 * 1024), auth)
        assert response.status == 503
        assert response.getheader("Connection") == "close"
        rest = b'"title": "t", "content": "c"}'
        holder.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest))
        assert answer(holder).status == 201
    assert api.get("/v1/agents").status == 200  # the slot came back


def test_a_malformed_chunked_body_is_400_not_an_unhandled_error(api: Api) -> None:
    """gunicorn raises its parse errors from the body as the application reads it: a chunk
    without its terminator was a 500 (the fixture's teardown checks no error was logged)."""
    host, port = api.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/documents HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {api.token}\r\n".encode()
            + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n"
        )
        response = answer(sock)
    assert response.status == 400
    assert response.getheader("Content-Type") == "application/problem+json"


def _post_text(api: Api, path: str) -> int:
    request = urllib.request.Request(  # noqa: S310 (our own http://127.0.0.1 server)
        api.base_url + path,
        data=b"not json",
        method="POST",
        headers={"Content-Type": "text/plain", "Authorization": f"Bearer {api.token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _turned_away(api: Api) -> float:
    samples = prom.parse(api.get("/metrics").body)
    return prom.value(
        samples, "conveyor_http_requests_total", method="GET", route=TURNED_AWAY, status="503"
    )

"""Admission control in the real gunicorn worker (api/server_worker.py): the worker takes a
request's slot before the application runs and answers 503 itself when none comes in
time; the application takes that slot over, and every slot comes back, whether the
request was served or failed before the application's hooks. (A long-poll giving its
slot back while it waits is tests/security/test_admission.py's.)

One gunicorn process with one slot, so that every figure is this process's.
"""

from __future__ import annotations

import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import prom
from tests.conftest import Servers
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

"""Operations with real processes: /metrics summed over two gunicorn workers, the worker's
own metrics endpoint, one job followed through the JSON logs of web and worker, and Flower
behind basic auth showing our worker and readable tasks.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from tests import prom
from tests.conftest import Servers
from tests.helpers import POST_DOCUMENT, ROOT, answer, post_document_body
from tests.ports import free_port, free_ports
from tests.stack import Api, Stack, procfile_command, stack_on

pytestmark = pytest.mark.e2e

FLOWER_AUTH = "ops:" + uuid.uuid4().hex
REQUESTS_TOTAL = "conveyor_http_requests_total"


@dataclass
class Ops:
    stack: Stack
    api: Api
    web_metrics_dir: Path
    worker_metrics_url: str
    flower_url: str


@pytest.fixture(scope="module")
def ops(
    servers: Servers, worker_id: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Ops]:
    workdir = tmp_path_factory.mktemp("e2e-ops")
    web_metrics_dir = workdir / "web-metrics"
    web_metrics_dir.mkdir()
    (web_metrics_dir / "counter_4242.db").write_bytes(b"from an earlier run")
    worker_metrics_port, flower_port = free_ports(2)
    with stack_on(servers, worker_id, workdir, "ops") as scenario:
        stack = scenario.stack
        api = stack.start_web(PROMETHEUS_MULTIPROC_DIR=str(web_metrics_dir))
        stack.start_worker(WORKER_METRICS_PORT=str(worker_metrics_port))
        stack.start(
            "flower",
            procfile_command("flower"),
            FLOWER_BASIC_AUTH=FLOWER_AUTH,
            FLOWER_PORT=str(flower_port),
        )
        ops = Ops(
            stack,
            api,
            web_metrics_dir,
            f"http://127.0.0.1:{worker_metrics_port}/metrics",
            f"http://127.0.0.1:{flower_port}",
        )
        with stack.logs_on_failure():
            api.sign_up()
            stack.within(30, lambda: fetch(ops.worker_metrics_url)[0] == 200, "worker /metrics")
            stack.within(30, lambda: fetch(f"{ops.flower_url}/healthcheck")[0] == 200, "Flower")
        yield ops


def fetch(url: str, *, auth: str | None = None, timeout: float = 5.0) -> tuple[int, str]:
    """Status and body of GET url; (0, reason) when nothing answers."""
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (our own loopback)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except OSError as error:
        return 0, str(error)


def scrape(url: str) -> prom.Samples:
    status, body = fetch(url)
    assert status == 200, body
    return prom.parse(body)


def requests_by_pid(directory: Path, route: str) -> dict[int, float]:
    """GET `route` answers counted in each worker's own file of the multiprocess dir."""
    counts: dict[int, float] = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.split("_")[-1])
        for family in MultiProcessCollector.merge([str(path)], accumulate=False):
            for sample in family.samples:
                if sample.name == REQUESTS_TOTAL and sample.labels.get("route") == route:
                    counts[pid] = counts.get(pid, 0.0) + sample.value
    return counts


# --------------------------------------------------------------------------- unreadable


@pytest.mark.parametrize(
    ("sent", "status"),
    [
        (b"GET /v1/agents?cursor=" + b"x" * 5000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"y" * 9000 + b"\r\n\r\n", 431),
        (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ],
    ids=["request line too long", "header too long", "no path"],
)
def test_requests_gunicorn_cannot_read_get_problem_documents(
    ops: Ops, sent: bytes, status: int
) -> None:
    """gunicorn answers these itself, before the application; with an HTML page, until
    api/server_worker.py replaced it."""
    port = int(ops.stack.api_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(sent)
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = json.loads(response.read())
    assert response.status == status
    assert response.getheader("Content-Type") == "application/problem+json"
    assert body["status"] == status and body["type"].startswith("/problems/")
    assert body["title"] and body["detail"]
    assert body["request_id"] == response.getheader("X-Request-ID")


def test_an_error_to_a_body_left_unread_closes_the_connection_and_says_so(ops: Ops) -> None:
    """gunicorn drains 64 KiB of a body the application did not read, then closes the
    connection: it used to say `keep-alive` first, and a client's next request on the
    connection failed."""
    port = int(ops.stack.api_url.rsplit(":", 1)[1])
    response = post_document_body(port, b"x" * (256 * 1024))
    assert response.status == 401
    assert response.getheader("Connection") == "close"
    # A small body is drained, and the connection stays open.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for _ in range(2):
            sock.sendall(POST_DOCUMENT + b"Content-Length: 2\r\n\r\n{}")
            response = answer(sock)
            assert response.status == 401
            assert response.getheader("Connection") == "keep-alive"


def test_a_route_without_a_body_refuses_one_through_gunicorn(ops: Ops) -> None:
    """Found against gunicorn: a 3 MB body, or `not json at all`, sent to a route that
    takes no body was never read, and the route did its work (200). Now 413 and 400, and
    the job is not cancelled; an empty body still cancels."""
    agent = ops.api.create_echo_agent(delay_ms=20_000)
    job = ops.api.submit(agent, "slow").body["id"]
    port = int(ops.stack.api_url.rsplit(":", 1)[1])
    path = f"/v1/jobs/{job}/cancel"
    headers = {"Authorization": f"Bearer {ops.api.token}", "Content-Type": "application/json"}
    for body, status in ((b'{"pad": "' + b"x" * 3_000_000 + b'"}', 413), (b"not json at all", 400)):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            with contextlib.suppress(OSError):  # it may answer before it has read it all
                connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            problem = json.loads(response.read())
        finally:
            connection.close()
        assert (response.status, problem["status"]) == (status, status), problem
        assert response.getheader("Content-Type") == "application/problem+json"
    assert ops.api.get(f"/v1/jobs/{job}").body["status"] in ("queued", "running")
    cancelled = ops.api.post(path)
    assert cancelled.status == 200, cancelled


def test_a_statement_waiting_past_the_web_timeout_answers_503(ops: Ops) -> None:
    """A locked table (a migration, say) held each request, and so its thread and its
    admission slot, for as long as the lock lasted."""
    port = free_port()
    ops.stack.start_web("web-timeout", PORT=str(port), WEB_STATEMENT_TIMEOUT_MS="500")
    api = ops.api.with_base(f"http://127.0.0.1:{port}")
    url = ops.stack.env["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(url) as locker:
            locker.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            reply = api.get("/v1/jobs", timeout=10)
            waited = time.monotonic() - started
            locker.rollback()
        assert reply.status == 503 and reply.body["type"] == "/problems/unavailable", reply
        assert waited < 5
        assert api.get("/v1/jobs").status == 200
    finally:
        ops.stack.kill("web-timeout")


# --------------------------------------------------------------------------- listening


def test_each_worker_listens_itself_and_a_burst_of_connections_reaches_both(ops: Ops) -> None:
    """gunicorn.conf.py's `reuse_port`: on the master's one shared socket, a burst of
    keep-alive connections could all land on one worker (0 and 32 of 32 was seen)."""
    stack = ops.stack
    port = int(stack.api_url.rsplit(":", 1)[1])
    master = psutil.Process(stack.processes["web"].pid)
    workers = master.children()

    def listening(process: psutil.Process) -> bool:
        return any(
            c.status == psutil.CONN_LISTEN and c.laddr.port == port
            for c in process.net_connections(kind="tcp")
        )

    assert [listening(w) for w in workers] == [True, True]
    assert not listening(master)
    # gunicorn's own "Listening at:" names no address then; ours does.
    assert stack.log_count("web", "Workers listen at:", f"0.0.0.0:{port} ") == 1

    clients = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(32)]
    try:
        for client in clients:  # each answered, so each is accepted and stays open
            client.request("GET", "/readyz")  # /healthz answers are counted by a test below
            response = client.getresponse()
            response.read()
            assert response.status == 200
        served = {w.pid: 0 for w in workers}
        for worker in workers:
            for connection in worker.net_connections(kind="tcp"):
                if connection.status == psutil.CONN_ESTABLISHED and connection.laddr.port == port:
                    served[worker.pid] += 1
        assert sum(served.values()) == 32, served
        # Spread by the kernel's hash of the addresses: fewer than 4 of 32 on one worker
        # has a chance of about 3 in a million.
        assert min(served.values()) >= 4, served
    finally:
        for client in clients:
            client.close()


def test_a_second_server_on_the_same_port_refuses_to_start(ops: Ops) -> None:
    """With `reuse_port` it could bind beside the first and take half its connections."""
    stack = ops.stack
    argv = [*procfile_command("web"), "--control-socket", str(stack.workdir / "web2.ctl")]
    tmp = stack.workdir / "web-second-tmp"  # where it makes its metrics directory
    tmp.mkdir()
    second = stack.start("web-second", argv, TMPDIR=str(tmp))
    try:
        code = second.wait(timeout=60)
    finally:
        stack.processes.pop("web-second", None)
    assert code != 0
    assert stack.log_count("web-second", "cannot listen on", "Address already in use") == 1
    assert list(tmp.iterdir()) == []  # nothing left behind
    assert ops.api.get("/readyz").status == 200  # the first server still answers


# --------------------------------------------------------------------------- metrics


def test_metrics_add_up_across_two_gunicorn_workers(ops: Ops) -> None:
    stack, api = ops.stack, ops.api
    with stack.logs_on_failure():
        assert not (ops.web_metrics_dir / "counter_4242.db").exists(), "not emptied at start"
        workers = {p.pid for p in psutil.Process(stack.processes["web"].pid).children()}
        assert len(workers) == 2, workers
        sent = 0

        def both_workers_served() -> bool:
            nonlocal sent
            with ThreadPoolExecutor(max_workers=16) as pool:
                replies = list(pool.map(lambda _: api.get("/healthz").status, range(32)))
            assert replies == [200] * 32
            sent += 32
            return len(requests_by_pid(ops.web_metrics_dir, "/healthz")) >= 2

        stack.within(30, both_workers_served, "one gunicorn worker answered every request")
        per_worker = requests_by_pid(ops.web_metrics_dir, "/healthz")
        samples = scrape(f"{stack.api_url}/metrics")

        assert set(per_worker) <= workers, (per_worker, workers)
        assert sum(per_worker.values()) == sent
        labels = {"method": "GET", "route": "/healthz", "status": "200"}
        assert prom.value(samples, REQUESTS_TOTAL, **labels) == sent
        count = "conveyor_http_request_duration_seconds_count"
        assert prom.value(samples, count, **labels) == sent


def test_job_counters_on_web_and_worker_and_queue_depths(ops: Ops) -> None:
    stack, api = ops.stack, ops.api
    web_metrics = f"{stack.api_url}/metrics"
    with stack.logs_on_failure():
        agent_id = api.create_echo_agent(delay_ms=10)
        web_before, worker_before = scrape(web_metrics), scrape(ops.worker_metrics_url)
        jobs = [api.submit(agent_id, f"count me {n}").body["id"] for n in range(5)]
        for job_id in jobs:
            assert api.wait_terminal(job_id)["status"] == "succeeded"
        web_after = scrape(web_metrics)

        def worker_counted() -> prom.Samples | None:
            samples = scrape(ops.worker_metrics_url)
            finished = "conveyor_jobs_finished_total"
            done = prom.value(samples, finished, status="succeeded")
            return (
                samples
                if done - prom.value(worker_before, finished, status="succeeded") >= 5
                else None
            )

        worker_after = stack.within(10, worker_counted, "the worker did not count its jobs")

        def delta(after: prom.Samples, before: prom.Samples, name: str, **labels: str) -> float:
            return prom.value(after, name, **labels) - prom.value(before, name, **labels)

        assert delta(web_after, web_before, "conveyor_jobs_submitted_total") == 5
        assert delta(web_after, web_before, "conveyor_events_appended_total") == 5  # job.queued
        assert (
            delta(worker_after, worker_before, "conveyor_jobs_finished_total", status="succeeded")
            == 5
        )
        # job.started and job.succeeded, per job.
        assert delta(worker_after, worker_before, "conveyor_events_appended_total") == 10
        assert delta(worker_after, worker_before, "conveyor_jobs_submitted_total") == 0
        depths = {
            queue: prom.value(web_after, "conveyor_queue_depth", queue=queue)
            for queue in ("agents", "events", "webhooks", "maintenance")
        }
        assert depths == {"agents": 0, "events": 0, "webhooks": 0, "maintenance": 0}
        assert ("conveyor_queue_depth", frozenset({("queue", "agents")})) in web_after


# --------------------------------------------------------------------------- logs


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            parsed = json.loads(line)
            if isinstance(parsed, dict):
                lines.append(parsed)
    return lines


def test_one_job_is_followed_by_its_request_id_across_processes(ops: Ops) -> None:
    stack, api = ops.stack, ops.api
    with stack.logs_on_failure():
        agent_id = api.create_echo_agent(delay_ms=10)
        request_id = f"trace-{uuid.uuid4().hex}"
        job_id = api.submit(agent_id, "follow me", **{"X-Request-ID": request_id}).body["id"]
        assert api.wait_terminal(job_id)["status"] == "succeeded"

        web = [
            line for line in json_lines(stack.log("web")) if line.get("request_id") == request_id
        ]
        assert [(line["event"], line["path"], line["status"]) for line in web] == [
            ("request", "/v1/jobs", 202)
        ]

        def worker_lines() -> list[dict[str, Any]] | None:
            lines = [
                line
                for line in json_lines(stack.log("worker"))
                if line.get("request_id") == request_id
            ]
            return lines if any(line["event"] == "job.finished" for line in lines) else None

        lines = stack.within(10, worker_lines, "the worker's log never named the request")
        by_event = {line["event"]: line for line in lines}
        started, finished = by_event["job.started"], by_event["job.finished"]
        assert started["job_id"] == finished["job_id"] == job_id
        assert started["task"] == "conveyor.jobs.run"
        assert started["task_id"] == finished["task_id"] and len(started["task_id"]) >= 32
        assert finished["status"] == "succeeded"
        # The context ends with the task: the worker's next lines do not claim this request.
        assert all(line.get("task_id") == started["task_id"] for line in lines)


# --------------------------------------------------------------------------- Flower


def test_flower_needs_credentials_and_shows_our_worker_and_tasks(ops: Ops) -> None:
    stack, api = ops.stack, ops.api
    with stack.logs_on_failure():
        assert fetch(f"{ops.flower_url}/api/workers")[0] == 401
        assert fetch(f"{ops.flower_url}/api/workers", auth="ops:wrong")[0] == 401
        # Flower asks none on these two (docs/operations.md says so, and scrapes without)
        assert fetch(f"{ops.flower_url}/metrics")[0] == 200
        assert fetch(f"{ops.flower_url}/healthcheck")[0] == 200

        def workers_known() -> dict[str, Any] | None:
            # refresh: Flower asks the workers (inspect broadcast) before answering.
            url = f"{ops.flower_url}/api/workers?refresh=1"
            status, body = fetch(url, auth=FLOWER_AUTH, timeout=15)
            assert status == 200, body
            known = json.loads(body)
            return known if any(info.get("active_queues") for info in known.values()) else None

        workers = stack.within(30, workers_known, "Flower never listed the worker")
        assert len(workers) == 1, workers
        ((name, info),) = workers.items()
        assert name.startswith("celery@")
        consumed = {queue["name"] for queue in info["active_queues"]}
        assert consumed == {"agents", "events", "webhooks", "maintenance"}

        agent_id = api.create_echo_agent(delay_ms=10)
        job_id = api.submit(agent_id, "a payload flower must not show").body["id"]
        assert api.wait_terminal(job_id)["status"] == "succeeded"

        def task_seen() -> dict[str, Any] | None:
            status, body = fetch(f"{ops.flower_url}/api/tasks", auth=FLOWER_AUTH)
            assert status == 200, body
            tasks = [t for t in json.loads(body).values() if job_id in (t.get("args") or "")]
            return tasks[0] if tasks and tasks[0].get("state") == "SUCCESS" else None

        task = stack.within(15, task_seen, "Flower never showed the job's task")
        assert task["name"] == "conveyor.jobs.run"
        assert task["args"] == repr((job_id,))
        assert "payload" not in json.dumps(task)

        listening = [
            c.laddr
            for c in psutil.Process(stack.processes["flower"].pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN
        ]
        assert [address.ip for address in listening] == ["127.0.0.1"], listening


def test_flower_refuses_to_start_without_credentials_outside_development(ops: Ops) -> None:
    env = {k: v for k, v in ops.stack.env.items() if k != "FLOWER_BASIC_AUTH"}
    assert env["CONVEYOR_ENV"] == "test"
    completed = subprocess.run(
        procfile_command("flower"),
        env={**env, "FLOWER_PORT": str(free_port())},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode != 0
    assert "refuses to start without FLOWER_BASIC_AUTH" in completed.stderr


def test_beat_rewrites_its_schedule_file_every_few_seconds(
    servers: Servers, worker_id: str, tmp_path: Path
) -> None:
    """The file's age is beat's health check (docs/operations.md; compose's: younger than
    120 s). Celery wrote it as it started and at its first send, then only every 3 minutes,
    so the check failed a healthy beat for a minute in three."""
    with stack_on(servers, worker_id, tmp_path, "beatfile", SWEEP_INTERVAL_S="1") as scenario:
        stack = scenario.stack
        with stack.logs_on_failure():
            stack.start_beat()
            first: list[int] = []

            def written_again_seconds_after_its_start() -> bool:
                stack.assert_running()
                # shelve adds its own suffixes (.dat, .dir, .bak with dbm.dumb; none with gdbm)
                files = list(stack.workdir.glob("beat-schedule*"))
                if not files:
                    return False
                newest = max(path.stat().st_mtime_ns for path in files)
                first[:] = first or [newest]
                return newest - first[0] >= 3_000_000_000

            stack.within(
                30,
                written_again_seconds_after_its_start,
                "beat did not write its schedule again 3 s or more after it started",
            )

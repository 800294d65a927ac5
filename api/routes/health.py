"""Liveness and readiness. Readiness answers 503 when a dependency does not answer in time."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from apiflask import APIBlueprint
from flask import current_app
from sqlalchemy import text

from api.problems import problem

bp = APIBlueprint("health", __name__, tag="Operations")
CHECK_TIMEOUT_S = 1.0
# Shared by all requests: a hung dependency ties up these threads, never request threads.
_checks = ThreadPoolExecutor(max_workers=4, thread_name_prefix="readyz")


@bp.get("/healthz")
@bp.doc(summary="The process is alive", security=[])
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@bp.get("/readyz")
@bp.doc(summary="PostgreSQL and Redis answer within a second", security=[])
def readyz():  # type: ignore[no-untyped-def]
    runtime = current_app.extensions["conveyor"]
    checks = {
        "postgresql": _checks.submit(_ping_postgres, runtime.engine),
        "redis": _checks.submit(runtime.redis_probe.ping),
    }
    results = {name: _outcome(future) for name, future in checks.items()}
    if all(result == "ok" for result in results.values()):
        return {"status": "ready", "checks": results}
    failing = ", ".join(name for name, result in results.items() if result != "ok")
    return problem(
        503,
        f"not ready: {failing} did not answer",
        slug="not-ready",
        headers={"Retry-After": "5"},
        extra={"checks": results},
    )


def _ping_postgres(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as connection:
        connection.execute(text("SET LOCAL statement_timeout = 1000"))
        connection.execute(text("SELECT 1"))


def _outcome(future) -> str:  # type: ignore[no-untyped-def]
    try:
        future.result(timeout=CHECK_TIMEOUT_S)
    except FutureTimeout:
        return "timeout"
    except Exception as error:
        return f"error: {type(error).__name__}"
    return "ok"

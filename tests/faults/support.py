"""What the fault tests share: fast timings, parallel submits, the exactly-once audit."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.stack import Db, Reply, Stack

# Short leases and frequent sweeps, so that recoveries take seconds, not minutes.
FAST = {
    "JOB_LEASE_S": "2",  # a heartbeat every 2/3 s
    "JOB_GRACE_S": "1",
    "SWEEP_INTERVAL_S": "0.5",
    "JOB_REPUBLISH_AFTER_S": "1",
    "JOB_RETRY_BASE_S": "0.2",
}
SWEEP_INTERVAL_S = float(FAST["SWEEP_INTERVAL_S"])
REPUBLISH_AFTER_S = float(FAST["JOB_REPUBLISH_AFTER_S"])
# Generous bounds for a loaded 2-core CI machine; the measured values are printed.
RECOVERY_DEADLINE_S = 90.0


def in_parallel(calls: list[Callable[[], Any]], threads: int = 8) -> list[Any]:
    """Results of `calls`, run on a few threads, in order; an exception is a result too."""

    def guarded(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as error:
            return error

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(guarded, calls))


def assert_unavailable(reply: Reply) -> None:
    """A dependency is down: 503 as a problem document, never a traceback or a 500."""
    assert reply.status == 503, reply
    assert reply.content_type.startswith("application/problem+json"), reply
    assert isinstance(reply.body, dict), reply
    assert reply.body["status"] == 503, reply
    # Not "overloaded": a token whose revocation check met Redis away answered that.
    assert reply.body["type"] in ("/problems/unavailable", "/problems/not-ready"), reply
    assert "Traceback" not in str(reply.body), reply


def wait_all_ended(stack: Stack, db: Db, owner: uuid.UUID, expected: int) -> float:
    """Poll the database until `expected` jobs of the owner have ended, whatever their
    status (the audit judges that); the monotonic time at which they had."""

    def ended() -> bool:
        stack.assert_running()
        counts = db.status_counts(owner)
        return sum(n for s, n in counts.items() if s not in ("queued", "running")) >= expected

    stack.within(
        RECOVERY_DEADLINE_S, ended, lambda: f"not every job ended: {db.status_counts(owner)}"
    )
    return time.monotonic()


def audit_exactly_once(db: Db, owner: uuid.UUID, jobs: int) -> dict[str, int]:
    """Check every job of `owner` ended `succeeded` exactly once, each attempt started once
    and ended at most once; return the counts for the report."""
    audit = db.job_audit(owner)
    assert len(audit) == jobs, f"{len(audit)} jobs in the database, expected {jobs}"
    problems = []
    for job_id, entry in audit.items():
        events = entry["events"]
        if entry["status"] != "succeeded":
            problems.append(f"{job_id} ended {entry['status']}")
        if events.get("job.succeeded", 0) != 1:
            problems.append(f"{job_id} has {events.get('job.succeeded', 0)} job.succeeded events")
        if events.get("job.started", 0) != entry["attempt"]:
            problems.append(
                f"{job_id}: {events.get('job.started', 0)} job.started events "
                f"for {entry['attempt']} attempts"
            )
        endings = sum(events.get(t, 0) for t in ("job.failed", "job.cancelled", "job.timed_out"))
        if endings:
            problems.append(f"{job_id} also has {endings} other terminal events: {events}")
    doubled = db.attempts_with_two_endings(owner)
    assert not problems and not doubled, f"{problems} {doubled}"
    attempts = [entry["attempt"] for entry in audit.values()]
    return {
        "jobs": len(audit),
        "succeeded": sum(entry["status"] == "succeeded" for entry in audit.values()),
        "double_succeeded": 0,
        "attempts_with_two_endings": len(doubled),
        "jobs_with_more_than_one_attempt": sum(a > 1 for a in attempts),
        "max_attempt": max(attempts, default=0),
        "requeued_events": sum(e["events"].get("job.requeued", 0) for e in audit.values()),
    }

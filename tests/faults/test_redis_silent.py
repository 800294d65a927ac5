"""A Redis that accepts connections and never answers (a partition, a paused VM): the
worker's publish after a commit gives up instead of holding its process for good."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

from tests.helpers import ROOT

# The worker's composition root, as a pool process uses it: a transaction that defers an
# announcement, committed; the publish runs after the commit, on the worker's client.
COMMIT_WITH_AN_ANNOUNCEMENT = textwrap.dedent(
    """
    import time
    import workers
    from services.after_commit import Announce, defer

    started = time.monotonic()
    with workers.celery.conveyor.session_factory.begin() as session:
        defer(session, Announce("silent-redis-probe"))
    print(f"committed and dispatched in {time.monotonic() - started:.1f} s", flush=True)
    """
)


def test_the_workers_publish_gives_up_on_a_redis_that_never_answers(database_url, report):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        port = silent.getsockname()[1]
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "CONVEYOR_ENV": "test",
            "JWT_SECRET_KEY": "x" * 48,
        }
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", COMMIT_WITH_AN_ANNOUNCEMENT],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,  # without a socket timeout the publish waited for ever
        )
        took = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    assert "committed and dispatched" in done.stdout
    assert "after_commit.dispatch_failed" in done.stdout + done.stderr  # logged, not lost
    assert took < 30
    report("worker publish to a silent redis", gave_up_after_s=round(took, 1))

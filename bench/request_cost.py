"""What one request costs the web process, measured in-process: CPU time, or instructions.

The rows of `make bench` drift with the machine (on the 2-core VM, ±40 % from one run to
the next, and its load generator shares the cores). These figures drift far less: each
case calls the app as gunicorn does (`app(environ, start_response)`: no socket, no
server), one request at a time, on a scratch database and a private Redis, with the heap
frozen as gunicorn's `pre_fork` leaves it (without that, the cyclic collector walks the
whole app in the timings: a batch once looked 12 ms dearer than it is).

`--instructions` runs the cases under valgrind's callgrind twice, with N and 4 N requests,
and prints the difference per request: the same code gives counts within a few per cent
(0.5 % and 1.9 % apart in two pairs of runs; timers and background threads vary), whatever
else the machine does. PostgreSQL's and Redis's own work is in neither figure.

Run: `.venv/bin/python -m bench.request_cost [--instructions] [health|get|submit|append|batch ...]`
(DATABASE_URL: the server to create the scratch database on, default local; valgrind
for `--instructions`).
"""

from __future__ import annotations

import gc
import io
import os
import secrets
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from api import create_app
from bench import callgrind
from services.passwords import Passwords
from settings import Settings

CASES = ("health", "get", "submit", "append", "batch")
# Requests per measured run: (CPU time, instructions). A batch is a thousand events.
REQUESTS = {
    "health": (3000, 100),
    "get": (3000, 100),
    "submit": (2000, 100),
    "append": (2000, 100),
    "batch": (40, 5),
}


def main(argv: list[str]) -> None:
    count_instructions = "--instructions" in argv
    cases = [a for a in argv if a in CASES] or list(CASES)
    counted = callgrind.child_count()
    if counted is not None:  # one run under callgrind, set up by its parent
        _run(cases, os.environ["DATABASE_URL"], os.environ["REDIS_URL"], counted, 1)
        return
    with callgrind.scratch_servers("conveyor_cost") as servers:
        if count_instructions:
            for case in cases:
                n = REQUESTS[case][1]
                per_request = callgrind.per_operation("bench.request_cost", [case], servers, n)
                print(f"{case:>7}: {per_request:>12,.0f} instructions/request", flush=True)
        else:
            _run(cases, servers["DATABASE_URL"], servers["REDIS_URL"], None, 3)


def _run(cases: list[str], database_url: str, redis_url: str, count: int | None, reps: int) -> None:
    app = create_app(
        Settings(
            conveyor_env="test",
            jwt_secret_key=secrets.token_urlsafe(48),
            database_url=database_url,
            redis_url=redis_url,
            log_level="INFO",  # one access-log line per request, as in production
            rate_limit_default="100000000/minute",
            max_queue_depth=10**9,  # nothing drains the queue here
        ),
        passwords=Passwords(time_cost=1, memory_kib=1024),
    )
    log_lines, sys.stdout = sys.stdout, open(os.devnull, "w")  # noqa: SIM115 (the access log)
    requests = _requests(app)
    gc.collect()
    gc.freeze()
    try:
        for case in cases:
            make = requests[case]
            n = count or REQUESTS[case][0]
            # Warm (caches, prepared statements, rate-limit leases) by a count that does not
            # depend on n: callgrind's two runs must differ only in the measured requests.
            _serve(app, make, max(5, REQUESTS[case][1] // 5))
            best = min(_timed(app, make, n) for _ in range(reps))
            if count is None:
                print(f"{case:>7}: {best * 1000:8.3f} ms CPU/request", file=log_lines, flush=True)
    finally:
        sys.stdout = log_lines


def _timed(app: Any, make: Callable[[], dict[str, Any]], n: int) -> float:
    started = time.process_time()
    _serve(app, make, n)
    return (time.process_time() - started) / n


def _serve(app: Any, make: Callable[[], dict[str, Any]], n: int) -> None:
    statuses: list[str] = []
    for _ in range(n):
        b"".join(app(make(), lambda status, headers, exc_info=None: statuses.append(status)))
    refused = [s for s in statuses if not s.startswith(("200", "201", "202"))]
    if refused:
        raise RuntimeError(f"unexpected answers: {refused[:3]}")


def _requests(app: Any) -> dict[str, Callable[[], dict[str, Any]]]:
    """A user with an echo agent and one job, and the WSGI environ of each case."""
    client = app.test_client()
    email, password = f"cost-{uuid.uuid4().hex[:8]}@example.com", "request cost 1234"
    client.post("/v1/auth/register", json={"email": email, "password": password})
    token = client.post("/v1/auth/login", json={"email": email, "password": password}).json
    auth = f"Bearer {token['access_token']}"
    headers = {"Authorization": auth}
    agent = client.post(
        "/v1/agents", json={"name": "echo", "provider": "echo", "model": "echo"}, headers=headers
    ).json
    submit = orjson.dumps({"agent_id": agent["id"], "input": {"text": "hi"}})
    job = client.post("/v1/jobs", data=submit, headers=headers, content_type="application/json")
    # One event, as the bench's append row sends it (there, round robin over streams).
    append = orjson.dumps({"events": [{"type": "bench.tick", "data": {"n": 1, "text": "x" * 100}}]})
    batch = orjson.dumps(
        {
            "events": [
                {
                    "stream": f"batch-{k % 50}",
                    "type": "bench.tick",
                    "data": {"i": k, "x": "x" * 100},
                }
                for k in range(1000)
            ]
        }
    )

    def environ(method: str, path: str, body: bytes = b"") -> Callable[[], dict[str, Any]]:
        return lambda: {
            "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1:8000", "HTTP_AUTHORIZATION": auth,
            "CONTENT_TYPE": "application/json" if body else "",
            "CONTENT_LENGTH": str(len(body)) if body else "", "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr, "wsgi.url_scheme": "http", "wsgi.version": (1, 0),
            "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
        }  # fmt: skip

    return {
        "health": environ("GET", "/healthz"),
        "get": environ("GET", f"/v1/jobs/{job.json['id']}"),
        "submit": environ("POST", "/v1/jobs", submit),
        "append": environ("POST", "/v1/streams/cost-stream/events", append),
        "batch": environ("POST", "/v1/events/batch", batch),
    }


if __name__ == "__main__":
    main(sys.argv[1:])

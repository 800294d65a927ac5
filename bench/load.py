"""Load generators: wrk (closed loop, Lua scripts for bodies, headers and rotating paths)
and a Python closed-loop fallback. Offered rates (open loop) are bench/open_loop.py's.

Every generator talks to 127.0.0.1 only and is bounded in time and in request count.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

HOST = "127.0.0.1"
CLIENT_TIMEOUT_S = 10.0
# Hard bounds whatever the environment asks for.
MAX_DURATION_S = 4 * 3600.0
MAX_REQUESTS = 10_000_000


@dataclass(frozen=True)
class RequestSpec:
    """One kind of request: request i goes to paths[i % len(paths)] with the same body."""

    method: str
    paths: tuple[str, ...]
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def path(self, index: int) -> str:
        return self.paths[index % len(self.paths)]


@dataclass
class LoadResult:
    generator: str  # "wrk" or "python"
    duration_s: float
    requests: int
    errors: int
    # Milliseconds; the percentiles of every answered request.
    p50: float
    p95: float
    p99: float
    statuses: Counter[int] = field(default_factory=Counter)  # 0: no answer (Python only)
    failures: Counter[str] = field(default_factory=Counter)  # why there was no answer

    @property
    def rate(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of `values` (any order); nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


# --------------------------------------------------------------------------- wrk


def ensure_wrk() -> str | None:
    """wrk's path; installs the Debian package when missing and we may (root, apt-get).
    BENCH_INSTALL_WRK=0 skips the attempt, BENCH_GENERATOR=python forces the fallback.
    None means: use the Python generator."""
    if os.environ.get("BENCH_GENERATOR") == "python":
        return None
    found = shutil.which("wrk")
    if found or os.environ.get("BENCH_INSTALL_WRK", "1") == "0":
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for steps in ([["apt-get", "install", "-y", "wrk"]],
                  [["apt-get", "update"], ["apt-get", "install", "-y", "wrk"]]):  # fmt: skip
        ok = True
        for step in steps:
            ok = ok and _quiet(step, env)
        if ok and shutil.which("wrk"):
            return shutil.which("wrk")
    return None


def _quiet(argv: list[str], env: dict[str, str]) -> bool:
    try:
        return subprocess.run(argv, env=env, capture_output=True, timeout=300).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _lua_string(value: str | bytes) -> str:
    text = value.decode() if isinstance(value, bytes) else value
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal here


LUA_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"duration_us": %d, "requests": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d, "p50": %d, "p95": %d, "p99": %d}\\n',
    summary.duration, summary.requests, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


def wrk_script(spec: RequestSpec) -> str:
    lines = [f"wrk.method = {_lua_string(spec.method)}"]
    if spec.body is not None:
        lines.append(f"wrk.body = {_lua_string(spec.body)}")
    for name, value in spec.headers:
        lines.append(f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}")
    if len(spec.paths) > 1:
        paths = ", ".join(_lua_string(p) for p in spec.paths)
        lines += [
            f"local paths = {{{paths}}}",
            "local counter = 0",
            "request = function()",
            "  counter = counter + 1",
            "  return wrk.format(nil, paths[(counter % #paths) + 1])",
            "end",
        ]
    return "\n".join(lines) + "\n" + LUA_DONE


def run_wrk(
    wrk: str, port: int, spec: RequestSpec, *, connections: int, duration_s: float
) -> LoadResult:
    duration = max(1, round(min(duration_s, MAX_DURATION_S)))
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(wrk_script(spec))
    try:
        argv = [
            wrk, "-t1", f"-c{connections}", f"-d{duration}s", f"--timeout={CLIENT_TIMEOUT_S:.0f}s",
            "-s", script.name, f"http://{HOST}:{port}{spec.paths[0]}",
        ]  # fmt: skip
        completed = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + 60, check=False
        )
    finally:
        os.unlink(script.name)
    line = next((x for x in completed.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if completed.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({completed.returncode}):\n{completed.stdout}\n"
                           f"{completed.stderr}")  # fmt: skip
    data = json.loads(line.removeprefix("BENCH_JSON "))
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    return LoadResult(
        generator="wrk",
        duration_s=data["duration_us"] / 1e6,
        requests=data["requests"],
        errors=errors,
        p50=data["p50"] / 1000,
        p95=data["p95"] / 1000,
        p99=data["p99"] / 1000,
    )


# --------------------------------------------------------------------------- python


# Gunicorn closes a connection idle for `keepalive` (2 s by default); a request sent on it
# as it closes would fail, so a connection idle for longer than this is replaced first.
MAX_IDLE_S = 1.0


class _Client:
    """One keep-alive connection; reconnects after an error or a long idle spell."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None
        self.used_at = 0.0

    def send(self, spec: RequestSpec, index: int) -> tuple[int, bytes]:
        """(status, body); status 0 and the exception's name for a connection error or a
        timeout."""
        if self.conn is not None and time.monotonic() - self.used_at > MAX_IDLE_S:
            self.close()
        if self.conn is None:
            self.conn = http.client.HTTPConnection(HOST, self.port, timeout=CLIENT_TIMEOUT_S)
        try:
            self.conn.request(spec.method, spec.path(index), spec.body, dict(spec.headers))
            response = self.conn.getresponse()
            body = response.read()
            self.used_at = time.monotonic()
            if response.will_close:
                self.close()
            return response.status, body
        except (OSError, http.client.HTTPException) as error:
            self.close()
            return 0, type(error).__name__.encode()

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.close()
            self.conn = None


def closed_loop(
    port: int,
    spec: RequestSpec,
    *,
    connections: int,
    duration_s: float,
    max_requests: int = MAX_REQUESTS,
    ok: Callable[[int], bool] = lambda status: 200 <= status < 400,
) -> LoadResult:
    """`connections` threads, each sending its next request as soon as the last is
    answered, until `duration_s` passes or `max_requests` were sent."""
    duration_s = min(duration_s, MAX_DURATION_S)
    max_requests = min(max_requests, MAX_REQUESTS)
    counter = itertools.count()
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    failures: Counter[str] = Counter()
    lock = threading.Lock()
    started = time.perf_counter()
    deadline = started + duration_s

    def work() -> None:
        client = _Client(port)
        mine: list[float] = []
        seen: Counter[int] = Counter()
        why: Counter[str] = Counter()
        while time.perf_counter() < deadline:
            index = next(counter)
            if index >= max_requests:
                break
            t0 = time.perf_counter()
            status, body = client.send(spec, index)
            mine.append((time.perf_counter() - t0) * 1000)
            seen[status] += 1
            if status == 0:
                why[body.decode()] += 1
        client.close()
        with lock:
            latencies.extend(mine)
            statuses.update(seen)
            failures.update(why)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration_s + CLIENT_TIMEOUT_S + 5)
    elapsed = time.perf_counter() - started
    errors = sum(n for status, n in statuses.items() if not ok(status))
    return LoadResult(
        "python",
        elapsed,
        len(latencies),
        errors,
        percentile(latencies, 50),
        percentile(latencies, 95),
        percentile(latencies, 99),
        statuses,
        failures,
    )

"""`python -m bench.churn`: churn of the waiting endpoints (long-polls and SSE tails) by
clients that go away, with the resources they could leave behind sampled between phases.

Phases, each bounded by CHURN_S seconds and CHURN_MAX requests, from CHURN_CLIENTS
threads; the first three with no Celery worker, so the jobs waited on never end
(CHURN_PHASES, such as `3` or `1,4`, runs only those):

1. `GET /v1/jobs/<id>?wait=30`, abandoned after 0-2 s (half by FIN, half by RST);
2. SSE tails (a job's events, a stream, the feed; with and without `Last-Event-ID`),
   dropped the same way, some before their answer began;
3. `CHURN_UNREAD` SSE tails of a stream of megabytes that are never read (a small receive
   buffer), held 5-45 s (the server's send timeout is 30 s), then dropped;
4. with the worker: jobs that end 0-2.5 s after their submit, waited on by long-polls and
   job streams kept to the end or abandoned, beside stream and feed tails woken by appends.

After each phase, with no load: the web and worker processes' PSS, RSS, threads and file
descriptors, the web's TCP connections, the scratch database's PostgreSQL connections,
Redis clients and pub/sub channels and patterns, and /metrics' waiting requests; sampled
at once, then again once settled (no waiting request nor client connection left, and the
descriptors steady; within CHURN_SETTLE_S). Then a plain client's reads, whether the
waiting slots answer (CHURN_CLIENTS long-polls of 2 s), and whether a long-poll is woken
by a cancel.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import struct
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.harness import (
    MB,
    BenchStack,
    Sampler,
    bench_stack,
    env_float,
    env_int,
    postgres_admin_url,
)
from bench.load import percentile
from tests.stack import TERMINAL, Api

RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
BIG_EVENT_BYTES = 60_000
SLOT_PROBE = 24
SMALL_TAIL = ("/v1/streams/churn-small/events", "text/event-stream", 5)


def main() -> int:
    phase_s = env_float("CHURN_S", 120)
    max_requests = env_int("CHURN_MAX", 20_000)
    clients = env_int("CHURN_CLIENTS", 24)
    unread = env_int("CHURN_UNREAD", 36)
    settle_s = env_float("CHURN_SETTLE_S", 120)
    chosen = set(os.environ.get("CHURN_PHASES", "1,2,3,4").replace(" ", "").split(","))
    out = Path(os.environ.get("BENCH_OUT") or tempfile.mkdtemp(prefix="conveyor-churn-"))
    say(f"{phase_s:.0f} s or {max_requests} requests a phase, {clients} clients; logs in {out}")
    with postgres_admin_url() as admin_url, bench_stack(admin_url, "churn", out / "logs") as bs:
        api = bs.start_web()
        api.sign_up()
        setup = Setup.make(api)
        churn = Churn(bs, api, setup, clients, phase_s, max_requests)
        rows = [churn.observe("baseline", 0, settle_s)]
        phases: list[tuple[str, Callable[[], int]]] = [
            ("1 long-polls abandoned", churn.abandoned_long_polls),
            ("2 streams dropped", churn.dropped_streams),
            ("3 streams unread", lambda: churn.unread_streams(unread)),
        ]
        # Each phase twice: a leak grows with the requests, a warm-up step does not.
        for round_ in ("a", "b"):
            for name, run in phases:
                if name[0] in chosen:
                    rows.append(churn.phase(f"{name} ({round_})", run, settle_s))
        if "4" in chosen:
            bs.start_worker()
            rows.append(churn.observe("worker started", 0, settle_s))
            for round_ in ("a", "b"):
                rows.append(churn.phase(f"4 jobs that end ({round_})", churn.ending_jobs, settle_s))
        churn.sampler.close()
        print_table(rows)
        (out / "churn.json").write_text(json.dumps(rows, indent=1))
        bs.stack.assert_no_server_errors()
    return 0


@dataclass
class Setup:
    """What the clients aim at: jobs that never end (no worker yet), a stream with a few
    events, a stream of megabytes (another user's), and agents whose jobs end after a
    delay."""

    still: str  # the agent of the jobs that never end
    jobs: list[str]
    feed_position: int  # the small stream's last event's
    heavy: Api  # the big stream's owner
    ending_agents: list[str]

    @classmethod
    def make(cls, api: Api) -> Setup:
        still = api.create_echo_agent(delay_ms=0)
        jobs = [api.submit(still, f"never {k}").body["id"] for k in range(100)]
        small = {"events": [{"type": "churn.tick", "data": {"k": k}} for k in range(5)]}
        reply = api.post("/v1/streams/churn-small/events", small)
        assert reply.status == 201, reply
        feed = api.get("/v1/streams/churn-small/events").body["items"][-1]["position"]
        # The big stream is another user's, so that the first user's feed stays small.
        heavy = Api(api.base_url)
        heavy.sign_up()
        big = {"events": [{"type": "churn.big", "data": {"x": "x" * BIG_EVENT_BYTES}}] * 25}
        for _ in range(8):  # 200 events, 12 MB
            assert heavy.post("/v1/streams/churn-big/events", big).status == 201
        ending = [api.create_echo_agent(delay_ms=d) for d in (0, 300, 1000, 2500)]
        return cls(still=still, jobs=jobs, feed_position=feed, heavy=heavy, ending_agents=ending)


class Churn:
    def __init__(
        self, bs: BenchStack, api: Api, setup: Setup, clients: int, phase_s: float, limit: int
    ) -> None:
        self.bs, self.api, self.setup = bs, api, setup
        self.clients, self.phase_s, self.limit = clients, phase_s, limit
        self.outcomes: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._recent_jobs: list[str] = []
        self.sampler = Sampler(bs)

    # ------------------------------------------------------------- clients

    def _open(
        self,
        path: str,
        accept: str,
        last_id: int | None = None,
        *,
        rcvbuf: int = 0,
        as_: Any = None,
    ) -> Any:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", self.bs.port))
        head = f"GET {path} HTTP/1.1\r\nHost: churn\r\nAccept: {accept}\r\n"
        head += f"Authorization: Bearer {(as_ or self.api).token}\r\n"
        if last_id is not None:
            head += f"Last-Event-ID: {last_id}\r\n"
        sock.sendall(f"{head}\r\n".encode())
        return sock

    def _hold(
        self, sock: socket.socket, seconds: float, *, until_closed: bool = False, head: bool = False
    ) -> str:
        """Read what comes for `seconds` (to its end with `until_closed`, its first bytes
        with `head`); the answer's status ("none" when nothing came), and for a job's JSON
        whether it had ended."""
        deadline = time.monotonic() + seconds
        got = b""
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, OSError):
                break
            if not chunk:
                break
            got += chunk if len(got) < 65536 else b""
            if head or (not until_closed and _whole(got)):
                break  # the head, or a whole short answer (a long-poll's): no need to wait on
        if not got.startswith(b"HTTP/1.1 "):
            return "none"
        if b'"status":"' not in got or b"event-stream" in got[:512]:
            return got[9:12].decode()
        ended = any(b'"status":"%s"' % s.encode() in got for s in TERMINAL)
        return f"{got[9:12].decode()} {'ended' if ended else 'not ended'}"

    @staticmethod
    def _drop(sock: socket.socket, rng: random.Random) -> None:
        with contextlib.suppress(OSError):
            if rng.random() < 0.5:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
            sock.close()

    def _run(self, client: Callable[[random.Random], str], seconds: float | None = None) -> int:
        """`client` from every thread until the phase's time or request budget is spent."""
        deadline = time.monotonic() + (seconds or self.phase_s)
        done = [0]

        def loop(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < deadline:
                with self._lock:
                    if done[0] >= self.limit:
                        return
                    done[0] += 1
                try:
                    outcome = client(rng)
                except OSError as error:
                    outcome = type(error).__name__
                with self._lock:
                    self.outcomes[outcome] += 1

        with ThreadPoolExecutor(self.clients) as pool:
            list(pool.map(loop, range(self.clients)))
        return done[0]

    # ------------------------------------------------------------- phases

    def abandoned_long_polls(self) -> int:
        def client(rng: random.Random) -> str:
            sock = self._open(f"/v1/jobs/{rng.choice(self.setup.jobs)}?wait=30", "*/*")
            status = self._hold(sock, rng.uniform(0, 2))
            self._drop(sock, rng)
            return f"long-poll {status}"

        return self._run(client)

    def _stream_target(self, rng: random.Random) -> tuple[str, str, int | None]:
        kind = rng.choice(("job", "stream", "feed"))
        resume = rng.random() < 0.5
        if kind == "job":
            return kind, f"/v1/jobs/{rng.choice(self.setup.jobs)}/events", 1 if resume else None
        if kind == "stream":
            return kind, "/v1/streams/churn-small/events", rng.randint(1, 5) if resume else None
        return kind, "/v1/events", self.setup.feed_position if resume else None

    def dropped_streams(self) -> int:
        def client(rng: random.Random) -> str:
            kind, path, last_id = self._stream_target(rng)
            sock = self._open(path, "text/event-stream", last_id)
            status = self._hold(sock, 0 if rng.random() < 0.2 else rng.uniform(0, 2))
            self._drop(sock, rng)
            return f"{kind} {status}"

        return self._run(client)

    def unread_streams(self, count: int) -> int:
        def client(k: int) -> str:
            rng = random.Random(k)
            sock = self._open(
                "/v1/streams/churn-big/events",
                "text/event-stream",
                rcvbuf=4096,
                as_=self.setup.heavy,
            )
            time.sleep(rng.uniform(5, 45))  # never reads: the server's sends fill the buffers
            self._drop(sock, rng)
            return "unread"

        with ThreadPoolExecutor(count) as pool:
            self.outcomes.update(pool.map(client, range(count)))
        return count

    def ending_jobs(self) -> int:
        stop = threading.Event()
        threading.Thread(target=self._produce, args=(stop,), daemon=True).start()
        poll(lambda: len(self._recent_jobs) >= 10, 30)
        try:
            return self._run(self._ending_client)
        finally:
            stop.set()

    def _produce(self, stop: threading.Event) -> None:
        """Jobs that end soon after their submit, and appends that wake the tails."""
        rng = random.Random(0)
        tick = {"events": [{"type": "churn.tick", "data": {}}]}
        while not stop.wait(0.5):
            reply = self.api.try_submit(rng.choice(self.setup.ending_agents), "ends")
            if reply.status == 202:
                with self._lock:
                    self._recent_jobs = [*self._recent_jobs[-49:], reply.body["id"]]
            self.api.post("/v1/streams/churn-small/events", tick)

    def _ending_client(self, rng: random.Random) -> str:
        with self._lock:
            job = rng.choice(self._recent_jobs)
        keep = rng.random() < 0.5
        kind = rng.choice(("long-poll", "job", "stream", "feed"))
        if kind == "long-poll":
            sock = self._open(f"/v1/jobs/{job}?wait=30", "*/*")
        elif kind == "job":
            sock = self._open(f"/v1/jobs/{job}/events", "text/event-stream")
        else:
            _, path, last_id = self._stream_target(random.Random(kind))
            sock = self._open(path, "text/event-stream", last_id)
        seconds = (35 if kind in ("long-poll", "job") else rng.uniform(1, 4)) if keep else 0
        status = self._hold(sock, seconds or rng.uniform(0, 2), until_closed=kind == "job")
        self._drop(sock, rng)
        return f"{kind} {'kept' if keep else 'dropped'} {status}"

    # ------------------------------------------------------------- observation

    def phase(self, name: str, run: Callable[[], int], settle_s: float) -> dict[str, Any]:
        say(f"phase {name} ...")
        with self.sampler.window() as window:
            count = run()
        say(f"  {count} requests: {dict(sorted(self.outcomes.items()))}")
        self.outcomes.clear()
        row = self.observe(name, count, settle_s)
        row["peak_pss_mb"] = {name: round(mb, 1) for name, mb in window.peak_pss_mb.items()}
        return row

    def observe(self, label: str, requests: int, settle_s: float) -> dict[str, Any]:
        row: dict[str, Any] = {"phase": label, "requests": requests, "after": self.sample()}
        started = time.monotonic()
        row["settled"] = self._settle(settle_s)
        row["settle_s"] = round(time.monotonic() - started, 1)
        row["probe"] = self.probe()
        return row

    def _settle(self, within_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + within_s
        previous = self.sample()
        while time.monotonic() < deadline:
            time.sleep(2)
            now = self.sample()
            quiet = not now["waiting"] and not now["web_conns"]
            if quiet and now["web_fds"] == previous["web_fds"]:
                return now
            previous = now
        return previous | {"unsettled": True}

    def sample(self) -> dict[str, Any]:
        web, worker = self._tree("web"), self._tree("worker")
        redis = self.bs.redis()
        return {
            "web_pss_mb": round(sum(p["pss"] for p in web) / MB, 1),
            "web_rss_mb": round(sum(p["rss"] for p in web) / MB, 1),
            "web_threads": [p["threads"] for p in web],
            "web_fds": [p["fds"] for p in web],
            "web_conns": sum(p["conns"] for p in web),
            "worker_pss_mb": round(sum(p["pss"] for p in worker) / MB, 1),
            "worker_threads": sum(p["threads"] for p in worker),
            "worker_fds": sum(p["fds"] for p in worker),
            "pg_conns": self.bs.db.value(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                self.bs.database_name,
            ),
            "redis_clients": len(redis.client_list()) - 1,
            "redis_channels": len(redis.pubsub_channels()),
            "redis_patterns": redis.pubsub_numpat(),
            "waiting": self._metric("conveyor_waiting_requests"),
            "refused": self._metric("conveyor_waiting_refused_total"),
        }

    def _tree(self, name: str) -> list[dict[str, int]]:
        process = self.bs.stack.processes.get(name)
        if process is None:
            return []
        leader = psutil.Process(process.pid)
        found = []
        for proc in [leader, *leader.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                memory = proc.memory_full_info()
                conns = [c for c in proc.net_connections("tcp") if c.laddr.port == self.bs.port]
                found.append({
                    "rss": memory.rss,
                    "pss": memory.pss,
                    "threads": proc.num_threads(),
                    "fds": proc.num_fds(),
                    "conns": sum(c.status != psutil.CONN_LISTEN for c in conns),
                })  # fmt: skip
        return found

    def _metric(self, name: str) -> float:
        text = self.api.get("/metrics", headers={"Accept": "text/plain"}).body
        values = [line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")]
        return float(values[0]) if values else float("nan")

    def probe(self) -> dict[str, Any]:
        """A plain client's reads; how many of SLOT_PROBE concurrent stream tails got a
        waiting slot (at most 24 land on one process); whether a long-poll is woken by its
        job's end (a cancel, without the worker)."""
        job = self.setup.jobs[0]
        took: list[float] = []
        statuses: Counter[int] = Counter()
        for _ in range(50):
            started = time.monotonic()
            statuses[self.api.get(f"/v1/jobs/{job}").status] += 1
            took.append((time.monotonic() - started) * 1000)
        with ThreadPoolExecutor(SLOT_PROBE) as pool:
            socks = list(pool.map(lambda _: self._open(*SMALL_TAIL), range(SLOT_PROBE)))
            slots = sum(self._hold(sock, 5, head=True) == "200" for sock in socks)
            for sock in socks:
                sock.close()
        worker = "worker" in self.bs.stack.processes
        agent = self.setup.ending_agents[2] if worker else self.setup.still
        target = self.api.submit(agent, "waited on").body["id"]
        with ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            waiting = pool.submit(self.api.get, f"/v1/jobs/{target}?wait=20", timeout=30)
            if not worker:
                time.sleep(0.5)  # the long-poll waits by then; 20 s unless the cancel wakes it
                self.api.post(f"/v1/jobs/{target}/cancel")
            woken = waiting.result().body["status"]
            woken_s = time.monotonic() - started
        return {
            "get_p50_ms": round(percentile(took, 50), 1),
            "get_max_ms": round(max(took), 1),
            "get_statuses": dict(statuses),
            "slots_answered": slots,
            "woken": f"{woken} in {woken_s:.2f} s",
        }


def _whole(answer: bytes) -> bool:
    """Whether `answer` is a whole answer with a Content-Length (not a stream)."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def poll(check: Callable[[], bool], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within_s} s")
        time.sleep(0.1)


def print_table(rows: list[dict[str, Any]]) -> None:
    say("")
    say("phase | requests | peak PSS MB | web PSS MB after/settled | web threads | web fds | "
        "conns | worker PSS | pg conns | redis clients | channels/patterns | waiting | settle s | "
        "get p50/max ms | slots | woken")  # fmt: skip
    for row in rows:
        a, s, p = row["after"], row["settled"], row["probe"]
        say(
            f"{row['phase']} | {row['requests']} | {row.get('peak_pss_mb', '')} | "
            f"{a['web_pss_mb']}/{s['web_pss_mb']} | "
            f"{a['web_threads']}/{s['web_threads']} | {a['web_fds']}/{s['web_fds']} | "
            f"{a['web_conns']}/{s['web_conns']} | {s['worker_pss_mb']} | "
            f"{a['pg_conns']}/{s['pg_conns']} | {a['redis_clients']}/{s['redis_clients']} | "
            f"{s['redis_channels']}/{s['redis_patterns']} | {a['waiting']}/{s['waiting']} | "
            f"{row['settle_s']}{' UNSETTLED' if s.get('unsettled') else ''} | "
            f"{p['get_p50_ms']}/{p['get_max_ms']} {p['get_statuses']} | "
            f"{p['slots_answered']} | {p['woken']}"
        )


def say(message: str) -> None:
    print(message, flush=True)


if __name__ == "__main__":
    sys.exit(main())

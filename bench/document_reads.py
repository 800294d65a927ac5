"""Document read throughput with and without the read cache: `GET /v1/documents/<id>`.

Two apps on one scratch database, the same in all but `DOCUMENT_CACHE_MAX_BYTES` (0, or
the default), each read through the Flask test client: the whole request path (JWT check
with its Redis blocklist lookup, the session, the query, JSON) without a socket. For each
content size, DOCS documents are read round robin REQUESTS times per app, after a warm-up,
one request at a time (THREADS > 1 reads from that many threads at once).

Run: `.venv/bin/python -m bench.document_reads` (DATABASE_URL: a server to create the
scratch database on, default local; REDIS_URL, default local). The database is dropped.
"""

from __future__ import annotations

import os
import random
import statistics
import string
import threading
import time
import uuid
from typing import Any

from api import create_app
from services.passwords import Passwords
from settings import Settings
from tests.conftest import create_migrated_database, drop_database

SIZES = [int(s) for s in os.environ.get("SIZES", "1024,16384,131072,1048000").split(",")]
DOCS = int(os.environ.get("DOCS", "20"))
REQUESTS = int(os.environ.get("REQUESTS", "2000"))
THREADS = int(os.environ.get("THREADS", "1"))
# Runs per app and size, alternating between the apps so that drift on a shared machine hits
# both alike; a cell shows the median rate and the latencies of all its runs.
ROUNDS = int(os.environ.get("ROUNDS", "3"))
PASSWORD = "bench password 1234"  # noqa: S105 (a throwaway user in a scratch database)


def text_of(size: int, rng: random.Random) -> str:
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 10))) for _ in range(500)]
    parts: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(words)
        parts.append(word)
        length += len(word) + 1
    return " ".join(parts)[:size]


def measure(app: Any, headers: dict[str, str], ids: list[str]) -> tuple[float, list[float], float]:
    """Requests per second, every request's latency in seconds, and this process's CPU
    seconds per request (less disturbed than wall time by other load on the machine)."""
    per_thread = REQUESTS // THREADS
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(THREADS + 1)

    failures: list[str] = []

    def reader(offset: int) -> None:
        client = app.test_client()
        mine = []
        barrier.wait()
        for n in range(per_thread):
            t0 = time.perf_counter()
            response = client.get(f"/v1/documents/{ids[(n + offset) % len(ids)]}", headers=headers)
            mine.append(time.perf_counter() - t0)
            if response.status_code != 200:
                failures.append(f"{response.status_code}: {response.get_data(as_text=True)}")
                return
        with lock:
            latencies.extend(mine)

    client = app.test_client()
    for _ in range(3):  # warm-up: connections, caches, code paths
        for document_id in ids:
            assert client.get(f"/v1/documents/{document_id}", headers=headers).status_code == 200
    threads = [threading.Thread(target=reader, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started, cpu_started = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.join()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    if failures:
        raise SystemExit(f"a read failed: {failures[0]}")
    return len(latencies) / elapsed, latencies, cpu / len(latencies)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def main() -> None:
    admin = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    admin = admin.replace("postgresql+psycopg://", "postgresql://")
    name = f"conveyor_bench_docs_{uuid.uuid4().hex[:8]}"
    url = create_migrated_database(admin, name)
    settings = Settings(
        conveyor_env="test",
        database_url=url,
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        jwt_secret_key="bench-" + "x" * 40,
        log_level="WARNING",
        # The per-principal limit would answer 429 to one client reading this fast.
        rate_limit_enabled=False,
    )
    passwords = Passwords(time_cost=1, memory_kib=1024)
    apps = {
        "without cache": create_app(
            settings.model_copy(update={"document_cache_max_bytes": 0}), passwords=passwords
        ),
        "with cache": create_app(settings, passwords=passwords),
    }
    try:
        client = apps["with cache"].test_client()
        email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
        assert (
            client.post(
                "/v1/auth/register", json={"email": email, "password": PASSWORD}
            ).status_code
            == 201
        )
        token = client.post("/v1/auth/login", json={"email": email, "password": PASSWORD}).json
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        rng = random.Random(7)
        print(
            f"document reads: {DOCS} documents per size, {REQUESTS} requests per run, "
            f"{ROUNDS} runs per cell, {THREADS} thread(s), Flask test client"
        )
        print(f"{'':>9} | {'without cache':^28} | {'with cache':^28} |")
        heading = f"{'req/s':>7} {'p50':>6} {'p95':>6} {'cpu':>6}"
        print(f"{'content':>9} | {heading} | {heading} | ratio (req/s)")
        units = f"{'':>7} {'ms':>6} {'ms':>6} {'ms':>6}"
        print(f"{'bytes':>9} | {units} | {units} |")
        for size in SIZES:
            ids = []
            for i in range(DOCS):
                response = client.post(
                    "/v1/documents",
                    json={"title": f"doc {i}", "content": text_of(size, rng)},
                    headers=headers,
                )
                assert response.status_code == 201, response.json
                ids.append(response.json["id"])
            runs: dict[str, list[tuple[float, list[float], float]]] = {label: [] for label in apps}
            for _ in range(ROUNDS):
                for label, app in apps.items():
                    runs[label].append(measure(app, headers, ids))
            rates = {label: statistics.median(r[0] for r in runs[label]) for label in apps}
            cells = []
            for label in apps:
                latencies = [value for run in runs[label] for value in run[1]]
                p50 = percentile(latencies, 0.50) * 1000
                p95 = percentile(latencies, 0.95) * 1000
                cpu = statistics.median(r[2] for r in runs[label]) * 1000
                cells.append(f"{rates[label]:>7,.0f} {p50:>6.2f} {p95:>6.2f} {cpu:>6.2f}")
            ratio = rates["with cache"] / rates["without cache"]
            print(f"{size:>9,} | {cells[0]} | {cells[1]} | {ratio:.2f}x")
        stats = apps["with cache"].extensions["conveyor.document_cache"].stats()
        print(
            f"cache: {stats.hits} hits, {stats.misses} misses, {stats.entries} entries, "
            f"{stats.size_bytes:,} bytes"
        )
    finally:
        for app in apps.values():
            app.extensions["conveyor"].notifier.close()
            app.extensions["conveyor"].engine.dispose()
        drop_database(admin, name)


if __name__ == "__main__":
    main()

"""Document read throughput with and without the read cache: `GET /v1/documents/<id>`.

Two apps on one scratch database, the same in all but `DOCUMENT_CACHE_MAX_BYTES` (0, or
the default), each read through the Flask test client: the whole request path (JWT check
with its Redis blocklist lookup, the session, the queries, JSON) without a socket. For each
content size, DOCS documents are read round robin, REQUESTS times per app, one request at a
time, after a warm-up that fills the cache.

The two apps take turns request by request, so load from anything else on the machine falls
on both alike; req/s is requests over the summed latency of that app's requests, and `cpu`
is this process's CPU time per request (PostgreSQL's work is not in it).

Run: `.venv/bin/python -m bench.document_reads` (DATABASE_URL: a server to create the
scratch database on, default local; REDIS_URL, default local). The database is dropped.
"""

from __future__ import annotations

import os
import random
import string
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from api import create_app
from services.passwords import Passwords
from settings import Settings
from tests.conftest import create_migrated_database, drop_database

SIZES = [int(s) for s in os.environ.get("SIZES", "1024,16384,131072,1048000").split(",")]
DOCS = int(os.environ.get("DOCS", "20"))
REQUESTS = int(os.environ.get("REQUESTS", "3000"))
PASSWORD = "bench password 1234"  # noqa: S105 (a throwaway user in a scratch database)


@dataclass
class Timings:
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies) / sum(self.latencies)

    def ms(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * share))] * 1000

    def cell(self) -> str:
        cpu_ms = self.cpu / len(self.latencies) * 1000
        return f"{self.rate:>7,.0f} {self.ms(0.5):>6.2f} {self.ms(0.95):>6.2f} {cpu_ms:>6.2f}"


def text_of(size: int, rng: random.Random) -> str:
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 10))) for _ in range(500)]
    parts: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(words)
        parts.append(word)
        length += len(word) + 1
    return " ".join(parts)[:size]


def read(client: Any, document_id: str, headers: dict[str, str], timings: Timings) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    response = client.get(f"/v1/documents/{document_id}", headers=headers)
    timings.latencies.append(time.perf_counter() - wall)
    timings.cpu += time.process_time() - cpu
    if response.status_code != 200:
        raise SystemExit(f"a read failed: {response.status_code} {response.get_data(as_text=True)}")


def compare(apps: dict[str, Any], headers: dict[str, str], ids: list[str]) -> dict[str, Timings]:
    clients = {label: app.test_client() for label, app in apps.items()}
    for client in clients.values():  # warm-up: connections, code paths, the cache
        for document_id in ids * 3:
            read(client, document_id, headers, Timings())
    timings = {label: Timings() for label in apps}
    for n in range(REQUESTS):
        # Alternate which app goes first, so neither always follows the other.
        order = list(clients) if n % 2 == 0 else list(clients)[::-1]
        for label in order:
            read(clients[label], ids[n % len(ids)], headers, timings[label])
    return timings


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
        credentials = {"email": email, "password": PASSWORD}
        assert client.post("/v1/auth/register", json=credentials).status_code == 201
        token = client.post("/v1/auth/login", json=credentials).json["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        rng = random.Random(7)
        print(
            f"document reads: {DOCS} documents per size, {REQUESTS} requests per app and size, "
            "one at a time, apps alternating request by request, Flask test client"
        )
        print(f"{'':>9} | {'without cache':^28} | {'with cache':^28} |")
        heading = f"{'req/s':>7} {'p50':>6} {'p95':>6} {'cpu':>6}"
        units = f"{'':>7} {'ms':>6} {'ms':>6} {'ms':>6}"
        print(f"{'content':>9} | {heading} | {heading} | ratio")
        print(f"{'bytes':>9} | {units} | {units} | (req/s)")
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
            timings = compare(apps, headers, ids)
            without, with_ = timings["without cache"], timings["with cache"]
            ratio = with_.rate / without.rate
            print(f"{size:>9,} | {without.cell()} | {with_.cell()} | {ratio:.2f}x")
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

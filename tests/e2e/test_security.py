"""Security through real processes: the Procfile's gunicorn (two workers) and Celery worker.

- Brute force: login attempts past the per-email limit get 429 on both gunicorn workers,
  proven by sending them over kept-alive connections that psutil shows each worker holds.
- No secrets in logs: a full run (register, login, a failed login, API key, agent, job,
  webhooks with their signed deliveries, refresh, logout) at LOG_LEVEL=DEBUG, after which
  no password, token, API key, webhook secret or the JWT signing key is in any log.
"""

from __future__ import annotations

import http.client
import json
import secrets
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import Servers
from tests.helpers import PASSWORD
from tests.stack import Api, Stack, stack_on
from tests.webhook_receiver import receiver

pytestmark = pytest.mark.e2e

DEADLINE_S = 45.0


# --------------------------------------------------------------------------- brute force


class Connection:
    """One kept-alive HTTP connection, and the gunicorn worker that holds its other end."""

    def __init__(self, port: int) -> None:
        self.http = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.http.connect()
        self.local_port = self.http.sock.getsockname()[1]

    def send(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        self.http.request(method, path, body=data, headers=headers)
        response = self.http.getresponse()
        raw = response.read()
        # http.client reconnects silently when a connection was dropped: that would be a
        # connection no one checked the worker of.
        assert self.http.sock is not None, "the server closed the connection"
        assert self.http.sock.getsockname()[1] == self.local_port, "reconnected"
        return response.status, dict(response.getheaders()), json.loads(raw) if raw else None

    def worker(self, workers: list[psutil.Process]) -> int | None:
        for process in workers:
            for conn in process.net_connections(kind="tcp"):
                if conn.raddr and conn.raddr.port == self.local_port:
                    return process.pid
        return None

    def close(self) -> None:
        self.http.close()


def one_connection_per_worker(stack: Stack, port: int) -> list[Connection]:
    """Open connections (each answered once, so that a worker has accepted it) until two
    are held by different gunicorn workers."""
    workers = psutil.Process(stack.processes["web"].pid).children()
    assert len(workers) == 2, workers
    held: dict[int, Connection] = {}
    opened = []
    for _ in range(32):
        connection = Connection(port)
        opened.append(connection)
        status, _, _ = connection.send("GET", "/healthz")
        assert status == 200
        pid = connection.worker(workers)
        if pid is not None and pid not in held:
            held[pid] = connection
        if len(held) == 2:
            break
    for connection in opened:
        if connection not in held.values():
            connection.close()
    assert len(held) == 2, "32 connections, and every one went to the same gunicorn worker"
    return list(held.values())


def test_login_past_the_limit_is_429_on_every_worker(
    servers: Servers, worker_id: str, tmp_path: Path
) -> None:
    limits = {
        "RATE_LIMIT_AUTH_PER_EMAIL": "5/minute",
        "RATE_LIMIT_AUTH_PER_IP": "100/minute",
        # Connections stay open between our requests, so each stays with its worker.
        "GUNICORN_CMD_ARGS": "--keep-alive 60",
    }
    with stack_on(servers, worker_id, tmp_path, "bruteforce", **limits) as scenario:
        stack = scenario.stack
        api = stack.start_web()
        with stack.logs_on_failure():
            api.sign_up()  # register and log in: 2 of the victim's 5
            assert api.email is not None
            first, second = one_connection_per_worker(stack, int(stack.env["PORT"]))
            wrong = {"email": api.email, "password": "not the password!"}
            answers = [c.send("POST", "/v1/auth/login", wrong)[0] for c in (first, second, first)]
            assert answers == [401, 401, 401]

            right = {"email": api.email, "password": PASSWORD}
            for connection in (second, first):
                status, headers, body = connection.send("POST", "/v1/auth/login", right)
                assert status == 429, body
                assert body["type"] == "/problems/rate-limited"
                assert int(headers["Retry-After"]) >= 1
                assert headers["RateLimit-Remaining"] == "0"
            # Another account is not locked out by the attack on this one.
            other = {"email": f"other-{uuid.uuid4().hex[:8]}@example.com", "password": "x" * 12}
            assert second.send("POST", "/v1/auth/login", other)[0] == 401
            first.close()
            second.close()


# --------------------------------------------------------------------------- logs


def test_no_secret_reaches_any_log(servers: Servers, worker_id: str, tmp_path: Path) -> None:
    password = f"pw-{secrets.token_urlsafe(18)}"
    wrong_password = f"wrong-{secrets.token_urlsafe(18)}"
    env = {"WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8", "WEBHOOK_RETRY_SCHEDULE": "0.2,0.2"}
    with receiver() as hook, stack_on(servers, worker_id, tmp_path, "secrets", **env) as sc:
        stack = sc.stack
        api = stack.start_web(LOG_LEVEL="DEBUG")
        stack.start_worker(LOG_LEVEL="DEBUG")
        with stack.logs_on_failure():
            secrets_seen = _full_run(stack, api, hook, password, wrong_password)
            secrets_seen["JWT_SECRET_KEY"] = stack.env["JWT_SECRET_KEY"]

            logs = {path.name: path.read_text(errors="replace") for path in tmp_path.glob("*.log")}
            assert {"web.log", "worker.log"} <= logs.keys()
            everything = "\n".join(logs.values())
            # The control: the run is in the logs, so their silence about secrets means something.
            assert "/v1/auth/login" in everything and "/v1/api-keys" in everything
            assert "conveyor.jobs.run" in logs["worker.log"]
            assert "conveyor.webhooks.deliver" in logs["worker.log"]
            leaks = [
                f"{name} in {log}"
                for name, secret in secrets_seen.items()
                for fragment in _fragments(secret)
                for log, text in logs.items()
                if fragment in text
            ]
            assert not leaks, leaks


def _full_run(
    stack: Stack, api: Api, hook: Any, password: str, wrong_password: str
) -> dict[str, str]:
    """Everything a client does that carries a secret; returns the secrets by name."""
    email = f"secrets-{uuid.uuid4().hex[:8]}@example.com"
    assert api.post("/v1/auth/register", {"email": email, "password": password}).status == 201
    assert api.post("/v1/auth/login", {"email": email, "password": wrong_password}).status == 401
    tokens = api.post("/v1/auth/login", {"email": email, "password": password}).body
    api.token, api.email = tokens["access_token"], email
    assert api.get("/v1/auth/me").status == 200
    keyed = Api(api.base_url, api.guard)  # sends only the headers it is given
    forged = tokens["access_token"][:-6] + "AAAAAA"
    assert keyed.get("/v1/agents", headers={"Authorization": f"Bearer {forged}"}).status == 401

    created = api.post("/v1/api-keys", {"name": "ci"})
    assert created.status == 201, created
    key = created.body["key"]
    bogus_key = "cvk_" + secrets.token_urlsafe(32)
    assert keyed.get("/v1/agents", headers={"X-API-Key": bogus_key}).status == 401
    by_key = {"X-API-Key": key}

    endpoint = api.post("/v1/webhooks", {"url": hook.url, "event_types": ["job.succeeded"]})
    assert endpoint.status == 201, endpoint
    rotated = api.post(f"/v1/webhooks/{endpoint.body['id']}/rotate-secret")
    assert rotated.status == 200, rotated
    callback = api.get("/v1/webhooks/callback-secret")
    assert callback.status == 200, callback

    agent = keyed.post(
        "/v1/agents", {"name": "e", "provider": "echo", "params": {}}, headers=by_key
    )
    assert agent.status == 201, agent
    job = keyed.post(
        "/v1/jobs",
        {"agent_id": agent.body["id"], "input": {"text": "hi"}, "webhook_url": hook.url},
        headers=by_key,
    )
    assert job.status == 202, job
    assert api.wait_terminal(job.body["id"])["status"] == "succeeded"
    # Both signed deliveries (the endpoint's and the job's own webhook_url) went out.
    stack.within(DEADLINE_S, lambda: len(hook.requests) >= 2, "the receiver got 2 deliveries")

    refreshed = keyed.post(
        "/v1/auth/refresh", headers={"Authorization": f"Bearer {tokens['refresh_token']}"}
    )
    assert refreshed.status == 200, refreshed
    api.token = refreshed.body["access_token"]
    logout = api.post("/v1/auth/logout", {"refresh_token": tokens["refresh_token"]})
    assert logout.status == 204, logout
    return {
        "password": password,
        "failed login's password": wrong_password,
        "access token": tokens["access_token"],
        "refresh token": tokens["refresh_token"],
        "refreshed access token": refreshed.body["access_token"],
        "rotated refresh token": refreshed.body["refresh_token"],
        "forged token": forged,
        "API key": key,
        "unknown API key": bogus_key,
        "webhook secret": endpoint.body["secret"],
        "rotated webhook secret": rotated.body["secret"],
        "callback secret": callback.body["secret"],
    }


def _fragments(secret: str) -> list[str]:
    """The secret, and the parts that would still give it away if it were logged cut up:
    a JWT's signature, a key or secret without its prefix."""
    parts = [secret]
    if secret.count(".") == 2:
        parts.append(secret.rsplit(".", 1)[1])
    for prefix in ("cvk_", "whsec_"):
        if secret.startswith(prefix):
            parts.append(secret.removeprefix(prefix))
    return [part for part in parts if len(part) >= 16]

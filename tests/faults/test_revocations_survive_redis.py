"""Fault: Redis restarts (keeping nothing) after a logout and after a reused refresh token
revoked a login. The revocations are kept in PostgreSQL too (api/revocation_store.py):
once the stack answers again, the old tokens are still refused; before, they all worked
again, the refresh tokens for up to 30 days."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Servers
from tests.helpers import PASSWORD
from tests.stack import Api, Reply, Stack, stack_on

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

BACK_DEADLINE_S = 60.0


def _login(api: Api) -> dict[str, Any]:
    reply = api.post("/v1/auth/login", {"email": api.email, "password": PASSWORD})
    assert reply.status == 200, reply
    return dict(reply.body)


def _as(api: Api, token: str) -> Api:
    other = api.with_base(api.base_url)
    other.token = token
    return other


def _answer(stack: Stack, ask: Callable[[], Reply]) -> Reply:
    """The first answer that is not a 503: the web finds Redis again after a back-off,
    and a check may be unknown while another process reloads the revocations."""
    replies: list[Reply] = []

    def settled() -> Reply | None:
        reply = ask()
        replies.append(reply)
        return reply if reply.status != 503 else None

    answer: Reply = stack.within(BACK_DEADLINE_S, settled, lambda: f"503 only: {replies[-3:]}")
    return answer


def test_logged_out_and_reused_tokens_stay_refused_after_a_redis_restart(
    servers: Servers, worker_id: str, tmp_path: Path, report: Callable[..., None]
) -> None:
    # Every check asks Redis: a process trusts a "not revoked" for TOKEN_REVOCATION_RECHECK_S
    # otherwise, and which of the two gunicorn workers answers is not ours to choose.
    with stack_on(
        servers, worker_id, tmp_path, "revocations", TOKEN_REVOCATION_RECHECK_S="0"
    ) as scenario:
        stack, redis_server = scenario.stack, scenario.redis
        api = stack.start_web()
        with stack.logs_on_failure():
            api.sign_up()
            logged_out = _login(api)
            stolen = _login(api)  # a login whose retired refresh token comes back
            kept = _login(api)  # a login nobody revoked
            assert _as(api, logged_out["access_token"]).get("/v1/auth/me").status == 200
            reply = _as(api, logged_out["access_token"]).post(
                "/v1/auth/logout", {"refresh_token": logged_out["refresh_token"]}
            )
            assert reply.status == 204, reply
            rotated = _as(api, stolen["refresh_token"]).post("/v1/auth/refresh")
            assert rotated.status == 200, rotated
            successor = rotated.body
            assert _as(api, successor["access_token"]).get("/v1/auth/me").status == 200
            assert _as(api, successor["refresh_token"]).post("/v1/auth/refresh").status == 200
            reused = _as(api, stolen["refresh_token"]).post("/v1/auth/refresh")
            assert reused.status == 401, reused  # the login is revoked

            redis_server.restart()  # a new, empty server on the same port

            # Each asked until it is not a 503: the stack finds Redis again after a back-off.
            revoked = {
                "logged-out access": _as(api, logged_out["access_token"]).get,
                "reused login's access": _as(api, successor["access_token"]).get,
            }
            statuses = {
                name: _answer(stack, lambda get=get: get("/v1/auth/me")).status
                for name, get in revoked.items()
            }
            for name, token in {
                "logged-out refresh": logged_out["refresh_token"],
                "reused login's refresh": successor["refresh_token"],
            }.items():
                post = _as(api, token).post
                statuses[name] = _answer(stack, lambda post=post: post("/v1/auth/refresh")).status
            assert statuses == dict.fromkeys(statuses, 401), statuses
            # What nobody revoked still works.
            me = _answer(stack, lambda: _as(api, kept["access_token"]).get("/v1/auth/me"))
            assert me.status == 200, me
            again = _answer(stack, lambda: _as(api, kept["refresh_token"]).post("/v1/auth/refresh"))
            assert again.status == 200, again
            assert stack.log_count("web*", "revocations.reloaded") >= 1
            stack.assert_no_server_errors()
        report("revocations after a Redis restart", refused=len(statuses))

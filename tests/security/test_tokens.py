"""Tampered, expired and misused tokens are all one plain 401; a well-made token is not.

Each case is checked on a route guarded by its blueprint (`/v1/agents`) and on one that
authenticates in the view (`/v1/auth/me`).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import AuthClient, poll
from tests.ports import closed_port
from tests.security.conftest import client_at
from tests.security.support import claims_for, mint

# HS512 with our (HS256-sized) key is one of the forgeries: PyJWT warns while making it.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

GUARDED = ["/v1/agents", "/v1/auth/me"]
INVALID = "the token is invalid, expired or revoked"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _reclaim(token: str, **changes: Any) -> str:
    """The same header and signature over changed claims."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    return f"{header}.{_b64(claims)}.{signature}"


def _user_id(user: AuthClient) -> str:
    return str(user.get("/v1/auth/me").json["id"])


Forge = Callable[[AuthClient, AuthClient], str]

CASES: dict[str, Forge] = {
    "alg none": lambda a, _: mint(claims_for(_user_id(a)), key=None, alg="none"),
    "alg none, hand-made": lambda a, _: (
        f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims_for(_user_id(a)))}."
    ),
    "wrong key": lambda a, _: mint(claims_for(_user_id(a)), key="another-key-" + "y" * 40),
    "other algorithm, right key": lambda a, _: mint(claims_for(_user_id(a)), alg="HS512"),
    "signature stripped": lambda a, _: a.tokens["access_token"].rsplit(".", 1)[0] + ".",
    "expired": lambda a, _: mint(
        claims_for(_user_id(a), iat=int(time.time()) - 700, exp=int(time.time()) - 1)
    ),
    "not yet valid (nbf)": lambda a, _: mint(claims_for(_user_id(a), nbf=int(time.time()) + 600)),
    "claims changed: sub": lambda a, b: _reclaim(a.tokens["access_token"], sub=_user_id(b)),
    "claims changed: role": lambda a, _: _reclaim(a.tokens["access_token"], role="admin"),
    "claims changed: exp": lambda a, _: _reclaim(a.tokens["access_token"], exp=2**40),
    "refresh used as access": lambda a, _: a.tokens["refresh_token"],
    "wrong issuer": lambda a, _: mint(claims_for(_user_id(a), iss="someone-else")),
    # Signed with our key but not made by us: still refused, and never a 500.
    "no exp": lambda a, _: mint(claims_for(_user_id(a), exp=None)),
    "no jti": lambda a, _: mint(claims_for(_user_id(a), jti=None)),
    "no iss": lambda a, _: mint(claims_for(_user_id(a), iss=None)),
    "no nbf": lambda a, _: mint(claims_for(_user_id(a), nbf=None)),
    "sub not a user id": lambda a, _: mint(claims_for("root")),
    "numeric jti": lambda a, _: mint(claims_for(_user_id(a), jti=7)),
    "unknown type": lambda a, _: mint(claims_for(_user_id(a), type="admin")),
    "garbage": lambda a, _: "a.b.c",
}


def test_a_well_made_token_works(client, alice):
    """The control: the cases below fail for their one change, not for how they are made."""
    token = mint(claims_for(_user_id(alice)))
    for url in GUARDED:
        assert client.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 200


@pytest.mark.parametrize("case", sorted(CASES))
def test_tampered_tokens_are_401(client, alice, bob, case):
    token = CASES[case](alice, bob)
    for url in GUARDED:
        response = client.get(url, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, (case, url, response.json)
        assert response.mimetype == "application/problem+json"
        assert response.json["detail"] == INVALID  # never which check failed


def test_revoked_access_and_refresh_tokens_are_401(client, alice):
    access, refresh = alice.tokens["access_token"], alice.tokens["refresh_token"]
    assert alice.post("/v1/auth/logout", json={"refresh_token": refresh}).status_code == 204
    for url in GUARDED:
        response = client.get(url, headers={"Authorization": f"Bearer {access}"})
        assert response.status_code == 401
        assert response.json["detail"] == INVALID
    again = client.post("/v1/auth/refresh", headers={"Authorization": f"Bearer {refresh}"})
    assert again.status_code == 401


def test_an_access_token_cannot_refresh(client, alice):
    response = client.post("/v1/auth/refresh", headers=alice.headers)
    assert response.status_code == 401


def test_access_tokens_are_short_and_pinned(app, alice):
    header = json.loads(base64.urlsafe_b64decode(alice.tokens["access_token"].split(".")[0] + "=="))
    assert header["alg"] == "HS256"
    claims = json.loads(base64.urlsafe_b64decode(alice.tokens["access_token"].split(".")[1] + "=="))
    settings = app.extensions["conveyor"].settings
    assert claims["exp"] - claims["iat"] == settings.jwt_access_ttl_s <= 3600
    assert claims["iss"] == "conveyor" and claims["type"] == "access"
    assert alice.tokens["expires_in"] == settings.jwt_access_ttl_s


def _refresh(client: Any, token: str) -> Any:
    return client.post("/v1/auth/refresh", headers={"Authorization": f"Bearer {token}"})


def _me(client: Any, token: str) -> Any:
    return client.get("/v1/auth/me", headers={"Authorization": f"Bearer {token}"})


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_a_replay_after_the_grace_revokes_the_family(make_app):
    """The stolen token's second use, however soon after the first, once the grace is
    over: the retries it got meanwhile were the one same successor, and now the newest
    token of the chain fails too."""
    app = make_app(refresh_reuse_grace_s=0.5)
    client = client_at(app)
    alice = AuthClient.register(client, f"alice-{uuid.uuid4().hex[:8]}@example.com")
    stolen = alice.tokens["refresh_token"]
    newest = _refresh(client, stolen).json
    seen = set()

    def refused() -> bool:
        again = _refresh(client, stolen)
        if again.status_code == 200:
            seen.add(again.json["refresh_token"])
        return bool(again.status_code == 401)

    poll(refused, timeout=5, interval=0.1)
    assert seen <= {newest["refresh_token"]}  # within the grace: the same successor only
    assert _refresh(client, newest["refresh_token"]).status_code == 401
    assert _me(client, newest["access_token"]).status_code == 401


def test_without_a_grace_the_second_use_revokes_the_family(make_app):
    client = client_at(make_app(refresh_reuse_grace_s=0))
    alice = AuthClient.register(client, f"alice-{uuid.uuid4().hex[:8]}@example.com")
    token = alice.tokens["refresh_token"]
    newest = _refresh(client, token).json
    replay = _refresh(client, token)
    assert replay.status_code == 401
    assert replay.json["detail"] == INVALID
    assert _refresh(client, newest["refresh_token"]).status_code == 401


def test_a_refresh_token_from_before_families_refreshes_once(client, alice):
    """Tokens signed before this release have no `fam`: the first refresh starts their
    family (named by their id), so nobody is logged out by the deploy."""
    legacy = mint(claims_for(_user_id(alice), type="refresh", exp=int(time.time()) + 3600))
    assert "fam" not in _claims(legacy)
    rotated = _refresh(client, legacy)
    assert rotated.status_code == 200
    successor = rotated.json["refresh_token"]
    assert _claims(successor)["fam"] == _claims(legacy)["jti"]
    newest = _refresh(client, successor).json["refresh_token"]
    assert _refresh(client, legacy).status_code == 401  # its successor was used: a reuse
    assert _refresh(client, newest).status_code == 401
    assert _refresh(client, alice.tokens["refresh_token"]).status_code == 200  # another login


def test_an_access_token_from_before_families_keeps_working(client, alice):
    legacy = mint(claims_for(_user_id(alice)))
    assert "fam" not in _claims(legacy)
    assert _me(client, legacy).status_code == 200


def test_without_redis_a_refresh_is_503_and_rotates_nothing(make_app, app, alice):
    """No refresh succeeds unless its rotation is recorded: without Redis it is a 503, as
    it was; the token is not spent, and refreshes once Redis is back."""
    token = alice.tokens["refresh_token"]
    cut_off = client_at(make_app(redis_url=f"redis://127.0.0.1:{closed_port()}/0"))
    response = _refresh(cut_off, token)
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert "Retry-After" in response.headers
    assert "refresh_token" not in response.get_data(as_text=True)
    first = _refresh(client_at(app), token)
    assert first.status_code == 200
    assert _refresh(client_at(app), first.json["refresh_token"]).status_code == 200

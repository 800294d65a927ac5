"""Revocations are committed to PostgreSQL before they are answered, so a Redis that loses
them can be filled again (api/revocation_store.py; the restart itself:
tests/faults/test_revocations_survive_redis.py)."""

import jwt
from sqlalchemy import text


def _refresh(client, refresh_token):  # type: ignore[no-untyped-def]
    return client.post("/v1/auth/refresh", headers={"Authorization": f"Bearer {refresh_token}"})


def _claims(token):
    return jwt.decode(token, options={"verify_signature": False})


def _durable(session_factory, owner_email):
    """The revocations PostgreSQL keeps for the account: (kind, revoked id, expires at)."""
    with session_factory() as session:
        rows = session.execute(
            text(
                "SELECT r.kind, r.revoked_id, r.expires_at FROM token_revocations r"
                " JOIN users u ON u.id = r.owner_id WHERE u.email = :email"
            ),
            {"email": owner_email},
        )
        return {(kind, revoked_id): expires_at for kind, revoked_id, expires_at in rows}


def test_a_logout_is_kept_in_postgresql_before_its_204(client, alice, session_factory):
    """Redis may forget it (a restart without persistence); PostgreSQL is where it is
    loaded from again (tests/faults/test_revocations_survive_redis.py)."""
    claims = _claims(alice.tokens["access_token"])
    assert alice.post("/v1/auth/logout").status_code == 204
    kept = _durable(session_factory, alice.email)
    assert set(kept) == {("token", claims["jti"]), ("family", claims["fam"])}
    assert kept[("token", claims["jti"])].timestamp() == claims["exp"]
    days = (kept[("family", claims["fam"])] - kept[("token", claims["jti"])]).days
    assert days >= 29  # as long as the login's newest refresh token could live


def test_a_login_revoked_for_a_reused_refresh_token_is_kept_in_postgresql(
    client, alice, session_factory
):
    first = alice.tokens["refresh_token"]
    second = _refresh(client, first).json
    _refresh(client, second["refresh_token"])
    assert _refresh(client, first).status_code == 401  # a reuse: the login is revoked
    family = _claims(alice.tokens["access_token"])["fam"]
    assert set(_durable(session_factory, alice.email)) == {("family", family)}

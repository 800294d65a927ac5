"""CORS from CORS_ORIGINS: listed origins only, preflights without credentials, and never
`Access-Control-Allow-Credentials`, so a wildcard cannot be combined with credentials."""

from __future__ import annotations

import pytest

from settings import Settings
from tests.security.conftest import client_at

APP_ORIGIN = "https://app.example.com"
PREFLIGHT = {
    "Origin": APP_ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


@pytest.fixture
def cors_client(make_app):  # type: ignore[no-untyped-def]
    return client_at(make_app(cors_origins=f"{APP_ORIGIN}, https://admin.example.com"))


def test_a_listed_origin_is_granted(cors_client, alice):
    response = cors_client.get("/v1/agents", headers={"Origin": APP_ORIGIN, **alice.headers})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "ETag" in response.headers["Access-Control-Expose-Headers"]
    assert "RateLimit-Remaining" in response.headers["Access-Control-Expose-Headers"]
    assert "WWW-Authenticate" in response.headers["Access-Control-Expose-Headers"]
    assert "Origin" in response.headers["Vary"]
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_an_unlisted_origin_gets_no_grant(cors_client):
    for origin in ("https://evil.example.com", "https://app.example.com.evil.com", "null"):
        response = cors_client.get("/healthz", headers={"Origin": origin})
        assert response.status_code == 200
        assert "Access-Control-Allow-Origin" not in response.headers
        assert "Origin" in response.headers["Vary"]


def test_preflight_needs_no_credentials(cors_client):
    response = cors_client.options("/v1/jobs", headers=PREFLIGHT)
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    assert {"authorization", "content-type", "x-api-key", "if-match"} <= {
        h.strip() for h in allowed.split(",")
    }
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_preflight_from_an_unlisted_origin_is_not_granted(cors_client):
    response = cors_client.options("/v1/jobs", headers={**PREFLIGHT, "Origin": "https://x.test"})
    assert response.status_code == 204
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Methods" not in response.headers


def test_no_origins_no_cors(client):
    response = client.get("/healthz", headers={"Origin": APP_ORIGIN})
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Vary" not in response.headers


def test_wildcard_in_development_never_with_credentials(make_app, alice):
    client = client_at(make_app(conveyor_env="development", cors_origins="*"))
    response = client.get("/v1/auth/me", headers={"Origin": APP_ORIGIN, **alice.headers})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response.headers
    preflight = client.options("/v1/agents", headers=PREFLIGHT)
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in preflight.headers


def test_wildcard_is_refused_outside_development():
    with pytest.raises(ValueError, match="CORS_ORIGINS may not contain"):
        Settings(conveyor_env="production", jwt_secret_key="k" * 40, cors_origins="*")

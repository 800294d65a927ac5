import pytest

from tests.helpers import PASSWORD, AuthClient


def test_register_answers_201_without_secrets(client):
    response = client.post(
        "/v1/auth/register", json={"email": "New@Example.com", "password": PASSWORD}
    )
    assert response.status_code == 201
    assert response.json["email"] == "new@example.com"
    assert set(response.json) == {"id", "email", "role"} or set(response.json) <= {
        "id",
        "email",
        "role",
    }
    assert PASSWORD not in response.get_data(as_text=True)


def test_register_twice_is_409_case_insensitive(client, alice):
    response = client.post(
        "/v1/auth/register", json={"email": alice.email.upper(), "password": PASSWORD}
    )
    assert response.status_code == 409


@pytest.mark.parametrize(
    "body",
    [
        {"email": "a@example.com", "password": "short"},
        {"email": "not-an-email", "password": PASSWORD},
        {"email": "a@example.com"},
        {"email": "a@example.com", "password": PASSWORD, "role": "admin"},
    ],
)
def test_register_rejects_bad_input(client, body):
    assert client.post("/v1/auth/register", json=body).status_code == 422


@pytest.mark.parametrize("email", ["not-an-email", "a b@example.com", "a@b", "@example.com"])
def test_an_address_that_is_no_email_is_refused_in_words(client, email):
    """The refusal quoted the schema's regex ("String should match pattern '^[^@\\s]...")."""
    response = client.post("/v1/auth/register", json={"email": email, "password": PASSWORD})
    assert response.status_code == 422
    assert response.json["errors"] == [
        {
            "location": "body",
            "field": "email",
            "detail": "must be an email address, like name@example.com",
        }
    ]


def test_registration_can_be_turned_off(app, client):
    app.extensions["conveyor"].settings.registration_enabled = False
    response = client.post(
        "/v1/auth/register", json={"email": "x@example.com", "password": PASSWORD}
    )
    assert response.status_code == 403


def test_login_with_wrong_password_is_401(client, alice):
    response = client.post("/v1/auth/login", json={"email": alice.email, "password": "x" * 12})
    assert response.status_code == 401
    unknown = client.post("/v1/auth/login", json={"email": "no@example.com", "password": "x" * 12})
    assert unknown.status_code == 401
    assert response.json["detail"] == unknown.json["detail"]


def test_login_answers_tokens(alice):
    assert alice.tokens["token_type"] == "Bearer"
    assert alice.tokens["expires_in"] > 0
    assert alice.tokens["access_token"] != alice.tokens["refresh_token"]


@pytest.mark.parametrize("url", ["/v1/agents", "/v1/jobs", "/v1/auth/me"])
def test_protected_routes_need_a_token(client, url):
    response = client.get(url)
    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"


@pytest.mark.parametrize(
    "header",
    ["Bearer nonsense", "Bearer a.b.c", "Basic dXNlcjpwYXNz", "Bearer"],
)
def test_garbage_tokens_are_401(client, header):
    assert client.get("/v1/auth/me", headers={"Authorization": header}).status_code == 401


def test_refresh_token_is_not_an_access_token(client, alice):
    refresh = alice.tokens["refresh_token"]
    response = client.get("/v1/auth/me", headers={"Authorization": f"Bearer {refresh}"})
    assert response.status_code == 401


def test_refresh_gives_a_working_access_token(client, alice):
    refresh = alice.tokens["refresh_token"]
    response = client.post("/v1/auth/refresh", headers={"Authorization": f"Bearer {refresh}"})
    assert response.status_code == 200
    access = response.json["access_token"]
    me = client.get("/v1/auth/me", headers={"Authorization": f"Bearer {access}"})
    assert me.json["email"] == alice.email


def _refresh(client, refresh_token):  # type: ignore[no-untyped-def]
    return client.post("/v1/auth/refresh", headers={"Authorization": f"Bearer {refresh_token}"})


def _me(client, access_token):  # type: ignore[no-untyped-def]
    return client.get("/v1/auth/me", headers={"Authorization": f"Bearer {access_token}"})


def _claims(token: str) -> dict:
    import jwt

    return dict(jwt.decode(token, options={"verify_signature": False}))


def test_refresh_answers_a_new_refresh_token_of_the_same_login(client, alice):
    first = alice.tokens["refresh_token"]
    response = _refresh(client, first)
    assert response.status_code == 200
    second = response.json["refresh_token"]
    assert second != first
    assert _claims(second)["fam"] == _claims(first)["fam"] == _claims(first)["jti"]
    assert _claims(response.json["access_token"])["fam"] == _claims(first)["fam"]
    assert _me(client, response.json["access_token"]).status_code == 200
    third = _refresh(client, second)
    assert third.status_code == 200
    assert third.json["refresh_token"] not in (first, second)


def test_a_retry_within_the_grace_gets_the_same_successor(client, alice):
    """A client whose answer was lost sends its token again at once: it is given the very
    refresh token it missed, not a second one, so the login stays one chain."""
    first = alice.tokens["refresh_token"]
    answers = [_refresh(client, first) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert len({a.json["refresh_token"] for a in answers}) == 1
    assert len({a.json["access_token"] for a in answers}) == 3  # each its own access token
    successor = answers[0].json["refresh_token"]
    assert _refresh(client, successor).status_code == 200
    for answer in answers:
        assert _me(client, answer.json["access_token"]).status_code == 200


def test_a_retired_refresh_token_sent_again_revokes_its_whole_login(client, alice):
    """Once its successor has been used, a retired token coming back is a stolen copy (or
    its owner after a thief): every token of its login stops working, the newest too."""
    first = alice.tokens["refresh_token"]
    second = _refresh(client, first).json
    third = _refresh(client, second["refresh_token"]).json
    replay = _refresh(client, first)
    assert replay.status_code == 401
    assert replay.json["detail"] == "the token is invalid, expired or revoked"  # as any other
    assert _refresh(client, third["refresh_token"]).status_code == 401
    assert _refresh(client, second["refresh_token"]).status_code == 401
    for access in (alice.tokens["access_token"], second["access_token"], third["access_token"]):
        assert _me(client, access).status_code == 401


def test_another_login_of_the_same_user_outlives_a_revoked_one(client, alice):
    login = client.post("/v1/auth/login", json={"email": alice.email, "password": PASSWORD})
    other = login.json
    first = alice.tokens["refresh_token"]
    _refresh(client, _refresh(client, first).json["refresh_token"])
    assert _refresh(client, first).status_code == 401  # alice's first login is revoked
    assert _me(client, other["access_token"]).status_code == 200
    assert _refresh(client, other["refresh_token"]).status_code == 200


def test_access_token_cannot_refresh(client, alice):
    response = client.post("/v1/auth/refresh", headers=alice.headers)
    assert response.status_code == 401


def test_logout_revokes_access_and_refresh(client, alice):
    refresh = alice.tokens["refresh_token"]
    response = alice.post("/v1/auth/logout", json={"refresh_token": refresh})
    assert response.status_code == 204
    assert alice.get("/v1/auth/me").status_code == 401
    again = client.post("/v1/auth/refresh", headers={"Authorization": f"Bearer {refresh}"})
    assert again.status_code == 401


def test_logout_with_a_refresh_token_revokes_its_whole_login(client, alice, bob):
    """Even with the login's first refresh token, rotated twice since: the refresh and
    access tokens descended from it all stop working; another login does not."""
    first = alice.tokens["refresh_token"]
    second = _refresh(client, first).json
    third = _refresh(client, second["refresh_token"]).json
    other = client.post("/v1/auth/login", json={"email": alice.email, "password": PASSWORD}).json
    assert alice.post("/v1/auth/logout", json={"refresh_token": first}).status_code == 204
    assert _refresh(client, third["refresh_token"]).status_code == 401
    assert _me(client, third["access_token"]).status_code == 401
    assert _me(client, second["access_token"]).status_code == 401
    assert _me(client, other["access_token"]).status_code == 200
    assert _refresh(client, other["refresh_token"]).status_code == 200
    assert _refresh(client, bob.tokens["refresh_token"]).status_code == 200


def test_logout_without_body_ends_the_whole_login(client, alice, bob):
    """The access token's login goes with it: its refresh token stopped working only when
    the client remembered to send it. Another login of the same account stays."""
    other = client.post("/v1/auth/login", json={"email": alice.email, "password": PASSWORD}).json
    assert alice.post("/v1/auth/logout").status_code == 204
    assert alice.get("/v1/auth/me").status_code == 401
    assert _refresh(client, alice.tokens["refresh_token"]).status_code == 401
    assert _me(client, other["access_token"]).status_code == 200
    assert _refresh(client, other["refresh_token"]).status_code == 200
    assert _refresh(client, bob.tokens["refresh_token"]).status_code == 200


@pytest.mark.parametrize("which", ["bob's", "garbage", "alice's access token"])
def test_logout_with_a_refresh_token_not_of_this_account_is_422_and_revokes_nothing(
    client, alice, bob, which
):
    """It was a 401, which tells the client its presented token failed: one that believed
    it dropped an access token that stayed valid."""
    token = {
        "bob's": bob.tokens["refresh_token"],
        "garbage": "not.a.token",
        "alice's access token": alice.tokens["access_token"],
    }[which]
    response = alice.post("/v1/auth/logout", json={"refresh_token": token})
    assert response.status_code == 422
    assert response.json["errors"][0]["field"] == "refresh_token"
    assert alice.get("/v1/auth/me").status_code == 200
    still = client.post(
        "/v1/auth/refresh", headers={"Authorization": f"Bearer {bob.tokens['refresh_token']}"}
    )
    assert still.status_code == 200


def test_logout_with_a_refresh_token_revoked_already_still_logs_out(client, alice):
    refresh = alice.tokens["refresh_token"]
    assert alice.post("/v1/auth/logout", json={"refresh_token": refresh}).status_code == 204
    login = client.post("/v1/auth/login", json={"email": alice.email, "password": PASSWORD})
    alice.tokens = login.json
    again = alice.post("/v1/auth/logout", json={"refresh_token": refresh})
    assert again.status_code == 204
    assert alice.get("/v1/auth/me").status_code == 401


def test_tokens_signed_with_another_key_are_401(client, alice, app):
    import jwt

    claims = jwt.decode(alice.tokens["access_token"], options={"verify_signature": False})
    forged = jwt.encode(claims, "another-key-" + "y" * 40, algorithm="HS256")
    none_alg = jwt.encode(claims, None, algorithm="none")
    for token in (forged, none_alg):
        response = client.get("/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401


def test_me_shows_role(alice):
    assert alice.get("/v1/auth/me").json["role"] == "user"


def test_second_user_gets_distinct_identity(client, alice):
    other = AuthClient.register(client, "other@example.com")
    assert other.get("/v1/auth/me").json["id"] != alice.get("/v1/auth/me").json["id"]


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_read_in_any_case(client, alice, scheme):
    """RFC 9110 (11.1): the scheme is case-insensitive; `bearer` was a 401."""
    access = {"Authorization": f"{scheme} {alice.tokens['access_token']}"}
    assert client.get("/v1/auth/me", headers=access).status_code == 200
    refresh = {"Authorization": f"{scheme} {alice.tokens['refresh_token']}"}
    assert client.post("/v1/auth/refresh", headers=refresh).status_code == 200


CHALLENGE = 'Bearer realm="conveyor"'
INVALID = 'Bearer realm="conveyor", error="invalid_token"'


@pytest.mark.parametrize(
    ("method", "url", "headers", "challenge"),
    [
        ("GET", "/v1/auth/me", {}, CHALLENGE),
        ("GET", "/v1/jobs", {"Authorization": "Bearer nonsense"}, INVALID),
        ("GET", "/v1/jobs", {"Authorization": "bearer nonsense"}, INVALID),
        ("GET", "/v1/jobs", {"Authorization": "Basic dXNlcjpwYXNz"}, CHALLENGE),
        ("GET", "/v1/agents", {"X-API-Key": "cvk_nothing"}, CHALLENGE),
        ("POST", "/v1/auth/refresh", {}, CHALLENGE),
        ("POST", "/v1/auth/logout", {"Authorization": "Bearer a.b.c"}, INVALID),
    ],
)
def test_every_401_carries_a_bearer_challenge(client, method, url, headers, challenge):
    """RFC 9110 (11.6.1): a 401 must say how to authenticate; ours said nothing. An invalid
    bearer token is named as such (RFC 6750, 3); without one, no error is given."""
    response = client.open(url, method=method, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == challenge


def test_a_401_for_an_api_key_where_a_token_is_needed_asks_for_the_token(client, alice):
    key = alice.post("/v1/api-keys", json={"name": "k"}).json["key"]
    response = client.get("/v1/api-keys", headers={"X-API-Key": key})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == CHALLENGE


def test_a_wrong_password_is_a_401_with_a_challenge_too(client, alice):
    """Every 401 carries one (RFC 9110 says MUST); the login's says which scheme the API
    takes once logged in."""
    response = client.post("/v1/auth/login", json={"email": alice.email, "password": "x" * 12})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == CHALLENGE


def test_requests_with_one_token_share_its_principal(app, alice):
    """A bearer token's principal is made once (a UUID parsed, an object built) and shared
    by the token's requests; revocation is still checked per request
    (test_logout_revokes_access_and_refresh)."""
    from flask import g

    from api.auth import identify

    principals = []
    for _ in range(2):
        with app.test_request_context("/v1/jobs", headers=alice.headers):
            identify()
            principals.append(g.principal)
    assert principals[0] is principals[1]


@pytest.mark.parametrize(
    ("method", "url", "with_key", "detail"),
    [
        ("POST", "/v1/auth/refresh", False, "send Authorization: Bearer <refresh token>"),
        (
            "POST",
            "/v1/auth/refresh",
            True,
            "this route takes Authorization: Bearer <refresh token>, not an API key",
        ),
        ("POST", "/v1/auth/logout", False, "send Authorization: Bearer <access token>"),
        ("GET", "/v1/api-keys", False, "send Authorization: Bearer <access token>"),
        (
            "GET",
            "/v1/api-keys",
            True,
            "this route takes Authorization: Bearer <access token>, not an API key",
        ),
        (
            "GET",
            "/v1/agents",
            False,
            "send Authorization: Bearer <access token> or X-API-Key: <key>",
        ),
    ],
)
def test_a_401_asks_for_the_credential_the_route_takes(
    client, alice, method, url, with_key, detail
):
    """Refresh, logout and key management told a caller without a credential to send an
    access token or an API key, though they take neither (refresh) or no key; refresh
    told a caller that sent a key to send a key."""
    headers = {}
    if with_key:
        headers["X-API-Key"] = alice.post("/v1/api-keys", json={"name": "k"}).json["key"]
    response = client.open(url, method=method, headers=headers)
    assert response.status_code == 401
    assert response.json["detail"] == detail
    assert response.headers["WWW-Authenticate"] == CHALLENGE


def test_register_says_where_the_account_is_read(client):
    """Every other create's 201 carries `Location`; register's had none. The account is
    read at `/v1/auth/me`, with the tokens a login gives."""
    response = client.post(
        "/v1/auth/register", json={"email": "l@example.com", "password": PASSWORD}
    )
    assert response.status_code == 201
    assert response.headers["Location"] == "/v1/auth/me"
    user = AuthClient(
        client,
        "l@example.com",
        client.post("/v1/auth/login", json={"email": "l@example.com", "password": PASSWORD}).json,
    )
    assert user.get(response.headers["Location"]).json["id"] == response.json["id"]
    declared = client.get("/openapi.json").json["paths"]["/v1/auth/register"]["post"]
    assert "Location" in declared["responses"]["201"]["headers"]

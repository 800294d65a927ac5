"""Rate limits on the test's Redis: per email and per address on login and register, per user
everywhere else, the 429 problem and its headers, proxies, and Redis being away.

Each test's clients come from random addresses and its users are new, so counters that
other tests left in the worker's Redis never meet these."""

from __future__ import annotations

import ipaddress
import random
import uuid

import pytest

from api.gate import Gate
from api.rate_limits import client_ip, trusted_networks
from tests.helpers import PASSWORD, WINDOWS_START, AuthClient, Clock
from tests.ports import closed_port
from tests.security.conftest import client_at
from tests.security.support import new_key

FREE = "100000/minute"


def _email() -> str:
    return f"limits-{uuid.uuid4().hex[:10]}@example.com"


def _login(client, email: str, password: str = "wrong password!"):  # type: ignore[no-untyped-def]  # noqa: S107
    return client.post("/v1/auth/login", json={"email": email, "password": password})


def assert_limited(response, amount: int, window_s: int = 60) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 429, response.json
    assert response.mimetype == "application/problem+json"
    assert response.json["type"] == "/problems/rate-limited"
    assert response.json["status"] == 429
    # The sliding window can hold a caller up to two fixed windows (a limit of 1, say).
    assert 1 <= int(response.headers["Retry-After"]) <= 2 * window_s
    assert response.headers["RateLimit-Limit"] == str(amount)
    assert response.headers["RateLimit-Remaining"] == "0"
    assert response.headers["RateLimit-Reset"] == response.headers["Retry-After"]
    assert response.headers["RateLimit-Policy"] == f"{amount};w={window_s}"


def test_login_is_limited_per_email_from_any_address(make_app):
    app = make_app(rate_limit_auth_per_email="4/minute", rate_limit_auth_per_ip=FREE)
    here, there = client_at(app), client_at(app)
    email = _email()
    registered = here.post("/v1/auth/register", json={"email": email, "password": PASSWORD})
    assert registered.status_code == 201  # 1 of 4: register counts too
    assert [_login(c, email).status_code for c in (here, there, here)] == [401, 401, 401]

    # The right password no longer helps, from either address, in any letter case.
    assert_limited(_login(there, email, PASSWORD), amount=4)
    assert_limited(_login(here, email.upper(), PASSWORD), amount=4)
    # Another account from the same addresses is not held back.
    assert _login(here, _email()).status_code == 401


def test_login_and_register_are_limited_per_address(make_app):
    app = make_app(rate_limit_auth_per_ip="5/minute", rate_limit_auth_per_email=FREE)
    attacker, bystander = client_at(app), client_at(app)
    answers = [_login(attacker, _email()).status_code for _ in range(5)]
    assert answers == [401] * 5
    assert_limited(_login(attacker, _email()), amount=5)
    new_account = {"email": _email(), "password": PASSWORD}
    assert_limited(attacker.post("/v1/auth/register", json=new_account), amount=5)
    assert bystander.post("/v1/auth/register", json=new_account).status_code == 201


def test_other_routes_are_limited_per_user_whatever_the_credential(make_app):
    app = make_app(rate_limit_default="6/minute")
    alice = AuthClient.register(client_at(app), _email())  # register, login: alice's address
    bob = AuthClient.register(client_at(app), _email())
    keyed = new_key(alice)  # 1 of alice's 6
    remaining = []
    for who in (alice, keyed, alice, keyed, alice):
        response = who.get("/v1/agents")
        assert response.status_code == 200
        remaining.append(int(response.headers["RateLimit-Remaining"]))
    assert remaining == [4, 3, 2, 1, 0]
    assert_limited(alice.get("/v1/agents"), amount=6)
    assert_limited(keyed.get("/v1/auth/me"), amount=6)
    assert bob.get("/v1/agents").status_code == 200
    # Alice's address is not alice: a request without credentials from it still counts alone.
    assert alice.client.get("/v1/agents").status_code == 401


def test_requests_without_valid_credentials_count_per_address(make_app):
    app = make_app(rate_limit_default="3/minute")
    client = client_at(app)
    bad_token = {"Authorization": "Bearer not-a-token"}
    answers = [
        client.get("/v1/agents").status_code,
        client.get("/v1/jobs", headers=bad_token).status_code,
        client.get("/v1/agents", headers={"X-API-Key": "cvk_guess"}).status_code,
    ]
    assert answers == [401, 401, 401]
    assert_limited(client.get("/v1/documents", headers=bad_token), amount=3)
    assert client_at(app).get("/v1/agents").status_code == 401


def test_operational_endpoints_are_not_limited(make_app):
    app = make_app(rate_limit_default="2/minute")
    client = client_at(app)
    for _ in range(5):
        response = client.get("/healthz")
        assert response.status_code == 200
        assert "RateLimit-Limit" not in response.headers
    assert client.get("/openapi.json").status_code == 200


def test_forwarded_for_counts_only_behind_a_trusted_proxy(make_app):
    app = make_app(rate_limit_default="2/minute", trusted_proxies="127.0.0.0/8")
    proxy = client_at(app, "127.0.0.1")
    one, other = "203.0.113.5", "203.0.113.6"

    def via_proxy(forwarded: str):  # type: ignore[no-untyped-def]
        return proxy.get("/v1/agents", headers={"X-Forwarded-For": forwarded})

    assert [via_proxy(one).status_code, via_proxy(one).status_code] == [401, 401]
    assert_limited(via_proxy(one), amount=2)
    # A client cannot escape by prepending hops: the proxy appended the address it saw.
    assert_limited(via_proxy(f"198.51.100.1, {one}"), amount=2)
    assert via_proxy(other).status_code == 401

    # From an untrusted peer the header is ignored: every "client" is that peer.
    direct = client_at(app)
    answers = [
        direct.get("/v1/agents", headers={"X-Forwarded-For": f"192.0.2.{n}"}).status_code
        for n in range(3)
    ]
    assert answers == [401, 401, 429]


def _nets(*cidrs: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(c) for c in cidrs]


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("203.0.113.9", ["1.2.3.4"], [], "203.0.113.9"),
        ("203.0.113.9", ["1.2.3.4"], ["10.0.0.0/8"], "203.0.113.9"),
        ("10.0.0.2", ["1.2.3.4"], ["10.0.0.0/8"], "1.2.3.4"),
        ("10.0.0.2", ["6.6.6.6, 1.2.3.4"], ["10.0.0.0/8"], "1.2.3.4"),
        ("10.0.0.2", ["1.2.3.4, 10.0.0.7"], ["10.0.0.0/8"], "1.2.3.4"),
        ("10.0.0.2", ["1.2.3.4", "10.0.0.7"], ["10.0.0.0/8"], "1.2.3.4"),
        ("10.0.0.2", [], ["10.0.0.0/8"], "10.0.0.2"),
        ("10.0.0.2", ["10.0.0.5"], ["10.0.0.0/8"], "10.0.0.5"),
        ("10.0.0.2", ["2001:db8::1"], ["10.0.0.0/8"], "2001:db8::/64"),
        ("::1", ["1.2.3.4"], ["::1/128"], "1.2.3.4"),
        ("::1", ["1.2.3.4"], ["127.0.0.0/8"], "::/64"),
        (None, ["1.2.3.4"], ["10.0.0.0/8"], "unknown"),
        ("10.0.0.2", ["not-an-address"], ["10.0.0.0/8"], "not-an-address"),
        # An IPv4 client of a dual-stack listener is its IPv4 address, as peer and as hop,
        # and a mapped proxy is trusted by its IPv4 network.
        ("::ffff:203.0.113.9", [], [], "203.0.113.9"),
        ("::ffff:203.0.113.9", ["1.2.3.4"], ["10.0.0.0/8"], "203.0.113.9"),
        ("::ffff:10.0.0.5", ["1.2.3.4"], ["10.0.0.0/8"], "1.2.3.4"),
        ("10.0.0.2", ["::ffff:1.2.3.4"], ["10.0.0.0/8"], "1.2.3.4"),
        ("10.0.0.2", ["1.2.3.4, ::ffff:10.0.0.7"], ["10.0.0.0/8"], "1.2.3.4"),
        # Hops some proxies write with a port are their address.
        ("10.0.0.2", ["1.2.3.4:5678"], ["10.0.0.0/8"], "1.2.3.4"),
        ("10.0.0.2", ["1.2.3.4:5678, 10.0.0.7:443"], ["10.0.0.0/8"], "1.2.3.4"),
        ("10.0.0.2", ["[2001:db8:1:2::1]:443"], ["10.0.0.0/8"], "2001:db8:1:2::/64"),
        ("10.0.0.2", ["[2001:db8:1:2::1]"], ["10.0.0.0/8"], "2001:db8:1:2::/64"),
        ("10.0.0.2", ["[::ffff:1.2.3.4]:80"], ["10.0.0.0/8"], "1.2.3.4"),
        ("10.0.0.2", ["1.2.3.4:http"], ["10.0.0.0/8"], "1.2.3.4:http"),
        ("10.0.0.2", ["[2001:db8::1]x"], ["10.0.0.0/8"], "[2001:db8::1]x"),
        # An IPv6 client counts by its /64, whatever the rest of its address.
        ("2001:db8:1:2::99", [], [], "2001:db8:1:2::/64"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", [], [], "2001:db8:1:2::/64"),
        ("fe80::1%eth0", [], [], "fe80::/64"),
        ("2001:db8:1:2::99", [], ["2001:db8:1:2::99/128"], "2001:db8:1:2::/64"),
        ("2001:db8:1:2::99", ["2001:db8:7:7::1"], ["2001:db8:1:2::/64"], "2001:db8:7:7::/64"),
    ],
)
def test_client_ip(peer, forwarded, trusted, expected):
    assert client_ip(peer, forwarded, _nets(*trusted)) == expected


def test_a_proxy_configured_by_its_mapped_address_is_trusted_by_its_ipv4_network():
    trusted = trusted_networks(_nets("::ffff:10.0.0.0/104", "2001:db8::/32"))
    assert trusted == _nets("10.0.0.0/8", "2001:db8::/32")
    assert client_ip("::ffff:10.0.0.5", ["1.2.3.4"], trusted) == "1.2.3.4"
    assert client_ip("10.0.0.5", ["1.2.3.4"], trusted) == "1.2.3.4"


def _random_64() -> str:
    """The prefix of a /64 no other test uses: `2001:db8:x:y:`."""
    return f"2001:db8:{random.randrange(1 << 16):x}:{random.randrange(1 << 16):x}:"


def test_one_ipv6_64_or_one_ipv4_client_however_written_shares_one_limit(make_app):
    app = make_app(rate_limit_default="2/minute", trusted_proxies="127.0.0.0/8")
    prefix = _random_64()
    first, second = client_at(app, prefix + ":1"), client_at(app, prefix + "abcd:1:2:3")
    assert [first.get("/v1/agents").status_code for _ in range(2)] == [401, 401]
    assert_limited(second.get("/v1/agents"), amount=2)
    assert client_at(app, _random_64() + ":1").get("/v1/agents").status_code == 401

    # An IPv4 client seen through a dual-stack listener, directly, and by a proxy that
    # writes the port: one client.
    ipv4 = f"198.18.{random.randrange(256)}.{random.randrange(1, 255)}"
    assert client_at(app, "::ffff:" + ipv4).get("/v1/agents").status_code == 401
    assert client_at(app, ipv4).get("/v1/agents").status_code == 401
    proxy = client_at(app, "::ffff:127.0.0.1")
    assert_limited(proxy.get("/v1/agents", headers={"X-Forwarded-For": ipv4 + ":4711"}), 2)


def test_without_redis_limits_hold_per_process_and_nothing_fails(make_app, app, capsys):
    """Redis unreachable: login still answers, limits still bite (in this process's memory,
    with a warning), and token checks answer 503, not 500."""
    alice = AuthClient.register(client_at(app), _email())
    keyed = new_key(alice)  # made while Redis is there
    port = closed_port()
    cut_off = make_app(
        redis_url=f"redis://127.0.0.1:{port}/0",
        rate_limit_auth_per_ip="3/minute",
        rate_limit_auth_per_email=FREE,
    )
    client = client_at(cut_off)
    assert [_login(client, alice.email).status_code for _ in range(3)] == [401, 401, 401]
    assert_limited(_login(client, alice.email), amount=3)
    assert "gate.redis_unavailable" in capsys.readouterr().out

    keyed_cut_off = client_at(cut_off)
    assert keyed_cut_off.get("/v1/agents", headers=keyed.headers).status_code == 200
    by_token = keyed_cut_off.get("/v1/agents", headers=alice.headers)
    assert by_token.status_code == 503
    assert by_token.json["type"] != "/problems/internal-error"


def test_several_limits_are_checked_together_and_the_tightest_is_reported(make_app):
    app = make_app(rate_limit_default="5/minute;3/hour")
    alice = AuthClient.register(client_at(app), _email())
    answers = [alice.get("/v1/agents") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.headers["RateLimit-Remaining"] for a in answers] == ["2", "1", "0"]
    assert answers[0].headers["RateLimit-Policy"] == "3;w=3600"
    assert_limited(alice.get("/v1/agents"), amount=3, window_s=3600)


def test_a_revoked_token_counts_for_its_address_not_its_user(make_app):
    app = make_app(rate_limit_default="3/minute")
    alice = AuthClient.register(client_at(app), _email())  # register, login: alice's address
    stolen = dict(alice.headers)
    assert alice.post("/v1/auth/logout", headers=stolen).status_code == 204  # 1 of alice's 3
    thief = client_at(app)
    answers = [thief.get("/v1/agents", headers=stolen).status_code for _ in range(3)]
    assert answers == [401, 401, 401]
    assert_limited(thief.get("/v1/agents", headers=stolen), amount=3)
    # Alice's own new token still has her 2 requests left.
    again = client_at(app)
    tokens = again.post("/v1/auth/login", json={"email": alice.email, "password": PASSWORD})
    fresh = AuthClient(again, alice.email, tokens.json)
    assert fresh.get("/v1/agents").headers["RateLimit-Remaining"] == "1"


def test_without_redis_api_key_requests_are_limited_in_process_memory(make_app, app):
    alice = AuthClient.register(client_at(app), _email())
    keyed = new_key(alice)
    cut_off = make_app(
        redis_url=f"redis://127.0.0.1:{closed_port()}/0", rate_limit_default="2/minute"
    )
    client = client_at(cut_off)
    answers = [client.get("/v1/agents", headers=keyed.headers) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.headers["RateLimit-Remaining"] for a in answers] == ["1", "0"]
    assert_limited(client.get("/v1/agents", headers=keyed.headers), amount=2)


def test_a_client_that_waits_the_retry_after_it_was_given_is_let_in(make_app):
    """5/minute, five requests at second 50 of a window, refused at 55. The window rolls over
    5 s later, but its five still weigh 5 * 59/60 at second 61: one request fits only once
    they weigh 4, at second 12 of the next window, 17 s on."""
    app = make_app(rate_limit_default="5/minute")
    runtime = app.extensions["conveyor"]
    clock = Clock(WINDOWS_START + 50)
    runtime.gate = Gate(runtime.redis, runtime.settings.rate_limit_default, clock=clock)
    client = client_at(app)
    answers = [client.get("/v1/agents") for _ in range(5)]
    assert [a.status_code for a in answers] == [401] * 5
    assert [a.headers["RateLimit-Remaining"] for a in answers] == ["4", "3", "2", "1", "0"]
    # All five back once this window has left the sliding window: at the end of the next.
    assert {a.headers["RateLimit-Reset"] for a in answers} == {"70"}

    clock.now = WINDOWS_START + 55
    refused = client.get("/v1/agents")
    assert_limited(refused, amount=5)
    assert refused.headers["Retry-After"] == "17"
    clock.now += 16
    assert client.get("/v1/agents").headers["Retry-After"] == "1"
    clock.now += 1
    allowed = client.get("/v1/agents")
    assert allowed.status_code == 401
    assert allowed.headers["RateLimit-Remaining"] == "0"

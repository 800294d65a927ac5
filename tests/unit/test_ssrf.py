"""The SSRF guard: the matrix of refused URLs, what is let through, and proof that a refused
URL never opens a connection, at registration or at send time."""

from __future__ import annotations

import datetime as dt
import socket
import uuid

import pytest

from services import ssrf, webhook_delivery, webhooks
from services.errors import InvalidInput
from services.webhook_delivery import Claim
from services.webhook_policy import WebhookPolicy, parse_networks
from tests.conftest import new_user
from tests.webhook_receiver import Listener, receiver

LOOPBACK = parse_networks(["127.0.0.0/8"])


def resolving(*addresses: str):
    """A resolver for names that exist only in the test: every name gets `addresses`."""

    def resolve(host, port, **_):
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]

    return resolve


def unresolvable(host, port, **_):
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


# (url, words the refusal must contain). Literal addresses and odd spellings need no DNS.
REFUSED = [
    ("ftp://example.com/x", "only http and https"),
    ("file:///etc/passwd", "only http and https"),
    ("gopher://127.0.0.1:6379/_INFO", "only http and https"),
    ("http://user:secret@example.com/", "user name or password"),
    ("http:///path-only", "no host"),
    ("http://example.com:0/", "port 0"),
    ("http://example.com:99999/", "cannot be parsed"),
    ("http://exa mple.com/", "whitespace"),
    ("http://example.com\\@127.0.0.1/", "backslash"),
    ("http://127.0.0.1/", "loopback"),
    ("http://127.255.255.254:8080/", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://10.0.0.1/", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://[fc00::1]/", "private"),
    ("http://169.254.10.1/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://100.64.0.1/", "not a public address"),  # CGNAT
    ("http://100.127.255.254/", "not a public address"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://255.255.255.255/", "private"),
    ("http://198.18.0.1/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://169.254.170.2/v2/credentials", "cloud metadata"),
    ("http://[fd00:ec2::254]/", "cloud metadata"),
    ("http://100.100.100.200/", "cloud metadata"),
    ("http://192.0.0.192/", "cloud metadata"),
    ("http://168.63.129.16/", "cloud metadata"),
    ("http://[::ffff:127.0.0.1]/", "IPv4-mapped"),
    ("http://[::ffff:7f00:1]/", "IPv4-mapped"),
    ("http://[::ffff:8.8.8.8]/", "IPv4-mapped"),
    ("http://[::127.0.0.1]/", "reserved"),
    ("http://[2002:7f00:1::]/", "embeds a non-public IPv4"),
    ("http://[64:ff9b::7f00:1]/", "reserved"),
    ("http://2130706433/", "four decimal numbers"),
    ("http://0x7f000001/", "four decimal numbers"),
    ("http://0177.0.0.1/", "four decimal numbers"),
    ("http://0x7f.0.0.1/", "four decimal numbers"),
    ("http://127.1/", "four decimal numbers"),
    ("http://127.0.0.01/", "four decimal numbers"),
    ("http://017700000001/", "four decimal numbers"),
    ("http://1.2.3.4.5/", "four decimal numbers"),
    ("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/", "loopback"),  # full-width 127.0.0.1
]


@pytest.mark.parametrize(("url", "reason"), REFUSED)
def test_refused(url, reason):
    with pytest.raises(ssrf.UnsafeUrl, match=reason):
        ssrf.check(url, resolver=resolving("93.184.216.34"))


@pytest.mark.parametrize(
    ("addresses", "reason"),
    [
        (["127.0.0.1"], "is a loopback address \\(it resolves to 127.0.0.1\\)"),
        (["169.254.169.254"], "cloud metadata"),
        (["10.1.2.3"], "private"),
        (["93.184.216.34", "10.1.2.3"], "private"),  # one bad answer is enough
        (["::ffff:10.0.0.1"], "IPv4-mapped"),
    ],
)
def test_a_name_is_refused_when_any_address_is(addresses, reason):
    with pytest.raises(ssrf.UnsafeUrl, match=reason):
        ssrf.check("https://hooks.example.test/x", resolver=resolving(*addresses))


def test_localhost_is_refused_through_the_real_resolver():
    with pytest.raises(ssrf.UnsafeUrl, match="localhost is a loopback address"):
        ssrf.check("http://localhost:8080/")


def test_a_name_that_does_not_resolve_is_refused():
    with pytest.raises(ssrf.UnsafeUrl, match="does not resolve"):
        ssrf.check("http://nowhere.example.test/", resolver=unresolvable)


def test_public_targets_are_pinned_to_the_checked_addresses():
    target = ssrf.check(
        "https://Hooks.Example.COM./in?x=1", resolver=resolving("93.184.216.34", "2606:2800::1")
    )
    assert target.scheme == "https" and target.host == "hooks.example.com"
    assert target.port == 443 and target.path == "/in?x=1"
    assert target.addresses == ("93.184.216.34", "2606:2800::1")
    assert target.host_header == "hooks.example.com"
    literal = ssrf.check("http://8.8.8.8:8080")
    assert literal.addresses == ("8.8.8.8",) and literal.host_header == "8.8.8.8:8080"
    assert literal.path == "/"


def test_allowed_networks_let_their_addresses_through():
    assert ssrf.check("http://127.0.0.1:8080/", allowed=LOOPBACK).addresses == ("127.0.0.1",)
    assert ssrf.check("http://localhost:8080/", allowed=LOOPBACK).addresses == ("127.0.0.1",)
    with pytest.raises(ssrf.UnsafeUrl, match="loopback"):
        ssrf.check("http://[::1]:8080/", allowed=LOOPBACK)  # another family, not allowed
    with pytest.raises(ssrf.UnsafeUrl, match="four decimal numbers"):
        ssrf.check("http://2130706433:8080/", allowed=LOOPBACK)  # odd spellings never pass
    with pytest.raises(ssrf.UnsafeUrl, match="cloud metadata"):
        ssrf.check("http://169.254.169.254/", allowed=parse_networks(["169.254.0.0/16"]))


def test_parse_networks_names_the_bad_one():
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33' is not a network"):
        parse_networks(["127.0.0.0/8", "10.0.0.0/33"])


# --- no connection reaches a listener ---------------------------------------------------


def listener_spellings(port: int) -> list[str]:
    return [
        f"http://127.0.0.1:{port}/",
        f"http://localhost:{port}/",
        f"http://2130706433:{port}/",
        f"http://0x7f000001:{port}/",
        f"http://0177.0.0.1:{port}/",
        f"http://127.1:{port}/",
        f"http://[::ffff:127.0.0.1]:{port}/",
        f"https://127.0.0.1:{port}/",
    ]


@pytest.fixture
def listener():
    running = Listener("127.0.0.1")
    yield running
    running.close()


def claim_for(url: str) -> Claim:
    return Claim(
        delivery_id=uuid.uuid4(),
        attempt=1,
        lease_until=dt.datetime.now(dt.UTC),
        url=url,
        message_id="msg_test",
        payload={"type": "job.succeeded", "timestamp": "2026-01-01T00:00:00Z", "data": {}},
        secrets=(webhooks.new_secret(),),
    )


def test_no_refused_spelling_connects_at_send_time(listener):
    """With 127.0.0.0/8 not allowed, no spelling of the listener's address gets through."""
    policy = WebhookPolicy(timeout_s=1.0)
    for url in listener_spellings(listener.port):
        answer = webhook_delivery.attempt(claim_for(url), policy=policy)
        assert answer.status_code is None and answer.error.startswith("not sent: "), url
    assert listener.connections() == 0
    # The check is not what keeps the listener quiet: allowed, the same URL connects.
    allowed = WebhookPolicy(timeout_s=0.2, allowed_networks=LOOPBACK)
    webhook_delivery.attempt(claim_for(listener_spellings(listener.port)[0]), policy=allowed)
    assert listener.connections() == 1


def test_no_refused_spelling_registers(listener, session):
    owner = new_user(session)
    for url in listener_spellings(listener.port):
        with pytest.raises(InvalidInput) as refused:
            webhooks.create(
                session,
                owner_id=owner.id,
                url=url,
                event_types=["job.succeeded"],
                description=None,
                policy=WebhookPolicy(),
            )
        assert refused.value.problems[0].field == "url"
    assert listener.connections() == 0


def test_the_sender_dials_the_checked_address_not_a_new_lookup():
    """DNS rebinding: the name is resolved once, by the check; the connection goes to that
    address with the name in the Host header. `rebind.example.test` exists nowhere else,
    so the request can only arrive through the pinned address."""
    policy = WebhookPolicy(timeout_s=2.0, allowed_networks=LOOPBACK)
    with receiver() as hook:
        url = f"http://rebind.example.test:{hook.port}/hook"
        target = ssrf.check(url, allowed=LOOPBACK, resolver=resolving("127.0.0.1"))
        answer = webhook_delivery.webhook_http.post(
            target, b"{}", {}, timeout_s=policy.timeout_s, max_bytes=100
        )
        assert answer.status_code == 200, answer
        (request,) = hook.requests
        assert request.headers["host"] == f"rebind.example.test:{hook.port}"
    # And a second lookup that now answers a private address is refused at send time.
    flipping = iter([["93.184.216.34"], ["10.0.0.7"]])

    def rebinding(host, port, **_):
        return resolving(*next(flipping))(host, port)

    ssrf.check("http://rebind.example.test/", resolver=rebinding)
    with pytest.raises(ssrf.UnsafeUrl, match="private"):
        ssrf.check("http://rebind.example.test/", resolver=rebinding)


def test_without_resolving_names_pass_and_literals_meet_the_allowed_networks():
    ssrf.check_without_resolving("https://hooks.does-not-resolve.invalid/x")  # no lookup
    for url in ("http://127.0.0.1:9/x", "http://localhost:9/x", "http://app.localhost/x"):
        with pytest.raises(ssrf.UnsafeUrl, match="loopback"):
            ssrf.check_without_resolving(url)
        ssrf.check_without_resolving(url, allowed=LOOPBACK)
    with pytest.raises(ssrf.UnsafeUrl, match="metadata"):
        ssrf.check_without_resolving(
            "http://169.254.169.254/", allowed=parse_networks(["169.254.0.0/16"])
        )

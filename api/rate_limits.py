"""Rate limits, counted in Redis, so every gunicorn worker counts together.

- Every `/v1` request counts for its principal's user (`auth.identify` ran before this),
  or for its client address when it carries no valid credential: `RATE_LIMIT_DEFAULT`,
  counted by api/gate.py with permits leased from Redis in blocks, beside the token's
  revocation check (itself remembered for `TOKEN_REVOCATION_RECHECK_S`).
- Login and register also count per client address and per email in the body (gates of
  their own: rare requests with keys of their own, and small limits, which stay exact).
- A refused request gets a 429 problem with `Retry-After`; every limited answer carries
  `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (seconds) and `RateLimit-Policy`.
  Retry-After is when a request will be allowed if nothing more is counted (the sliding
  window solved for it, not the fixed window's roll-over), and a 429's RateLimit-Reset says
  the same; an allowed answer's RateLimit-Reset is when all of the limit is there again.
- Redis unreachable: each process counts in its own memory (logged as a warning) and tries
  Redis again after 1, 2, 4 ... 32 s. Limits then hold per process instead of for the whole
  server; requests are never refused for it (a bearer token is: its revocation is unknown).

The client address, as a key: the socket's peer, or behind `TRUSTED_PROXIES` the rightmost
X-Forwarded-For hop that is not one of them. An IPv4-mapped IPv6 address (`::ffff:1.2.3.4`,
an IPv4 client of a dual-stack listener) is its IPv4 address, for the key and for the proxy
check; a hop written with a port (`1.2.3.4:5678`, `[2001:db8::1]:443`) is its address. IPv4
counts per address, IPv6 per /64 (`2001:db8:1:2::/64`): one client normally holds a whole
/64, and would otherwise take a fresh budget per address. A hop that is no address at all
(which only a trusted proxy can write) counts as written, cut to 64 characters.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence

import redis
from flask import Flask, Response, current_app, g, request
from pydantic import IPvAnyNetwork
from werkzeug.exceptions import TooManyRequests

from api import auth
from api.gate import Gate, Verdict
from api.revocation_store import RevocationStore
from services.users import normalize_email
from settings import Settings
from workers.redis_clients import make_redis

LIMITED_PATHS = "/v1/"
AUTH_ENDPOINTS = frozenset({"auth.login", "auth.register"})
# Redis calls made for a limit give up quickly: the fallback is better than a slow request.
STORAGE_TIMEOUT_S = 0.5

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_ip(
    remote_addr: str | None, forwarded_for: Sequence[str], trusted: Sequence[IPvAnyNetwork]
) -> str:
    """The client's rate-limit key: the socket's peer, unless that peer is a trusted proxy;
    then the rightmost X-Forwarded-For hop that is not a trusted proxy (hops further left
    were written by the client and prove nothing). IPv4 as the address, IPv6 as its /64."""
    peer = _parse(remote_addr)
    if peer is None:
        return remote_addr or "unknown"
    if not _trusted(peer, trusted):
        return _key(peer)
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):
        address = _parse(hop)
        if address is None:
            return hop[:64]  # a trusted proxy vouches for it; count it as it came
        if not _trusted(address, trusted):
            return _key(address)
        peer = address
    return _key(peer)


def trusted_networks(networks: Sequence[IPvAnyNetwork]) -> list[IPvAnyNetwork]:
    """`TRUSTED_PROXIES` as `client_ip` compares them: an IPv4-mapped IPv6 network
    (`::ffff:10.0.0.0/104`) as its IPv4 network, since mapped addresses are compared as IPv4."""
    return [_unmapped(net) for net in networks]


def _unmapped(net: IPvAnyNetwork) -> IPvAnyNetwork:
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    return net


def _parse(value: str | None) -> IpAddress | None:
    """An address as a peer or a hop gives it: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`,
    `[2001:db8::1]` or `[2001:db8::1]:443`; IPv4-mapped IPv6 as IPv4. None if it is none."""
    text = value or ""
    if text.startswith("["):
        text, bracket, port = text[1:].partition("]")
        if not bracket or not _port(port):
            return None
    elif text.count(":") == 1:  # IPv4 and a port (an IPv6 address has two colons at least)
        text, _, port = text.partition(":")
        if not port.isdigit():
            return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _port(suffix: str) -> bool:
    """What may follow a bracketed IPv6 address: nothing, or `:` and a port."""
    return not suffix or (suffix[0] == ":" and suffix[1:].isdigit())


def _key(address: IpAddress) -> str:
    if address.version == 4:
        return str(address)
    return f"{ipaddress.IPv6Address(int(address) >> 64 << 64)}/64"


def _trusted(address: IpAddress, trusted: Sequence[IPvAnyNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def make_gate(settings: Settings, client: redis.Redis, revocations: RevocationStore) -> Gate:
    return Gate(
        client,
        settings.rate_limit_default if settings.rate_limit_enabled else None,
        revocation_recheck_s=settings.token_revocation_recheck_s,
        reload_and_check=revocations.is_revoked,
    )


def gate_client(settings: Settings) -> redis.Redis:
    """The Redis client of every gate: its calls give up quickly, as a request had better
    count its limits in memory (or answer 503 for a token) than hang."""
    return make_redis(settings.redis_url, timeout_s=STORAGE_TIMEOUT_S)


def install(app: Flask, settings: Settings, client: redis.Redis) -> None:
    """Count `/v1` requests at the gate (the runtime's), login and register also per address
    and per email, and write the RateLimit headers. Call after `auth.install`: its
    `identify` must run first. `client`: the gates' (`gate_client`)."""
    trusted = trusted_networks(settings.trusted_proxies)
    enabled = settings.rate_limit_enabled
    # Rare requests with keys of their own: their limits are small, so they stay exact.
    per_address = Gate(client, settings.rate_limit_auth_per_ip if enabled else None)
    per_email = Gate(client, settings.rate_limit_auth_per_email if enabled else None)

    def ip_key() -> str:
        return "ip:" + client_ip(
            request.remote_addr, request.headers.getlist("X-Forwarded-For"), trusted
        )

    @app.before_request
    def _through_the_gate() -> None:
        req = request._get_current_object()  # type: ignore[attr-defined]  (one proxy lookup)
        if not req.path.startswith(LIMITED_PATHS):
            return
        gate: Gate = current_app.extensions["conveyor"].gate
        principal, jti, family = auth.identified()
        key = f"user:{principal.user_id}" if principal is not None else ip_key()
        verdict = gate.check(key, jti=jti, family=family)
        if jti is not None:
            auth.settle_revocation(verdict.revoked)
            if verdict.revoked is not False:  # not this user after all: count the address
                verdict = gate.check(ip_key(), jti=None)
        g.rate_limit = verdict
        if not verdict.allowed:
            raise TooManyRequests(str(verdict.limit))
        if req.endpoint not in AUTH_ENDPOINTS:
            return
        for limits, limit_key in ((per_address, ip_key), (per_email, _email_key)):
            verdict = limits.check("auth-" + limit_key(), jti=None)
            g.rate_limit = _tighter(g.rate_limit, verdict)
            if not verdict.allowed:
                raise TooManyRequests(str(verdict.limit))

    @app.after_request
    def _rate_limit_headers(response: Response) -> Response:
        verdict: Verdict | None = g.get("rate_limit")
        if verdict is None or verdict.limit is None:
            return response
        # `add`, not item assignment: nothing else sets these, and assignment first scans
        # every header for one to replace (a few per cent of a job read's CPU for four).
        headers = response.headers
        headers.add("RateLimit-Limit", str(verdict.limit.amount))
        headers.add("RateLimit-Remaining", str(verdict.remaining))
        headers.add("RateLimit-Reset", str(verdict.reset_in_s))
        headers.add("RateLimit-Policy", verdict.policy)
        if response.status_code == 429:
            response.headers["Retry-After"] = str(max(1, verdict.reset_in_s))
        return response


def _tighter(counted: Verdict, other: Verdict) -> Verdict:
    """The verdict the headers describe: the one that refused, else the one with less left."""
    if not other.allowed or counted.limit is None:
        return other
    if other.limit is None:
        return counted
    return other if other.remaining < counted.remaining else counted


def _email_key() -> str:
    """The login or register body's email, hashed (no addresses in Redis or in logs). A body
    without one shares a bucket: it is refused by validation anyway."""
    try:
        body = request.get_json(silent=True)
    except Exception:  # a body too deep or too long: validation answers it after the limits
        body = None
    email = body.get("email") if isinstance(body, dict) else None
    if not isinstance(email, str) or len(email) > 320:
        return "email:-"
    return "email:" + hashlib.sha256(normalize_email(email).encode()).hexdigest()[:32]

"""The SSRF guard: which URLs a webhook may go to, and the address to connect to.

A URL is checked when an endpoint is registered and again before every attempt. The check
resolves the host and refuses it unless every address is public (or inside a network the
settings allow); the sender then connects to one of those checked addresses, so DNS cannot
hand out another one between the check and the connection.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from services.webhook_policy import Network

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., list[tuple[Any, ...]]]

MAX_URL_LENGTH = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}
# Addresses that answer with cloud credentials or host configuration. Refused even when an
# allowed network contains them.
METADATA_NETWORKS = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "169.254.169.254/32",  # AWS, GCP, Azure, OpenStack, DigitalOcean
        "169.254.170.2/32",  # AWS ECS task metadata
        "fd00:ec2::254/128",  # AWS IMDS over IPv6
        "100.100.100.200/32",  # Alibaba Cloud
        "192.0.0.192/32",  # Oracle Cloud
        "168.63.129.16/32",  # Azure WireServer (a public address)
    )
)
# Not public, though Python's `is_global` does not say so for every one of them.
NON_PUBLIC_NETWORKS = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "100.64.0.0/10",  # shared address space (carrier-grade NAT)
        "192.0.0.0/24",  # IETF protocol assignments
        "64:ff9b::/96",  # NAT64: reaches IPv4 addresses through a translator
        "64:ff9b:1::/48",  # local-use NAT64
    )
)
_LOOPBACK = ipaddress.IPv4Address("127.0.0.1")  # what every `localhost` name resolves to
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")


class UnsafeUrl(ValueError):
    """A URL a webhook may not be sent to. The message is safe to show to its owner."""


@dataclass(frozen=True)
class Target:
    """A checked URL: what to say in the request, and the addresses that may be dialled."""

    scheme: str
    host: str  # ASCII host name or address literal: Host header, SNI, certificate check
    port: int
    path: str  # path and query
    addresses: tuple[str, ...]

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def check(
    url: str,
    *,
    allowed: Sequence[Network] = (),
    resolver: Resolver = socket.getaddrinfo,
) -> Target:
    """The target of `url` if it is safe to send to; `UnsafeUrl` saying why if not."""
    scheme, host, port, path = _parse(url)
    literal = _address_literal(host)
    addresses = [literal] if literal is not None else _resolve(host, port, resolver)
    for address in addresses:
        reason = refusal(address, allowed)
        if reason is not None:
            shown = "" if literal is not None else f" (it resolves to {address})"
            raise UnsafeUrl(f"{host} is {reason}{shown}")
    return Target(scheme, host, port, path, tuple(str(a) for a in addresses))


def check_without_resolving(url: str, *, allowed: Sequence[Network] = ()) -> None:
    """`check`, short of DNS: the URL's form, and its host when that is an address literal
    or a loopback name (RFC 6761's `localhost`). A job's `webhook_url` is checked this way
    when the job is submitted, where a lookup would hold the request up; the delivery makes
    the whole check before every attempt."""
    _, host, _, _ = _parse(url)
    literal = _address_literal(host)
    if host == "localhost" or host.endswith(".localhost"):
        literal = _LOOPBACK
    reason = refusal(literal, allowed) if literal is not None else None
    if reason is not None:
        raise UnsafeUrl(f"{host} is {reason}")


def refusal(address: IPAddress, allowed: Sequence[Network] = ()) -> str | None:
    """Why a webhook may not connect to `address`; None when it may."""
    if any(address in network for network in METADATA_NETWORKS):
        return "a cloud metadata address"
    if any(address.version == net.version and address in net for net in allowed):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return "an IPv4-mapped IPv6 address"
        if address.scope_id:
            return "an IPv6 address with a zone"
        embedded = address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is not None and refusal(embedded) is not None:
            return "an IPv6 address that embeds a non-public IPv4 address"
    checks = (
        (address.is_unspecified, "the unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (address.is_private, "a private address"),
        (address.is_reserved, "a reserved address"),
        (any(address in net for net in NON_PUBLIC_NETWORKS), "not a public address"),
        (not address.is_global, "not a public address"),
    )
    return next((reason for failed, reason in checks if failed), None)


def _parse(url: str) -> tuple[str, str, int, str]:
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or _is_control(ch) or ch == "\\" for ch in url):
        raise UnsafeUrl("the URL contains whitespace, control characters or a backslash")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise UnsafeUrl(f"the URL cannot be parsed: {error}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise UnsafeUrl("only http and https URLs are allowed")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("the URL may not carry a user name or password")
    if not parts.hostname:
        raise UnsafeUrl("the URL has no host")
    if port == 0:
        raise UnsafeUrl("port 0 is not a port")
    host = _ascii_host(parts.hostname)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    # A request line is ASCII: `/café` is sent as `/caf%C3%A9`, as browsers and pydantic
    # (a job's webhook_url) write it. It raised UnicodeEncodeError in every attempt.
    return scheme, host, port or DEFAULT_PORTS[scheme], quote(path, safe=_PRINTABLE_ASCII)


# Everything a URL may hold as it is; what is not (non-ASCII) is percent-encoded as UTF-8.
_PRINTABLE_ASCII = "".join(chr(c) for c in range(0x21, 0x7F))


def _is_control(ch: str) -> bool:
    """C0, DEL and C1: http.client refuses each in a request line."""
    return ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0


def _ascii_host(hostname: str) -> str:
    host = hostname.lower().rstrip(".")
    if ":" in host:  # an IPv6 literal; urlsplit took the brackets off
        return host
    if not host.isascii():
        try:
            # IDNA maps look-alikes such as full-width digits to ASCII: check what is dialled.
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise UnsafeUrl("the host name is not a valid internationalized name") from None
    if not _HOST_NAME.match(host):
        raise UnsafeUrl("the host name has characters a host name cannot have")
    last_label = host.rsplit(".", 1)[-1]
    if _NUMERIC_LABEL.match(last_label) and not _is_dotted_quad(host):
        # 2130706433, 0x7f000001, 0177.0.0.1, 127.1: the C resolver reads each as an IPv4
        # address. Only the usual dotted-decimal form is accepted.
        raise UnsafeUrl(
            "an IPv4 address may only be written as four decimal numbers (a.b.c.d), "
            "not in decimal, octal, hex or shortened form"
        )
    return host


def _is_dotted_quad(host: str) -> bool:
    try:
        return str(ipaddress.IPv4Address(host)) == host
    except ValueError:
        return False


def _address_literal(host: str) -> IPAddress | None:
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise UnsafeUrl("the IPv6 address is not valid") from None
    if _is_dotted_quad(host):
        return ipaddress.IPv4Address(host)
    return None


def _resolve(host: str, port: int, resolver: Resolver) -> list[IPAddress]:
    try:
        infos = resolver(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        raise UnsafeUrl(f"{host} does not resolve") from None
    addresses: list[IPAddress] = []
    for family, *_, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnsafeUrl(f"{host} has no IPv4 or IPv6 address")
    return addresses

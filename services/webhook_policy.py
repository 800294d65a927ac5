"""The limits and timings that govern webhook deliveries, set once from settings."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Seconds before each retry, after a failed attempt; the first attempt is immediate. Svix's
# schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, so 8 attempts over about a day.
DEFAULT_RETRY_SCHEDULE_S = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
DAY_S = 86_400.0


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs as networks; a ValueError names the first one that is not a network."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{cidr!r} is not a network in CIDR notation") from None
    return tuple(networks)


@dataclass(frozen=True)
class WebhookPolicy:
    # Networks the SSRF guard lets through although they are not public (127.0.0.0/8 in
    # tests and local development).
    allowed_networks: tuple[Network, ...] = ()
    retry_schedule_s: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE_S
    # A delivery succeeds when a 2xx status arrives within this many seconds of starting.
    timeout_s: float = 15.0
    # An endpoint whose every attempt has failed for this long is disabled.
    disable_after_s: float = 5 * DAY_S
    # How long the previous secret keeps signing after a rotation.
    secret_overlap_s: float = DAY_S
    # A due delivery that no worker took within this long is published again by the sweeper.
    republish_after_s: float = 10.0
    # Each retry delay is multiplied by a random factor in [1 - jitter, 1 + jitter].
    jitter: float = 0.2
    # Retry-After is honoured up to this many seconds.
    max_retry_after_s: float = DAY_S
    # Retries due sooner than this are published with a countdown; later ones are left to
    # the sweeper, so no message waits hours in a worker's memory.
    countdown_up_to_s: float = 60.0
    # Read at most this much of an answer.
    max_response_bytes: int = 64 * 1024

    @property
    def lease_s(self) -> float:
        """How long a claimed delivery is held before another worker may take it over."""
        return self.timeout_s + 5.0

    @property
    def max_attempts(self) -> int:
        return len(self.retry_schedule_s) + 1

    def retry_delay_s(self, attempts: int, *, retry_after_s: float | None = None) -> float | None:
        """Seconds until the next attempt after `attempts` failed ones; None when the
        schedule is exhausted. The receiver's Retry-After wins when it asks for longer."""
        if attempts >= self.max_attempts:
            return None
        step = self.retry_schedule_s[attempts - 1]
        delay = step * random.uniform(1 - self.jitter, 1 + self.jitter)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.max_retry_after_s))
        return float(delay)

"""Ports for the servers tests start, from outside the kernel's ephemeral range and from a
block of their own per xdist worker.

A port found by binding port 0 comes from the ephemeral range, the one the kernel also draws
every outgoing connection's local port from, and a parallel worker's port-0 probe draws from
it too: between the probe and the server's own bind, the port can be taken. Below (or above)
that range nothing takes a port unless asked for it by number, and each xdist worker asks
only within its own block, so what is left is a server of another program on this machine.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import threading
from collections.abc import Sequence
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Linux's default starts at 32768, IANA's (BSD, macOS, Windows) at 49152: where the range
# cannot be read, take both as ephemeral.
FALLBACK_EPHEMERAL = range(32768, 65536)
# Under 10000 live the usual services (PostgreSQL 5432, Redis 6379, Flower 5555, 8000, 8080,
# 9090 ...); a port that is in use is skipped anyway, but one started later would collide.
LOWEST = 10_000
HIGHEST = 65_535
UNPRIVILEGED = 1024
ENOUGH = 1000
SMALLEST_BLOCK = 32


def ephemeral_range(source: Path = EPHEMERAL_RANGE_FILE) -> range:
    """The ports the kernel hands out on its own, as read from `source` when it is there."""
    try:
        low, high = (int(field) for field in source.read_text().split())
    except (OSError, ValueError):
        return FALLBACK_EPHEMERAL
    return range(low, high + 1)


def usable_ports(ephemeral: range) -> range:
    """The longer of the spans from LOWEST up to the ephemeral range and above it; when the
    range leaves little of either, the unprivileged ports below it, services or not."""
    below = range(LOWEST, max(LOWEST, ephemeral.start))
    above = range(max(LOWEST, ephemeral.stop), HIGHEST + 1)
    low_ones = range(UNPRIVILEGED, max(UNPRIVILEGED, min(ephemeral.start, LOWEST)))
    chosen = max(below, above, key=len)
    return chosen if len(chosen) >= ENOUGH else max(chosen, low_ones, key=len)


def worker_index(worker: str | None) -> int:
    """gw0 -> 0, gw1 -> 1, ...; not under xdist (or its controller, "master") -> 0."""
    if not worker or not worker.startswith("gw"):
        return 0
    return int(worker.removeprefix("gw"))


def worker_block(usable: range, index: int, workers: int) -> range:
    """Worker `index`'s share of `usable` when `workers` workers split it evenly."""
    workers = max(workers, index + 1)
    size = len(usable) // workers
    if size < SMALLEST_BLOCK:
        raise RuntimeError(
            f"{len(usable)} ports outside the ephemeral range are too few for {workers} "
            "test workers"
        )
    start = usable.start + index * size
    return range(start, start + size)


def bindable(port: int) -> bool:
    """True when nothing holds `port` on 0.0.0.0, where gunicorn binds."""
    # No SO_REUSEADDR: a port with connections left in TIME_WAIT is skipped too.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("0.0.0.0", port))  # noqa: S104 (a probe, closed at once)
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


class PortAllocator:
    """Hands out `ports` in turn, from `first` on and round again, skipping those in use.

    A port handed out is not offered again until all the others have been, so two servers
    of one process never get the same port however late the first one binds it.
    """

    def __init__(self, ports: Sequence[int], first: int = 0) -> None:
        self.ports = ports
        self._cursor = first % len(ports)
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            for _ in range(len(self.ports)):
                port = self.ports[self._cursor]
                self._cursor = (self._cursor + 1) % len(self.ports)
                if bindable(port):
                    return port
        raise RuntimeError(f"no free port among {self.ports}")


def _this_workers_allocator() -> PortAllocator:
    block = worker_block(
        usable_ports(ephemeral_range()),
        worker_index(os.environ.get("PYTEST_XDIST_WORKER")),
        int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1),
    )
    # Another test session on this machine has the same blocks: start somewhere else in ours.
    return PortAllocator(block, first=secrets.randbelow(len(block)))


_allocator: PortAllocator | None = None
_allocator_lock = threading.Lock()


def free_port() -> int:
    """A port for a server a test starts; free now and handed to nobody else in this run."""
    global _allocator
    with _allocator_lock:
        if _allocator is None:
            _allocator = _this_workers_allocator()
    return _allocator.take()


def free_ports(count: int) -> list[int]:
    return [free_port() for _ in range(count)]


def closed_port() -> int:
    """A port nothing listens on, for a server that is away: no later server of this run is
    handed it before the whole block has gone round, and, being outside the ephemeral range,
    it is never a connection's own local port (a connect to such a port can reach itself)."""
    return free_port()

"""The ports test servers get: outside the ephemeral range, one block per xdist worker,
never the same one twice while it may still be in use."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.ports import (
    FALLBACK_EPHEMERAL,
    PortAllocator,
    ephemeral_range,
    free_port,
    usable_ports,
    worker_block,
    worker_index,
)


def _kernels_ephemeral_range() -> range:
    """Read here on its own, so a misreading allocator cannot agree with itself."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except OSError:
        return FALLBACK_EPHEMERAL
    return range(int(low), int(high) + 1)


def test_no_port_handed_out_is_in_the_ephemeral_range_nor_handed_out_twice() -> None:
    ephemeral = _kernels_ephemeral_range()
    ports = [free_port() for _ in range(200)]
    assert [port for port in ports if port in ephemeral] == []
    assert len(set(ports)) == len(ports)


def test_the_ephemeral_range_is_read_from_the_kernel_or_taken_wide(tmp_path: Path) -> None:
    source = tmp_path / "ip_local_port_range"
    source.write_text("40000\t50999\n")
    assert ephemeral_range(source) == range(40000, 51000)
    assert ephemeral_range(tmp_path / "absent") == FALLBACK_EPHEMERAL


@pytest.mark.parametrize(
    "ephemeral",
    [range(32768, 61000), range(49152, 65536), range(1024, 60001), range(5000, 65536)],
    ids=["linux", "iana", "widened-low", "ends-at-the-top"],
)
def test_the_usable_ports_are_outside_whatever_the_ephemeral_range(ephemeral: range) -> None:
    usable = usable_ports(ephemeral)
    assert len(usable) > 0
    assert set(usable).isdisjoint(ephemeral)
    assert usable.start >= 1024 and usable.stop <= 65536


def test_a_port_in_use_is_skipped_and_the_next_in_turn_given() -> None:
    busy, free = free_port(), free_port()
    with socket.create_server(("127.0.0.1", busy)):  # in use on loopback only: still busy
        allocator = PortAllocator([busy, free])
        assert [allocator.take() for _ in range(3)] == [free, free, free]
        with (
            socket.create_server(("0.0.0.0", free)),  # noqa: S104
            pytest.raises(RuntimeError, match="no free port"),
        ):
            allocator.take()
    assert allocator.take() == busy  # let go: its turn again


def test_every_port_of_a_block_is_handed_out_once_before_any_again() -> None:
    ports = [free_port() for _ in range(5)]
    assert len(set(ports)) == len(ports)
    allocator = PortAllocator(ports, first=3)
    assert [allocator.take() for _ in range(7)] == [*ports[3:], *ports[:3], *ports[3:5]]


@pytest.mark.parametrize("workers", [1, 2, 3, 8, 64])
def test_blocks_of_different_workers_do_not_overlap(workers: int) -> None:
    ephemeral = _kernels_ephemeral_range()
    usable = usable_ports(ephemeral)
    blocks = [worker_block(usable, index, workers) for index in range(workers)]
    for block in blocks:
        assert block.start >= usable.start and block.stop <= usable.stop
        assert set(block).isdisjoint(ephemeral)
    for one, other in itertools.combinations(blocks, 2):
        assert set(one).isdisjoint(other), (one, other)


def test_worker_ids_name_their_block() -> None:
    assert [worker_index(w) for w in ("gw0", "gw1", "gw17", "master", None)] == [0, 1, 17, 0, 0]


_PRINT_PORTS = (
    "import json; from tests.ports import free_port; "
    "print(json.dumps([free_port() for _ in range(20)]))"
)


def _ports_of(worker: str, workers: int) -> list[int]:
    env = {**os.environ, "PYTEST_XDIST_WORKER": worker, "PYTEST_XDIST_WORKER_COUNT": str(workers)}
    out = subprocess.run(
        [sys.executable, "-c", _PRINT_PORTS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return list(json.loads(out))


def test_processes_of_different_workers_get_ports_of_their_own_blocks() -> None:
    usable = usable_ports(_kernels_ephemeral_range())
    for index in range(3):
        ports = _ports_of(f"gw{index}", 3)
        assert set(ports) <= set(worker_block(usable, index, 3)), (index, ports)

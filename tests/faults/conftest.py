"""The fault tests' measurements: each test records one line (counts and recovery times),
printed at once with -s and gathered in a section of the terminal summary (the hook is in
`tests/faults/summary.py`, registered by `tests/conftest.py`), which also works under
pytest-xdist, where workers' output is not shown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.faults.summary import REPORT_PROPERTY, format_report
from tests.stack import PostgresCluster


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[..., None]:
    def record(fault: str, **facts: Any) -> None:
        line = format_report(fault, **facts)
        print(f"\n{line}", flush=True)
        request.node.user_properties.append((REPORT_PROPERTY, line))

    return record


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL of this test's own, destroyed (and checked gone) at the end."""
    try:
        cluster = PostgresCluster()
    except FileNotFoundError as error:  # no binaries, or root without a postgres user
        pytest.skip(f"cannot run a private PostgreSQL: {error}")
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
    assert not cluster.processes()

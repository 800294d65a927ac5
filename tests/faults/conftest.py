"""The fault tests' measurements: each test records one line (counts and recovery times),
printed at once with -s and gathered in a section of the terminal summary (the hook is in
`tests/faults/summary.py`, registered by `tests/conftest.py`), which also works under
pytest-xdist, where workers' output is not shown."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.faults.summary import REPORT_PROPERTY, format_report


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[..., None]:
    def record(fault: str, **facts: Any) -> None:
        line = format_report(fault, **facts)
        print(f"\n{line}", flush=True)
        request.node.user_properties.append((REPORT_PROPERTY, line))

    return record

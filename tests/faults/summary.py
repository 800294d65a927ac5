"""The fault tests' measurements in the terminal summary: one line per test with the
counts and recovery times that go into the issue note.

`tests/conftest.py` imports the hook: under pytest-xdist the controller, which writes the
summary, loads only the root conftest, and the workers' printed output is not shown.
This module imports nothing of the tests, so that import stays cheap and acyclic.
"""

from __future__ import annotations

from typing import Any

REPORT_PROPERTY = "fault_report"


def format_report(fault: str, **facts: Any) -> str:
    """One line per fault test: its counts and recovery times."""
    shown = " ".join(
        f"{key}={value:.2f}" if isinstance(value, float) else f"{key}={value}"
        for key, value in facts.items()
    )
    return f"[faults] {fault}: {shown}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = [
        value
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", ())
        if name == REPORT_PROPERTY
    ]
    if lines:
        terminalreporter.write_sep("-", "fault test measurements")
        for line in sorted(lines):
            terminalreporter.write_line(line)

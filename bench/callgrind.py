"""Instructions per operation, counted by valgrind's callgrind: the same code gives totals
within a few per cent whatever else the machine does, where CPU time on the shared 2-core
VM swings by a third. A run of N operations and one of 4 N are counted, and the difference
is divided by 3 N, so start-up and set-up cancel out."""

from __future__ import annotations

import os
import subprocess
import sys

COUNT_VARIABLE = "CALLGRIND_COUNT"


def per_operation(module: str, args: list[str], env: dict[str, str], n: int) -> float:
    """`python -m module args` under callgrind with CALLGRIND_COUNT=N, then 4 N."""
    totals = [_total(module, args, env, count) for count in (n, 4 * n)]
    return (totals[1] - totals[0]) / (3 * n)


def child_count() -> int | None:
    """In a counted run: how many operations to make; None when not counted."""
    value = os.environ.get(COUNT_VARIABLE)
    return int(value) if value else None


def _total(module: str, args: list[str], env: dict[str, str], count: int) -> int:
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    command += [sys.executable, "-m", module, *args]
    child_env = {**os.environ, **env, COUNT_VARIABLE: str(count)}
    done = subprocess.run(command, env=child_env, capture_output=True, text=True, timeout=3600)
    for line in done.stderr.splitlines():
        if "Collected :" in line:
            return int(line.rsplit(":", 1)[1])
    raise RuntimeError(f"callgrind reported no total:\n{done.stderr[-2000:]}")

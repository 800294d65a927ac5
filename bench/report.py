"""Rows of the benchmark table and how they are printed."""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field

import psutil

from bench.harness import Window


@dataclass
class Row:
    scenario: str
    rate: float  # per second, of `unit`
    unit: str  # "req/s", "jobs/s", "events/s", "tasks/s"
    p50: float = math.nan  # milliseconds
    p95: float = math.nan
    p99: float = math.nan
    errors: int | None = 0
    web_mb: float = math.nan  # peak summed RSS of the process tree
    worker_mb: float = math.nan
    web_pss_mb: float = math.nan
    worker_pss_mb: float = math.nan
    ratio: float = math.nan  # to the ceiling (or target) named in `ratio_of`
    ratio_of: str = ""
    target: str = ""
    holds: bool | None = None
    load1: float = math.nan
    others_cpu: float = math.nan  # cores used by other processes on the machine
    cpu_s: dict[str, float] = field(default_factory=dict)  # during the scenario: web, worker, pg
    cpu_ms: dict[str, float] = field(default_factory=dict)  # the same per op (set by per_op)
    generator: str = ""
    notes: list[str] = field(default_factory=list)

    def observe(self, window: Window) -> Row:
        self.web_mb = window.peak_mb.get("web", math.nan)
        self.web_pss_mb = window.peak_pss_mb.get("web", math.nan)
        for name in ("worker", "noop"):
            if name in window.peak_mb:
                self.worker_mb = window.peak_mb[name]
                self.worker_pss_mb = window.peak_pss_mb[name]
        self.load1 = window.load1
        self.others_cpu = window.others_cpu
        self.cpu_s = dict(window.cpu_s)
        return self

    def per_op(self, ops: int) -> Row:
        """CPU milliseconds per request (job, task, event) of each group: the cost that the
        machine's other load does not change much, unlike the rate."""
        if ops > 0:
            self.cpu_ms = {group: s * 1000 / ops for group, s in self.cpu_s.items()}
        return self


def _num(value: float, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _cpu(row: Row) -> str:
    if not row.cpu_ms:
        return "-"

    def one(ms: float) -> str:
        return f"{ms:.3f}" if ms < 0.1 else f"{ms:.2f}" if ms < 10 else f"{ms:.0f}"

    return "/".join(one(row.cpu_ms.get(g, 0.0)) for g in ("web", "worker", "pg"))


def _ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


COLUMNS = (
    "scenario", "rate", "p50 ms", "p95 ms", "p99 ms", "errors", "web MB", "worker MB",
    "ratio", "target", "holds", "CPU ms/op web/wkr/pg", "load1", "others",
)  # fmt: skip


def cells(row: Row) -> list[str]:
    holds = {True: "yes", False: "NO", None: "-"}[row.holds]
    ratio = f"{row.ratio:.2f} {row.ratio_of}".strip() if not math.isnan(row.ratio) else "-"
    return [
        row.scenario,
        f"{_num(row.rate)} {row.unit}",
        _ms(row.p50),
        _ms(row.p95),
        _ms(row.p99),
        "-" if row.errors is None else str(row.errors),
        _num(row.web_mb),
        _num(row.worker_mb),
        ratio,
        row.target or "-",
        holds,
        _cpu(row),
        _num(row.load1, 1),
        _num(row.others_cpu, 2),
    ]


def table(rows: list[Row]) -> str:
    grid = [list(COLUMNS), *(cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in grid) for i in range(len(COLUMNS))]
    numeric = set(range(1, len(COLUMNS))) - {8, 9, 10}

    def fmt(line: list[str]) -> str:
        parts = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in
                 enumerate(zip(line, widths, strict=True))]  # fmt: skip
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    out = [fmt(grid[0]), rule, *(fmt(line) for line in grid[1:])]
    notes = [f"- {r.scenario}: {note}" for r in rows for note in r.notes]
    if notes:
        out += ["", "Notes:", *notes]
    return "\n".join(out)


def machine() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    memory = psutil.virtual_memory().total / 1024**3
    return (
        f"{platform.node()}: {psutil.cpu_count()} CPUs, {memory:.0f} GiB, "
        f"Python {platform.python_version()}, load average {load}"
    )


LEGEND = """\
rate: requests (or jobs, events, tasks) per second; p50/p95/p99: latency in ms; errors:
answers other than the expected ones plus connection errors (overload: other than
202/429/503); web MB / worker MB: peak summed RSS of the gunicorn and celery process trees
during the scenario; ratio: to the ceiling measured in this run (http, celery) or to the
target (20k events/s); CPU ms/op: CPU time of the web tree, the worker tree and the
scratch database's PostgreSQL backends per request (job, task, event), which the machine's
other load changes far less than the rates; load1: the 1-minute load average at the
scenario's end (it counts this benchmark's own threads too: the overload's 256); others:
CPU cores used meanwhile by processes that are not this benchmark's (tests of other
sessions), the noise to read the absolute figures against."""


def to_json(rows: list[Row]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2, default=str)

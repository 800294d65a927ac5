"""Profiles of the web workers under load with py-spy (optional tooling: `pip install
py-spy`), summarised as the top costs: own time by function and by package, and time
spent inside the application's own functions (inclusive).

py-spy samples only the thread holding the GIL (`--gil`): in a GIL-bound gthread worker
that is where the CPU goes, while threads waiting on PostgreSQL or Redis stay out.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
# Our code: the composition roots and layers of ARCHITECTURE.md.
OURS = ("api/", "services/", "models/", "tasks/", "workers/", "settings.py")
PLUMBING = {
    "<module>", "run", "_bootstrap", "_bootstrap_inner", "worker", "process_request", "handle",
    "handle_request", "wsgi_app", "__call__", "full_dispatch_request",
}  # fmt: skip
# Servers' loops: every sample of a process runs inside them.
PLUMBING_FILES = (
    "celery/concurrency/", "celery/app/trace.py", "celery/worker/", "celery/bootsteps.py",
    "celery/bin/", "billiard/", "kombu/asynchronous/", "gunicorn/", "tasks/",
)  # fmt: skip


def py_spy() -> str | None:
    venv_bin = Path(sys.executable).parent / "py-spy"
    return str(venv_bin) if venv_bin.is_file() else shutil.which("py-spy")


def record(pid: int, output: Path, duration_s: float) -> subprocess.Popen[bytes] | None:
    """Start sampling process `pid` and its children for `duration_s`; None without py-spy."""
    binary = py_spy()
    if binary is None:
        return None
    argv = [
        binary, "record", "--pid", str(pid), "--subprocesses", "--format", "raw",
        "--output", str(output), "--duration", str(max(1, round(duration_s))), "--rate", "200",
        "--nolineno", "--gil", "--nonblocking",
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@dataclass
class Frame:
    func: str
    file: str

    @property
    def package(self) -> str:
        path = self.file
        if path.startswith(OURS):
            return "conveyor:" + path.split("/", 1)[0].removesuffix(".py")
        head = path.split("/", 1)[0]
        return head.removesuffix(".py") if "/" in path else f"stdlib:{head.removesuffix('.py')}"

    def __str__(self) -> str:
        return f"{self.func} ({self.file})"


def parse(raw: str) -> list[tuple[list[Frame], int]]:
    stacks = []
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for part in stack.split(";"):
            match = FRAME.match(part.strip())
            if match:  # process and thread labels do not match
                frames.append(Frame(match["func"], match["file"]))
        if frames:
            stacks.append((frames, int(count)))
    return stacks


def summary(raw: str, top: int = 15) -> str:
    stacks = parse(raw)
    total = sum(count for _, count in stacks)
    if not total:
        return "  (no samples)"
    own: Counter[str] = Counter()
    own_package: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    inclusive_package: Counter[str] = Counter()
    for frames, count in stacks:
        own[str(frames[-1])] += count
        own_package[frames[-1].package] += count
        for name in {str(f) for f in frames if _inclusive(f)}:
            inclusive[name] += count
        for package in {f.package for f in frames if f.package in INCLUSIVE_PACKAGES}:
            inclusive_package[package] += count
    # Frames nearly every sample runs inside (the worker's main loop, a task's trace) say
    # nothing about where the time goes.
    inclusive = Counter({k: v for k, v in inclusive.items() if v < 0.9 * total})
    inclusive_package = Counter({k: v for k, v in inclusive_package.items() if v < 0.9 * total})

    def block(title: str, counts: Counter[str], n: int) -> list[str]:
        lines = [f"  {title}"]
        for name, count in counts.most_common(n):
            lines.append(f"    {100 * count / total:5.1f} %  {name}")
        return lines

    out = [f"  {total} samples holding the GIL"]
    out += block("own time by package:", own_package, 12)
    out += block("inclusive time by library (calls into it, and what it calls):",
                 inclusive_package, 12)  # fmt: skip
    out += block("own time by function:", own, top)
    out += block("inclusive time in our code and key library calls:", inclusive, top + 10)
    return "\n".join(out)


def _inclusive(frame: Frame) -> bool:
    if frame.func in PLUMBING or frame.file.startswith(PLUMBING_FILES):
        return False
    return frame.file.startswith(OURS) or frame.package in INCLUSIVE_PACKAGES


# Library entry points worth seeing inclusively (what a request spends in each library).
INCLUSIVE_PACKAGES = {
    "sqlalchemy", "psycopg", "flask_jwt_extended", "jwt", "celery", "kombu", "redis",
    "pydantic", "structlog", "limits", "prometheus_client", "apiflask",
    "werkzeug", "orjson",
}  # fmt: skip

"""The directory of prometheus_client's multiprocess mode, prepared before any metric exists.

prometheus_client picks its value class when it is first imported: with
PROMETHEUS_MULTIPROC_DIR set, every process writes its samples to files in that directory
and a scrape sums them. So the variable must be set, in the parent, before any process of
the group creates a metric; this module does not import prometheus_client.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare(prefix: str, *, reuse: bool = True) -> tuple[Path, bool]:
    """Use PROMETHEUS_MULTIPROC_DIR emptied of earlier runs' files (when `reuse`), or a
    fresh directory that this call puts there; the directory and whether it was created.

    One directory serves one process group: a second group writing there would have its
    samples summed into the first's, and would empty it when it starts.
    """
    given = os.environ.get(ENV) if reuse else None
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
        return path, False
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ[ENV] = str(path)
    return path, True


def switch_on() -> None:
    """Multiprocess mode for metrics created from now on, even if prometheus_client was
    imported before the variable was set (Celery's command line imports Flower, which
    imports it): prometheus_client chooses its value class for new metrics from
    `values.ValueClass`, decided at import by `get_value_class()`; decide again."""
    values = sys.modules.get("prometheus_client.values")
    if values is not None:
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]


def mark_process_dead(pid: int) -> None:
    """Forget the live gauges of a process that exited (its counters stay summed)."""
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

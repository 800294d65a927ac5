"""How many cores the worker's default pool is sized from (workers.celery_app.usable_cpus):
the cgroup v2 quota when it is below the cores the process may run on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from workers.celery_app import default_worker_concurrency, make_celery, usable_cpus

CORES = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("cpu_max", "cores"),
    [
        ("max 100000\n", CORES),
        ("50000 100000\n", 1),  # half a core still gets one
        (f"{CORES * 100000} 100000\n", CORES),
        (f"{CORES * 400000} 100000\n", CORES),  # a quota above the cores changes nothing
        ("garbage\n", CORES),
        ("100000 0\n", CORES),
    ],
)
def test_a_cgroup_quota_below_the_cores_limits_them(tmp_path: Path, cpu_max: str, cores: int):
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    assert usable_cpus(path) == cores


def test_without_a_cgroup_file_every_core_the_process_may_use_counts(tmp_path: Path):
    assert usable_cpus(tmp_path / "absent") == CORES


def test_the_celery_app_takes_the_given_count_or_two_per_usable_core():
    broker = "redis://127.0.0.1:1/0"  # never connected to
    given = make_celery(broker_url=broker, worker_concurrency=3)
    default = make_celery(broker_url=broker)
    assert given.conf["worker_concurrency"] == 3
    assert default.conf["worker_concurrency"] == default_worker_concurrency() == 2 * usable_cpus()

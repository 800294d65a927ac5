"""The embedded development stack: servers start, answer, and leave nothing behind."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import redis

import cli

DEADLINE_S = 20.0


def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def is_gone(pid: int) -> bool:
    """Exited (a zombie waiting for its reaper counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def all_gone(pids: list[int]) -> Callable[[], bool]:
    return lambda: all(is_gone(pid) for pid in pids)


def redis_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def test_tcp_reachable() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert cli.tcp_reachable("127.0.0.1", port)
    assert not cli.tcp_reachable("127.0.0.1", port, timeout=0.2)


def test_embedded_redis_answers_then_stops_completely() -> None:
    url, stop = cli.start_embedded_redis()
    port = redis_port(url)
    try:
        client = redis.Redis.from_url(url)
        assert client.ping()
        assert client.config_get("save") == {"save": ""}  # in memory, nothing persisted
        pid = int(client.info("server")["process_id"])
        client.close()
    finally:
        stop()
    assert wait_until(all_gone([pid]))
    assert not cli.tcp_reachable("127.0.0.1", port, timeout=0.2)
    stop()  # a second stop is harmless


@pytest.fixture
def pg_data_dir(tmp_path: Path) -> Iterator[Path]:
    # As root pgserver widens the permissions of every parent of its data directory, so keep
    # it out of pytest's private temp tree, as the CLI does.
    base = (
        Path(tempfile.mkdtemp(prefix="conveyor-pg-test-", dir="/var/tmp"))
        if cli._is_root()
        else tmp_path
    )
    yield base / "data"
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.e2e
def test_embedded_postgres_answers_then_stops_completely(pg_data_dir: Path) -> None:
    import psycopg

    url, stop = cli.start_embedded_postgres(
        data_dir=pg_data_dir, database="cli_test", ephemeral=True
    )
    try:
        assert url.startswith("postgresql://")
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1, current_database()").fetchone() == (1, "cli_test")
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert backend is not None
            # Read while connected: the backend process ends with the connection.
            postmaster = psutil.Process(psutil.Process(backend[0]).ppid())
        pids = [postmaster.pid, *(child.pid for child in postmaster.children())]
        assert len(pids) > 1
    finally:
        stop()
    assert wait_until(all_gone(pids))
    assert not pg_data_dir.exists()  # ephemeral: the data directory went with it


def test_embedded_env_runs_a_command_with_the_urls_then_stops() -> None:
    env = {**os.environ, "DATABASE_URL": "postgresql://unused@127.0.0.1:1/unused"}
    env.pop("REDIS_URL", None)
    probe = "import os; print('CHILD', os.environ['REDIS_URL'])"
    done = subprocess.run(
        [
            sys.executable,
            str(Path(cli.__file__)),
            "embedded-env",
            "--",
            sys.executable,
            "-c",
            probe,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "DATABASE_URL=postgresql://unused@127.0.0.1:1/unused"
    assert lines[1].startswith("REDIS_URL=redis://127.0.0.1:")
    url = lines[1].split("=", 1)[1]
    assert f"CHILD {url}" in lines
    assert not cli.tcp_reachable("127.0.0.1", redis_port(url), timeout=0.2)


@pytest.mark.e2e
def test_dev_stops_every_process_on_sigint(tmp_path: Path) -> None:
    """`conveyor dev` with a stand-in Procfile: Ctrl-C to the process group stops everything."""
    marker = f"conveyor-cli-test-{uuid.uuid4().hex}"
    sleeper = f"{sys.executable} -c 'import time; time.sleep(600)' {marker}"
    procfile = tmp_path / "Procfile"
    procfile.write_text(f"web: {sleeper}\nworker: {sleeper}\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "DATABASE_URL": "postgresql://unused@127.0.0.1:1/unused",
        "PORT": str(port),
    }
    env.pop("REDIS_URL", None)
    cmd = [
        sys.executable,
        str(Path(cli.__file__)),
        "dev",
        "--procfile",
        str(procfile),
        "--no-migrate",
    ]
    proc = subprocess.Popen(
        [*cmd, "web", "worker"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(iter(proc.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()

    def marked() -> list[int]:
        return [
            p.pid for p in psutil.process_iter(["cmdline"]) if marker in (p.info["cmdline"] or [])
        ]

    try:
        assert wait_until(lambda: len(marked()) == 2), "".join(output)
        redis_line = next(line for line in output if line.strip().startswith("Redis"))
        url = redis_line.split()[1]
        client = redis.Redis.from_url(url)
        redis_pid = int(client.info("server")["process_id"])
        client.close()
        children = marked()
        os.killpg(proc.pid, signal.SIGINT)
        # The supervisor kills whatever has not stopped STOP_TIMEOUT_S after the signal, so
        # it always ends by then; a CI run on a loaded machine once needed more than 20 s.
        assert proc.wait(timeout=cli.STOP_TIMEOUT_S + DEADLINE_S) == 128 + signal.SIGINT
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        reader.join(timeout=DEADLINE_S)
    assert wait_until(all_gone([*children, redis_pid])), "".join(output)
    assert marked() == []
    assert not cli.tcp_reachable("127.0.0.1", redis_port(url), timeout=0.2)

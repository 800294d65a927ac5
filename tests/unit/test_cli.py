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
from tests.ports import free_port

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


class Dev:
    """`conveyor dev` on a stand-in Procfile, in a session of its own; `output` is what it
    printed so far."""

    def __init__(self, procfile: Path, processes: list[str], **env: str) -> None:
        environ = {
            **os.environ,
            "DATABASE_URL": "postgresql://unused@127.0.0.1:1/unused",
            "PORT": str(free_port()),
            **env,
        }
        environ.pop("REDIS_URL", None)
        command = [sys.executable, str(Path(cli.__file__)), "dev", "--procfile", str(procfile)]
        self.proc = subprocess.Popen(
            [*command, "--no-migrate", *processes],
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.output: list[str] = []
        stdout = self.proc.stdout
        assert stdout is not None
        self.reader = threading.Thread(target=lambda: self.output.extend(iter(stdout.readline, "")))
        self.reader.start()

    def interrupt(self) -> None:
        """Ctrl-C to its process group; it exits as a process killed by SIGINT would."""
        os.killpg(self.proc.pid, signal.SIGINT)
        # The supervisor kills whatever has not stopped STOP_TIMEOUT_S after the signal, so
        # it always ends by then; a CI run on a loaded machine once needed more than 20 s.
        assert self.proc.wait(timeout=cli.STOP_TIMEOUT_S + DEADLINE_S) == 128 + signal.SIGINT

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.reader.join(timeout=DEADLINE_S)

    def printed(self) -> str:
        return "".join(self.output)


@pytest.mark.e2e
def test_dev_stops_every_process_on_sigint(tmp_path: Path) -> None:
    """`conveyor dev` with a stand-in Procfile: Ctrl-C to the process group stops everything."""
    marker = f"conveyor-cli-test-{uuid.uuid4().hex}"
    sleeper = f"{sys.executable} -c 'import time; time.sleep(600)' {marker}"
    procfile = tmp_path / "Procfile"
    procfile.write_text(f"web: {sleeper}\nworker: {sleeper}\n")
    dev = Dev(procfile, ["web", "worker"])

    def marked() -> list[int]:
        return [
            p.pid for p in psutil.process_iter(["cmdline"]) if marker in (p.info["cmdline"] or [])
        ]

    try:
        assert wait_until(lambda: len(marked()) == 2), dev.printed()
        redis_line = next(line for line in dev.output if line.strip().startswith("Redis"))
        url = redis_line.split()[1]
        client = redis.Redis.from_url(url)
        redis_pid = int(client.info("server")["process_id"])
        client.close()
        children = marked()
        dev.interrupt()
    finally:
        dev.close()
    assert wait_until(all_gone([*children, redis_pid])), dev.printed()
    assert marked() == []
    assert not cli.tcp_reachable("127.0.0.1", redis_port(url), timeout=0.2)


@pytest.mark.e2e
def test_dev_gives_beat_a_schedule_of_its_own_and_removes_it(tmp_path: Path) -> None:
    """Not the one path in /tmp that every checkout and user shared, and left behind."""
    beat = (
        "import os, pathlib, time; path = os.environ['BEAT_SCHEDULE_FILE'];"
        " pathlib.Path(path + '.dat').write_text('x'); print('SCHEDULE', path, flush=True);"
        " time.sleep(600)"
    )
    procfile = tmp_path / "Procfile"
    procfile.write_text(f'beat: {sys.executable} -c "{beat}"\n')
    dev = Dev(procfile, ["beat"])
    try:
        assert wait_until(lambda: "SCHEDULE " in dev.printed()), dev.printed()
        path = Path(dev.printed().split("SCHEDULE ", 1)[1].split()[0])
        assert path.with_name(path.name + ".dat").is_file()
        assert path.parent != Path(tempfile.gettempdir())
        dev.interrupt()
    finally:
        dev.close()
    assert not path.parent.exists(), dev.printed()

    # A schedule the environment names is used as it is, and kept.
    named = tmp_path / "kept" / "schedule"
    named.parent.mkdir()
    dev = Dev(procfile, ["beat"], BEAT_SCHEDULE_FILE=str(named))
    try:
        assert wait_until(lambda: f"SCHEDULE {named}" in dev.printed()), dev.printed()
        dev.interrupt()
    finally:
        dev.close()
    assert named.with_name("schedule.dat").is_file()


def test_migrate_without_a_reachable_database_says_so_in_two_lines():
    """`make migrate` without DATABASE_URL met no database and ended in a traceback."""
    url = f"postgresql+psycopg://postgres:secret@127.0.0.1:5432/absent_{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        [sys.executable, "cli.py", "migrate"],
        cwd=cli.ROOT,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    assert "cannot migrate the database at postgresql+psycopg://postgres:***@" in done.stderr
    assert "does not exist" in done.stderr and "secret" not in done.stderr

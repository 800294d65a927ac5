"""Gunicorn settings for the Procfile's `web` process.

No `bind` here on purpose: gunicorn's own default is `0.0.0.0:$PORT` when PORT is set (the
Heroku convention) and `127.0.0.1:8000` otherwise (gunicorn/config.py, `Bind`). `conveyor
dev` narrows it to loopback through GUNICORN_CMD_ARGS, which takes precedence over this file.
"""

import os

# Threads, not processes, carry the concurrency: most requests wait on PostgreSQL or Redis,
# and long-polling / SSE requests hold a thread each.
# gthread, plus a note of when each request was queued for a thread (api/server_worker.py),
# so admission control can turn away requests that waited too long.
worker_class = "api.server_worker.AdmissionThreadWorker"
# WEB_CONCURRENCY is gunicorn's (and Heroku's) own knob for the worker count.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Long-polls and SSE streams hold a thread each (bounded by MAX_WAITING_REQUESTS, 24 by
# default); the rest stay free for short requests.
threads = 32

# Each worker listens on a socket of its own (SO_REUSEPORT), and the kernel spreads new
# connections over them by their addresses. On the one socket the master used to share,
# whichever worker woke first accepted: a burst of keep-alive connections (a proxy's pool,
# the bench's 32) could all land on one worker, which then served them alone at half the
# capacity while the other idled (seen in 1 run in 3 of `GET /v1/jobs/<id>`: 960 req/s
# against 1,700-1,950). Connections already queued on a worker that exits are reset.
reuse_port = True

# SIGTERM: stop accepting, let in-flight requests finish for up to 30 s.
graceful_timeout = 30
timeout = 60

# The app writes one structured log line per request itself.
accesslog = None

# Memory (issue 10: web + worker under 512 MB). The app is imported once, in the master,
# and the workers fork from it: its code and data pages stay shared until written, and
# gc.freeze() before each fork keeps the collector from writing to (and so copying) them.
# create_app opens no connection: engine, Redis clients and the notifier's listener all
# connect on first use, in the worker.
preload_app = True

# Gunicorn 25.1+ opens a control socket at $XDG_RUNTIME_DIR/gunicorn.ctl or
# ~/.gunicorn/gunicorn.ctl by default: one path shared by every gunicorn of the user, so
# concurrent instances (make run, end-to-end tests, other checkouts) would take it from
# each other. Nothing here uses `gunicornc`.
control_socket_disable = True


# --------------------------------------------------------------------------- metrics
# prometheus_client's multiprocess mode: every worker writes its samples to files in
# PROMETHEUS_MULTIPROC_DIR and GET /metrics, answered by any one worker, sums them all. The
# directory is fresh for each start (or emptied, when the environment names one) and set
# before any worker imports prometheus_client.
# With preload_app the app (and prometheus_client) is imported before on_starting runs,
# so the directory is prepared here, when gunicorn reads this file.
_metrics_dir: dict[str, object] = {}


def _prepare_metrics_dir() -> None:
    from telemetry import multiproc

    path, created = multiproc.prepare("conveyor-web-metrics-")
    _metrics_dir.update(path=path, created=created)


_prepare_metrics_dir()


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives threads their own malloc arenas, up to 8 per core, and 32 threads per
    worker fragment memory across them (the usual fix is MALLOC_ARENA_MAX=2, which only
    works when set before the process starts; mallopt does the same from here, and forked
    workers inherit it)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        m_arena_max = -8  # from glibc's malloc.h
        ctypes.CDLL(name).mallopt(m_arena_max, arenas)


_limit_malloc_arenas()


def pre_fork(server, worker):  # type: ignore[no-untyped-def]
    import gc

    gc.collect()
    gc.freeze()


def on_starting(server):  # type: ignore[no-untyped-def]
    # SIGINT (Ctrl-C) stops as gracefully as SIGTERM; gunicorn's own INT is a quick stop.
    # A second INT or a QUIT during the graceful stop still makes it quick.
    server.handle_int = server.handle_term
    _refuse_a_port_in_use(server.cfg.address)


def _refuse_a_port_in_use(addresses):  # type: ignore[no-untyped-def]
    """With `reuse_port`, a second server on the same port would not fail to bind: it would
    join the first one's group and take half its connections (a second `make run`, or an
    old server still running). A plain bind, without SO_REUSEPORT, still fails on a port
    someone listens on; the workers bind theirs right after."""
    import socket
    import sys

    for address in addresses:
        if not isinstance(address, tuple):  # a unix socket path
            continue
        host, port = address[0], address[1]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        probe = socket.socket(family, socket.SOCK_STREAM)
        try:
            # SO_REUSEADDR passes over closed connections in TIME_WAIT, not a listener.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
        except OSError as error:
            _remove_metrics_dir()  # on_exit does not run after an exit from on_starting
            sys.exit(f"cannot listen on {host}:{port}: {error.strerror} (another server?)")
        finally:
            probe.close()


def when_ready(server):  # type: ignore[no-untyped-def]
    # With reuse_port the master holds no socket, so gunicorn's own line reads
    # "Listening at:  (<pid>)", naming no address: say where the workers listen.
    shown = [
        (f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}") if isinstance(a, tuple) else a
        for a in server.cfg.address
    ]
    server.log.info("Workers listen at: %s (each on its own socket, reuse_port)", ", ".join(shown))


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    # A terminal's Ctrl-C reaches the workers too: finish in-flight requests there as well.
    import signal

    signal.signal(signal.SIGINT, worker.handle_exit)


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    from telemetry import multiproc

    multiproc.mark_process_dead(worker.pid)


def on_exit(server):  # type: ignore[no-untyped-def]
    _remove_metrics_dir()


def _remove_metrics_dir() -> None:
    from telemetry import multiproc

    if _metrics_dir.get("created"):
        multiproc.remove(_metrics_dir["path"])  # type: ignore[arg-type]

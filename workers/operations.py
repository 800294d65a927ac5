"""What the Celery processes add for operators: Flower's guard rails, a log context per
task, worker metrics for Prometheus, the soft shutdown window, and a beat that stops
cleanly.

`configure` runs when `celery -A workers ...` loads the app, in every Celery process
(worker, beat, Flower); the signal handlers it connects fire only where they apply.
"""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path
from typing import Any

import click
import structlog
from celery import Celery, Task, platforms, signals

from settings import Settings
from telemetry import multiproc
from workers.celery_app import REQUEST_ID_HEADER

log = structlog.get_logger("conveyor.workers")


def configure(celery: Celery, settings: Settings) -> None:
    # Cold shutdown (SIGQUIT, a second Ctrl-C, or SIGTERM with REMAP_SIGTERM=SIGQUIT) lets
    # running tasks finish for this long before handing them back to the broker. SIGTERM
    # alone is Celery's warm shutdown: running tasks finish, nothing new starts.
    celery.conf.worker_soft_shutdown_timeout = settings.worker_soft_shutdown_timeout_s
    if celery_command() == "flower":
        configure_flower(settings)
    signals.task_prerun.connect(_bind_task_context, weak=False)
    signals.task_postrun.connect(_clear_task_context, weak=False)
    if celery_command() == "beat":  # not a beat embedded in a worker (`-B`), off its main thread
        signals.beat_init.connect(_stop_beat_without_teardown_in_handler, weak=False)
    if settings.worker_metrics_port is not None:
        port, address = settings.worker_metrics_port, settings.worker_metrics_address

        def start_metrics(**_: Any) -> None:
            _serve_worker_metrics(port, address)

        signals.celeryd_init.connect(start_metrics, weak=False)


def celery_command() -> str | None:
    """The `celery` sub-command being run (`worker`, `beat`, `flower`), when loaded by it."""
    context = click.get_current_context(silent=True)
    return context.invoked_subcommand if context is not None else None


# --------------------------------------------------------------------------- beat


def _stop_beat_without_teardown_in_handler(sender: Any, **_: Any) -> None:
    """Beat's own SIGTERM/SIGINT handler closes the schedule and the broker connection
    inside the handler, then raises SystemExit. When the signal lands while a due task's
    message is being sent, the closed connection makes redis-py's cleanup raise "I/O
    operation on closed file" in place of the SystemExit; beat logs it as a failed send,
    ticks on against the closed schedule and dies with a traceback and status 1 (7 of 40
    SIGTERMs, with a 10 ms schedule). This handler only stops the service and raises
    SystemExit: the service's own loop ends and closes everything outside the handler
    (`celery.beat.Service.start`'s `finally`). `beat_init` is sent just after beat
    installs its handler, so this one replaces it."""
    service = sender

    def stop(signum: int, frame: Any) -> None:
        service.stop()  # only marks it stopped; the loop ends even if SystemExit is lost
        raise SystemExit()

    platforms.signals.update(SIGTERM=stop, SIGINT=stop)


# --------------------------------------------------------------------------- Flower


def configure_flower(settings: Settings) -> None:
    """Refuse to run without credentials outside development; bind loopback unless
    FLOWER_ADDRESS says otherwise; show task arguments (job ids) in the task list.

    Runs before Flower reads its FLOWER_* variables, config file and flags, which agree
    with these values or, for flags, override them.
    """
    credentials = [c for c in (settings.flower_basic_auth or "").split(",") if c]
    if not credentials and not settings.is_development:
        raise SystemExit(
            f"conveyor: Flower refuses to start without FLOWER_BASIC_AUTH=user:password "
            f"when CONVEYOR_ENV={settings.conveyor_env}"
        )
    if any(
        not user or not password for user, _, password in (c.partition(":") for c in credentials)
    ):
        raise SystemExit("conveyor: FLOWER_BASIC_AUTH must be user:password[,user:password]")
    import flower.options  # noqa: F401  (defines Flower's options on tornado's registry)
    from tornado.options import options

    options.address = settings.flower_address
    options.port = settings.flower_port
    options.basic_auth = credentials
    options.tasks_columns = "name,uuid,state,args,received,started,runtime,worker"


# --------------------------------------------------------------------------- logs


def _bind_task_context(task_id: str, task: Task, **_: Any) -> None:
    """Every log line of the task carries its id, its name and the request that sent it."""
    structlog.contextvars.clear_contextvars()
    context = {"task_id": task_id, "task": task.name}
    request_id = getattr(task.request, REQUEST_ID_HEADER, None)
    if request_id:
        context["request_id"] = str(request_id)
    structlog.contextvars.bind_contextvars(**context)


def _clear_task_context(**_: Any) -> None:
    structlog.contextvars.clear_contextvars()


# --------------------------------------------------------------------------- metrics


def _serve_worker_metrics(port: int, address: str) -> None:
    """In the worker's main process, before its pool forks: multiprocess mode for the
    pool, this process's counters installed, and /metrics served on address:port."""
    if "telemetry.prometheus" in sys.modules:
        log.error("worker.metrics_disabled", reason="metrics were created before the pool")
        return
    # Always a directory of its own: PROMETHEUS_MULTIPROC_DIR, if set, is the web's.
    path, _ = multiproc.prepare("conveyor-worker-metrics-", reuse=False)
    multiproc.switch_on()
    atexit.register(_remove_in, os.getpid(), path)
    from telemetry import prometheus

    prometheus.install()
    signals.worker_process_shutdown.connect(_pool_process_exited, weak=False)
    try:
        prometheus.serve(port, address)
    except OSError as error:
        # Jobs matter more than their metrics: run on, and say so.
        log.error("worker.metrics_unavailable", address=address, port=port, error=str(error))
        return
    log.info("worker.metrics", url=f"http://{address}:{port}/metrics")


def _remove_in(pid: int, path: Path) -> None:
    if os.getpid() == pid:  # not in a pool process that inherited the handler
        multiproc.remove(path)


def _pool_process_exited(**_: Any) -> None:
    multiproc.mark_process_dead(os.getpid())

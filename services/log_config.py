"""Structured JSON logs for every process, with secrets scrubbed before they are written."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
import sys
import threading
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

# Keys whose values are never written, whatever the caller passed.
SECRET_KEYS = re.compile(
    r"pass(word)?|secret|token|authorization|api[_-]?key|cookie|credential", re.IGNORECASE
)
REDACTED = "[redacted]"


@functools.lru_cache(maxsize=4096)
def _is_secret_key(key: str) -> bool:
    # Remembered: a log line's keys are nearly always the same few, and every request
    # writes one line of about ten.
    return SECRET_KEYS.search(key) is not None


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if _is_secret_key(str(k)) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def scrub_secrets(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if _is_secret_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stdout; the standard library's loggers go through the same pipeline."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        scrub_secrets,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = JsonLineFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            # Written as the short ways write theirs (orjson's form: no spaces, UTF-8), so
            # that one grep for `"request_id":"<id>"` finds every line of a request.
            structlog.processors.JSONRenderer(separators=(",", ":"), ensure_ascii=False),
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class JsonLineFormatter(structlog.stdlib.ProcessorFormatter):
    """The pipeline's formatter, with a short way for a plain record of a standard library
    logger (no exception, no stack): the line the pipeline would write, made directly.
    Celery logs two such lines for every task it runs ("received", "succeeded"): under
    echo jobs, 7 % of the worker's py-spy samples were in them, half of that formatting,
    which took ~16 us a line through the pipeline (a copy of the record, five processors,
    `json`) and takes ~6 us here."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.stack_info or hasattr(record, "_logger"):
            return super().format(record)  # an exception to format, or structlog's own
        return _json_line(record.getMessage(), {}, record.levelname.lower(), record.name)


def _json_line(event: str, fields: dict[str, Any], level: str, logger: str) -> str:
    """What the pipeline writes: the event, the bound context, the fields, level, logger
    and timestamp, secrets scrubbed, as JSON."""
    line: dict[str, Any] = {"event": event}
    line.update(structlog.contextvars.get_contextvars())
    line.update(fields)
    line.update(level=level, logger=logger, timestamp=_now())
    return orjson.dumps(scrub_secrets(None, level, line), default=str).decode()


class LineLog:
    """The access log's writer: the line the structlog pipeline would write (the bound
    context, the fields, level, logger and timestamp, secrets scrubbed, as JSON), written
    to stdout directly. Every request writes one, and the pipeline (processors, a stdlib
    LogRecord, the handler's lock, the formatter, `json`) was a tenth of a job read's CPU.
    The standard library's level for `name` still decides whether a line is written."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._level_of = logging.getLogger(name)
        self._lock = threading.Lock()

    def info(self, event: str, **fields: Any) -> None:
        if not self._level_of.isEnabledFor(logging.INFO):
            return
        data = _json_line(event, fields, "info", self._name) + "\n"
        with self._lock:  # stdout is looked up each time: tests swap it
            sys.stdout.write(data)
            sys.stdout.flush()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")

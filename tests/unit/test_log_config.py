import json
import logging

import structlog

from services.log_config import REDACTED, configure_logging


def test_secrets_never_reach_the_log(capsys):
    configure_logging("INFO")
    structlog.get_logger("t").info(
        "login",
        password="hunter2-secret",
        headers={"Authorization": "Bearer abc.def", "Accept": "json"},
        refresh_token="tok-123",
        api_key="key-xyz",
        email="a@example.com",
    )
    line = capsys.readouterr().out.strip().splitlines()[-1]
    record = json.loads(line)
    for secret in ("hunter2-secret", "abc.def", "tok-123", "key-xyz"):
        assert secret not in line
    assert record["password"] == REDACTED
    assert record["headers"]["Authorization"] == REDACTED
    assert record["headers"]["Accept"] == "json"
    assert record["email"] == "a@example.com"


def test_standard_library_logs_are_json(capsys):
    configure_logging("INFO")
    logging.getLogger("plain").warning("hello %s", "world")
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["event"] == "hello world" and record["level"] == "warning"


def test_the_access_line_is_what_the_pipeline_would_write(capsys):
    import json

    import structlog

    from services.log_config import LineLog, configure_logging

    configure_logging("INFO")
    structlog.contextvars.bind_contextvars(request_id="req-7")
    try:
        fields = {"method": "GET", "path": "/v1/x", "status": 200, "token": "s3cret"}
        structlog.get_logger("conveyor.test").info("request", **fields)
        LineLog("conveyor.test").info("request", **fields)
        configure_logging("WARNING")
        LineLog("conveyor.test").info("request", **fields)  # below the level: nothing
    finally:
        structlog.contextvars.clear_contextvars()
        configure_logging("INFO")
    lines = capsys.readouterr().out.splitlines()
    # Written alike, too: docs/operations.md greps the logs for `"request_id":"<id>"`.
    assert all('"request_id":"req-7"' in line for line in lines), lines
    piped, direct = (json.loads(line) for line in lines)
    assert direct["token"] == "[redacted]"
    assert direct.pop("timestamp").endswith("Z") and piped.pop("timestamp").endswith("Z")
    assert direct == piped


def test_a_standard_library_line_is_what_the_pipeline_would_write():
    """Plain records (Celery's per-task lines) take a short way: the same line."""
    import structlog

    configure_logging("INFO")
    formatter = logging.getLogger().handlers[0].formatter
    assert isinstance(formatter, structlog.stdlib.ProcessorFormatter)
    record = logging.LogRecord(
        "celery.app.trace", logging.INFO, __file__, 1, "Task %s succeeded in %ss: %r",
        ("conveyor.jobs.run[1]", 0.002, "succeeded"), None,
    )  # fmt: skip
    structlog.contextvars.bind_contextvars(request_id="req-9", api_key="cvk_secret")
    try:
        direct = json.loads(formatter.format(record))
        piped = json.loads(structlog.stdlib.ProcessorFormatter.format(formatter, record))
    finally:
        structlog.contextvars.clear_contextvars()
    assert direct["event"] == "Task conveyor.jobs.run[1] succeeded in 0.002s: 'succeeded'"
    assert direct["api_key"] == REDACTED
    assert direct.pop("timestamp").endswith("Z") and piped.pop("timestamp").endswith("Z")
    assert direct == piped


def test_a_standard_library_exception_keeps_its_traceback(capsys):
    configure_logging("INFO")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("plain").exception("it failed")
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["event"] == "it failed" and record["level"] == "error"
    assert "ValueError: boom" in record["exception"]

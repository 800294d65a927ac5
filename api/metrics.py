"""`GET /metrics` and the per-request samples behind it.

Requests are labelled by URL rule (`/v1/jobs/<uuid:job_id>`), never by raw path, so a
scrape has one series per route however many jobs exist. Queue depths are read from Redis
when Prometheus scrapes, one pipelined LLEN per queue, never stored.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import redis
import structlog
from apiflask import APIBlueprint
from flask import Flask, Response, current_app, g, request
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from telemetry import prometheus
from workers.celery_app import QUEUES

bp = APIBlueprint("metrics", __name__, tag="Operations")
log = structlog.get_logger("conveyor.api")
UNMATCHED = "unmatched"
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


def install(app: Flask) -> None:
    """Count every answer of `app`; registers `/metrics`."""
    prometheus.install()
    app.after_request(_observe)
    app.register_blueprint(bp)


def _observe(response: Response) -> Response:
    req = request._get_current_object()  # type: ignore[attr-defined]  (one proxy lookup)
    started = g.get("started")
    seconds = time.perf_counter() - started if started is not None else 0.0
    rule = req.url_rule
    route = rule.rule if rule is not None else UNMATCHED
    prometheus.observe_request(method_label(req.method), route, response.status_code, seconds)
    return response


def method_label(method: str) -> str:
    # Arbitrary methods would each make a series; they all end as 405 anyway.
    return method if method in _METHODS else "other"


class QueueDepths:
    """Messages waiting in each Celery queue, read at scrape time."""

    def __init__(self, client: redis.Redis, queues: Sequence[str]) -> None:
        self._client = client
        self._queues = tuple(queues)

    def collect(self) -> Iterator[Metric]:
        try:
            pipe = self._client.pipeline(transaction=False)
            for queue in self._queues:
                pipe.llen(queue)
            lengths = pipe.execute()
        except redis.RedisError as error:
            # The scrape still answers; the missing series is the signal (and readyz says 503).
            log.warning("metrics.queue_depth_failed", error=repr(error))
            return
        gauge = GaugeMetricFamily(
            f"{prometheus.PREFIX}_queue_depth",
            "Messages waiting in a Celery queue (Redis LLEN at scrape time).",
            labels=["queue"],
        )
        for queue, length in zip(self._queues, lengths, strict=True):
            gauge.add_metric([queue], int(length))
        yield gauge


@bp.get("/metrics")
@bp.doc(
    summary="Prometheus metrics of the web processes and the queues",
    security=[],
    responses={
        200: {
            "description": f"Prometheus' text format (`{prometheus.CONTENT_TYPE_LATEST}`)",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
def metrics() -> Response:
    runtime = current_app.extensions["conveyor"]
    body = prometheus.exposition(QueueDepths(runtime.redis_probe, QUEUES))
    return Response(body, mimetype=None, content_type=prometheus.CONTENT_TYPE_LATEST)
